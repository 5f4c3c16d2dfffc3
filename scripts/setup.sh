#!/usr/bin/env bash
# Installs everything nixflare needs to build, run and test, offline-safe (package
# registries only) and idempotent: each step checks what is there first, so a second
# run takes seconds. Versions are pinned here and in package.json / Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
# Must equal the wasm-bindgen crate version pinned in Cargo.toml / Cargo.lock.
WASM_BINDGEN_VERSION=0.2.130
PYTEST_VERSION=8.3.5
# ed25519 for tests that sign what Nix 2.8 cannot write (build-trace-v2 realisations).
CRYPTOGRAPHY_VERSION=44.0.2
# The landing page's browser tests drive Debian's chromium through Playwright (no
# browser download: they launch /usr/bin/chromium); the metrics test parses with the
# Prometheus project's own parser.
PLAYWRIGHT_VERSION=1.65.3
PROMETHEUS_CLIENT_VERSION=0.26.0
# wrk: the load generator of `make bench`.
APT_PACKAGES=(nix-bin chromium wrk)

step() { printf '==> %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done
if ((${#missing_apt[@]})); then
  step "apt-get install ${missing_apt[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

cargo_tool() { # binary, crate, version: installs unless that exact version is there
  local bin=$1 crate=$2 version=$3
  if ! "$bin" --version 2>/dev/null | grep -qw "$version"; then
    step "cargo install $crate $version (a few minutes, once)"
    # Not --locked: wasm-bindgen-cli's own lock file does not build (docs/platform.md §1).
    cargo install --quiet "$crate" --version "$version" --force
  fi
}
cargo_tool worker-build worker-build "$WORKER_BUILD_VERSION"
cargo_tool wasm-bindgen wasm-bindgen-cli "$WASM_BINDGEN_VERSION"

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "npm ci (wrangler, esbuild, binaryen)"
  npm ci --no-audit --no-fund --loglevel=error
fi

if ! .venv/bin/pytest --version 2>/dev/null | grep -qw "$PYTEST_VERSION" \
  || ! .venv/bin/python -c "import cryptography, sys; sys.exit(cryptography.__version__ != '$CRYPTOGRAPHY_VERSION')" 2>/dev/null \
  || ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION' or m.version('prometheus-client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null; then
  step "python venv with pytest $PYTEST_VERSION, cryptography $CRYPTOGRAPHY_VERSION, playwright $PLAYWRIGHT_VERSION, prometheus-client $PROMETHEUS_CLIENT_VERSION"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "pytest==$PYTEST_VERSION" \
    "cryptography==$CRYPTOGRAPHY_VERSION" "playwright==$PLAYWRIGHT_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
