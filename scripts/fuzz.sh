#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target for FUZZ_SECONDS (default 60) each, seeded with the
# files stock Nix wrote (src/core/nix/testdata). Prints each target's executions; a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-fuzz.sh
export PATH="$HOME/.cargo/bin:$PATH"

SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=(narinfo content_address realisation side_file json token range route multipart oidc)
DATA=src/core/nix/testdata

seed() { # target, files…
  local dir=fuzz/corpus/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do cp "$f" "$dir/seed-$(printf '%s' "$f" | tr '/:!' '___')"; done
}
seed narinfo $(find "$DATA" -name '*.narinfo')
seed realisation $(find "$DATA" -name '*.doi')
seed side_file $(find "$DATA" -name '*.ls') $(find "$DATA" -path '*/debuginfo/*' -type f)
seed json $(find "$DATA" -name '*.ls' -o -name '*.doi')
seed content_address <(grep -rh '^CA: ' "$DATA" | head -1 | cut -c5-)
# A GitHub-shaped ID token (fake signature) and an OIDC rule list.
seed oidc <(printf '%s' 'eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIiwiYXVkIjoiaHR0cHM6Ly9jYWNoZS5leGFtcGxlLm9yZyIsInN1YiI6InJlcG86b3duZXIvcmVwbyIsImV4cCI6MjAwMCwicmVwb3NpdG9yeSI6Im93bmVyL3JlcG8iLCJyZWYiOiJyZWZzL2hlYWRzL21haW4ifQ.'"$(head -c 256 /dev/zero | base64 -w0 | tr '+/' '-_' | tr -d '=')") \
  <(printf '%s' '[{"issuer":"https://token.actions.githubusercontent.com","audience":"https://cache.example.org","claims":{"repository":"owner/repo"},"permissions":"read,write"}]')

failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  printf '==> fuzz %-16s ' "$t"
  if out=$(cd fuzz && cargo +nightly fuzz run "$t" -- -max_total_time="$SECONDS_EACH" 2>&1); then
    grep -oE 'Done [0-9]+ runs in [0-9]+ second' <<<"$out" | tail -1
  else
    failed=1
    echo "CRASH"
    grep -E 'panicked|SUMMARY|Test unit written' <<<"$out" | head -5
  fi
done
exit "$failed"
