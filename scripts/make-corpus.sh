#!/usr/bin/env bash
# Regenerates src/core/nix/testdata/corpus/: binary-cache files written by stock Nix
# (`nix copy --to file://…`, `nix store copy-log`), which the core's tests parse and
# render back byte for byte. NAR bodies are left out (the tests need only their names).
# Deterministic but for the gzip case (its header carries a time stamp): the same Nix
# writes the same files. Needs Nix (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=src/core/nix/testdata/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The tests' own Nix configuration, nothing of the host's (tests/nix/nix.conf).
for var in $(env | grep -o '^NIX_[A-Z_]*'); do unset "$var"; done
export NIX_CONF_DIR=$PWD/tests/nix NIX_USER_CONF_FILES=$PWD/tests/nix/nix.conf
export HOME=$work/home XDG_CACHE_HOME=$work/home/.cache
nix() { command nix --option extra-experimental-features ca-derivations "$@"; }

# The unit tests' key (core::nix::keys tests): made by `nix key generate-secret`.
printf '%s' 'test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==' > "$work/sk"
SIGN="secret-key=$work/sk"

EXPR=$work/corpus.nix
cat > "$EXPR" <<'NIX'
{ mk }:
let
  leaves = builtins.genList (i: mk "corpus-leaf-${toString i}" "echo leaf ${toString i} > $out") 24;
  text = builtins.toFile "corpus-text" "written by builtins.toFile\n";
  floating = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  };
  # Built under secret-key-files, so the local store signs their realisations.
  signed-ca = floating "corpus-signed-ca" "echo signed > $out";
in {
  inherit signed-ca;
  # A CA derivation that depends on another: its realisation lists that one's.
  signed-ca-dep = floating "corpus-signed-ca-dep" "echo ${signed-ca} > $out";
  small = mk "corpus-small" "echo small > $out";
  # 24 references plus one to itself, a directory, a symlink and an executable.
  many-refs = mk "corpus-many-refs" (''
    mkdir -p $out/bin
    ln -s ${builtins.elemAt leaves 0} $out/first
    printf '#!/bin/sh\necho $0\n' > $out/bin/self; chmod +x $out/bin/self
    echo $out > $out/self
  '' + builtins.concatStringsSep "" (map (l: "echo ${l} >> $out/refs\n") leaves));
  # Refers to text-hashed paths (builtins.toFile: CA text:sha256), one of which refers
  # to the other (references go into a text path's type).
  uses-text = mk "corpus-uses-text" "echo ${builtins.toFile "corpus-text-ref" "see ${text}\n"} > $out";
  # A file where Nix's index-debug-info looks for it.
  debuginfo = mk "corpus-debuginfo" ''
    echo "building the debug info fixture"; echo "a line on stderr" >&2
    mkdir -p $out/lib/debug/.build-id/ab
    echo not-really-elf > $out/lib/debug/.build-id/ab/cdef0123456789abcdef0123456789abcdef01.debug
  '';
  fixed-output = derivation {
    name = "corpus-fixed-output";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo fixed > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "fixed\n";
  };
  floating-ca = floating "corpus-floating-ca" "echo floating > $out";
  # References go into a recursive CA path's type; a self-reference as ":self".
  floating-ca-refs = floating "corpus-floating-ca-refs" "echo ${mk "corpus-ia-dep" "echo dep > $out"} $out > $out";
}
NIX

MK=(--arg mk "import $PWD/tests/nix/mk.nix")
# `build ATTR [NIX OPTIONS…]`
build() { nix-build --no-out-link "$EXPR" "${MK[@]}" -A "$1" --option extra-experimental-features ca-derivations "${@:2}"; }
# Copies into the cache at $1 (query string $2) the rest of the arguments.
copy() { local dir=$1 query=$2; shift 2; nix copy --to "file://$work/out/$dir?$query" "$@"; }

# Every compression Nix writes, the same path, signed.
small=$(build small)
for compression in none xz bzip2 zstd br lz4 lzip gzip; do
  copy "compression-$compression" "$SIGN&compression=$compression" "$small"
done

# Input-addressed paths with derivers and references, with NAR listings, signed.
copy input-addressed "$SIGN&compression=xz&write-nar-listing=true" "$(build many-refs)" "$(build uses-text)"

# Content-addressed paths as stock Nix pushes them: unsigned.
echo 'added with nix-store --add' > "$work/recursive.txt"
echo 'added with nix-store --add-fixed' > "$work/flat.txt"
copy content-addressed "compression=zstd" \
  "$(nix-store --add "$work/recursive.txt")" \
  "$(nix-store --add-fixed sha256 "$work/flat.txt")" \
  "$(build fixed-output)"
# Floating CA derivations: their realisations too (Nix <= 2.34 layout).
for attr in floating-ca floating-ca-refs; do
  build "$attr" >/dev/null
  copy content-addressed "compression=zstd" -f "$EXPR" "${MK[@]}" "$attr"
done

# Realisations signed by Nix (the local store signs them at build time; nix copy
# carries the signatures), one with a dependent realisation.
# Outputs built before (their realisations unsigned) go first, with everything that
# refers to them (resolved derivations): their realisations are deleted with them.
if built=$(build signed-ca 2>/dev/null); then
  nix-store --delete --ignore-liveness $(nix-store --query --referrers-closure "$built") >/dev/null 2>&1 || true
fi
for attr in signed-ca signed-ca-dep; do
  build "$attr" --option secret-key-files "$work/sk" >/dev/null
done
copy realisations-signed "compression=zstd&$SIGN" -f "$EXPR" "${MK[@]}" signed-ca signed-ca-dep

# Debug info index and a build log.
debuginfo=$(build debuginfo)
copy debuginfo "$SIGN&compression=xz&index-debug-info=true" "$debuginfo"
nix store copy-log --to "file://$work/out/log" "$(nix-store --query --deriver "$debuginfo")"

find "$work/out" \( -name nix-cache-info -o -path '*/nar/*' \) -type f -delete
find "$work/out" -type d -empty -delete
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
cp -r "$work/out" "$OUT"
find "$OUT" -type f | sort | sed "s#^$OUT/##"
