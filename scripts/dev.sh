#!/usr/bin/env bash
# `make dev`: runs the cache locally under workerd (wrangler dev) on 127.0.0.1:8787,
# R2 simulated on disk in .dev/r2 (kept between runs, ignored by git).
# A local signing key is made once in .dev/; only its public half reaches the worker.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=127.0.0.1
PORT=${PORT:-8787}
# READ_ACCESS=token make dev: a private cache (README "A private cache").
READ_ACCESS=${READ_ACCESS:-public}
URL="http://$HOST:$PORT"
KEY=.dev/signing-key.sec
TOKEN_KEY=.dev/token-key.sec

mkdir -p .dev
cargo build --quiet --bin nixflare
[ -f "$KEY" ] || target/debug/nixflare keygen nixflare-local-1 --out "$KEY" >/dev/null 2>&1
[ -f "$TOKEN_KEY" ] || target/debug/nixflare keygen nixflare-local-tokens-1 --out "$TOKEN_KEY" >/dev/null 2>&1
PUBLIC_KEY=$(cat "$KEY.pub")
TOKEN=$(target/debug/nixflare token mint --key "$TOKEN_KEY" --subject local-dev \
  --permissions read,write --expires-in 30d 2>/dev/null)
# For the operator's commands (nixflare gc, nixflare pin): never in the netrc.
OPERATOR_TOKEN=$(target/debug/nixflare token mint --key "$TOKEN_KEY" --subject local-operator \
  --permissions read,write,delete,pin --expires-in 30d 2>/dev/null)
printf 'machine %s login nixflare password %s\n' "$HOST" "$TOKEN" > .dev/netrc
(umask 077; printf '%s\n' "$TOKEN" > .dev/token)
chmod 600 .dev/netrc

cat <<TXT

  nixflare is starting on $URL

  Substituter URL:  $URL
  Public key:       $PUBLIC_KEY
  Signing key:      $PWD/$KEY   (secret: stays on this machine)
  Write token:      $TOKEN
                    (30 days; also in $PWD/.dev/netrc)

  Use it from Nix (nix.conf, or --option on the command line):
    extra-substituters = $URL
    extra-trusted-public-keys = $PUBLIC_KEY

  Push a closure with the nixflare client (parallel, zstd, NARs of any size):
    $PWD/target/debug/nixflare push --cache $URL \\
      --key $PWD/$KEY --netrc-file $PWD/.dev/netrc /nix/store/...

  Or save this cache once, then push with no flags, or push whatever Nix builds:
    $PWD/target/debug/nixflare login local $URL --signing-key $PWD/$KEY \\
      --token-file $PWD/.dev/token
    $PWD/target/debug/nixflare push /nix/store/...
    $PWD/target/debug/nixflare watch-store

  ...or with stock Nix:
    nix copy --option netrc-file $PWD/.dev/netrc \\
      --to '$URL?secret-key=$PWD/$KEY' /nix/store/...

  Retention (README "Retention"; this token may also delete and pin):
    NIXFLARE_TOKEN=$OPERATOR_TOKEN \\
      $PWD/target/debug/nixflare gc --dry-run --cache $URL

  Stored objects live in $PWD/.dev/r2. Stop with Ctrl-C.

TXT
if [ "$READ_ACCESS" = token ]; then
  cat <<TXT
  This cache is PRIVATE (READ_ACCESS=token): every read needs a token with read.
  Nix reads it with the token above as netrc password:
    --option netrc-file $PWD/.dev/netrc
  Lines for another machine (mint it a read-only token):
    $PWD/target/debug/nixflare use $URL --token-file $PWD/.dev/token

TXT
fi

exec npx wrangler dev --ip "$HOST" --port "$PORT" --persist-to .dev/r2 \
  --var "PUBLIC_KEYS:$PUBLIC_KEY" --var "TOKEN_PUBLIC_KEYS:$(cat "$TOKEN_KEY.pub")" \
  --var "READ_ACCESS:$READ_ACCESS" \
  --test-scheduled --show-interactive-dev-session=false
