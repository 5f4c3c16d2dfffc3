#!/usr/bin/env bash
# `make dev`: runs the cache locally under workerd (wrangler dev) on 127.0.0.1:8787,
# R2 simulated on disk in .dev/r2 (kept between runs, ignored by git).
# A local signing key is made once in .dev/; only its public half reaches the worker.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=127.0.0.1
PORT=${PORT:-8787}
URL="http://$HOST:$PORT"
KEY=.dev/signing-key.sec

mkdir -p .dev
cargo build --quiet --bin nixflare
if [ ! -f "$KEY" ]; then
  target/debug/nixflare keygen nixflare-local-1 --out "$KEY" >/dev/null
fi
PUBLIC_KEY=$(cat "$KEY.pub")

cat <<TXT

  nixflare is starting on $URL

  Substituter URL:  $URL
  Public key:       $PUBLIC_KEY
  Signing key:      $PWD/$KEY   (secret: stays on this machine)

  Use it from Nix (nix.conf, or --option on the command line):
    extra-substituters = $URL
    extra-trusted-public-keys = $PUBLIC_KEY

  Stored objects live in $PWD/.dev/r2. Stop with Ctrl-C.

TXT

exec npx wrangler dev --ip "$HOST" --port "$PORT" --persist-to .dev/r2 \
  --var "PUBLIC_KEYS:$PUBLIC_KEY" --show-interactive-dev-session=false
