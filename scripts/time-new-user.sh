#!/usr/bin/env bash
# How long a new user takes from a clean clone to a pushed closure, with the recording
# wrangler stand-in of the tests (tests/e2e/wrangler_standin.py) in place of a
# Cloudflare account: clone, `make init` (setup, building the CLI and the worker, keys,
# bucket, deploy to a local wrangler dev, check, tokens, login), build a path, `nixflare
# push` it with the saved login. Prints the seconds of each part. Nothing outside
# $WORK (default /tmp/nixflare-new-user) is touched but what `make setup` installs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-/tmp/nixflare-new-user}
rm -rf "$work" && mkdir -p "$work/bin"
stop() { for pid in "$work"/state/*.pid; do [ -e "$pid" ] && kill -- -"$(cat "$pid")" 2>/dev/null || true; done; }
trap stop EXIT

start=$(date +%s)
git clone -q "$repo" "$work/checkout"
cd "$work/checkout"
printf '#!/bin/sh\nexec python3 %s/tests/e2e/wrangler_standin.py "$@"\n' "$work/checkout" > "$work/bin/wrangler"
chmod +x "$work/bin/wrangler"
export PATH="$work/bin:$PATH" XDG_CONFIG_HOME="$work/config" XDG_CACHE_HOME="$work/cache"
export STANDIN_STATE="$work/state" REAL_WRANGLER="$work/checkout/node_modules/.bin/wrangler"
export CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_SEND_METRICS=false
make init ARGS="--worker demo --cache-name demo.example.org --upstream none --yes" \
  >"$work/init.out" 2>"$work/init.err" || { tail -20 "$work/init.err"; exit 1; }
initialised=$(date +%s)
# The tests' Nix settings: no host configuration, no sandbox needed.
export NIX_CONF_DIR="$work/checkout/tests/nix"
path=$(nix-build --no-out-link -E "derivation { name = \"new-user-$start\"; system = builtins.currentSystem; \
  builder = \"/bin/sh\"; args = [ \"-c\" \"echo hello > \$out\" ]; }")
./target/release/nixflare push "$path"
pushed=$(date +%s)
echo "clean clone to a deployed cache (make init): $((initialised - start)) s;" \
  "build and push: $((pushed - initialised)) s; total: $((pushed - start)) s"
