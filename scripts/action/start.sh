#!/usr/bin/env bash
# The action's first step: install nixflare (unless it is on PATH), save the cache
# (`nixflare login`; the token from the environment, or none to push with the job's
# own ID token; the signing key written 0600 under RUNNER_TEMP), and start pushing in
# the background:
#   mode watch-store (default): `nixflare watch-store`, no Nix configuration touched;
#   mode hook: Nix's post-build-hook queues each build's outputs, `nixflare watch` drains.
# finish.sh stops it at the end of the job and drains what is left.
set -euo pipefail

: "${RUNNER_TEMP:?not on a GitHub runner: RUNNER_TEMP is unset}"
: "${GITHUB_ENV:?GITHUB_ENV is unset}" "${GITHUB_STATE:?GITHUB_STATE is unset}"
source "$(dirname "$0")/lib.sh"
url=${NIXFLARE_INPUT_CACHE_URL:?the cache-url input is required}
mode=${NIXFLARE_INPUT_MODE:-watch-store}
# The secrets move into unexported variables: no child process (cargo's build
# scripts, the background watcher) inherits them.
token=${NIXFLARE_INPUT_TOKEN:-}
signing_key=${NIXFLARE_INPUT_SIGNING_KEY:-}
unset NIXFLARE_INPUT_TOKEN NIXFLARE_INPUT_SIGNING_KEY
# No token: the job's own OIDC ID token (asked for with the cache's URL as audience and
# renewed by nixflare), which GitHub offers only to a job with `permissions: id-token: write`.
if [[ -z "$token" && ( -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" || -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ) ]]; then
  echo "::error::no credential: give the job 'permissions: id-token: write' (and the cache an OIDC rule for this repository), or pass a write token in the token input"
  exit 1
fi
[[ -n "$signing_key" ]] || { echo "::error::the signing-key input is empty (the narinfo signing key, from a secret)"; exit 1; }
case "$mode" in watch-store|hook) ;; *) echo "::error::mode must be watch-store or hook, not '$mode'"; exit 1 ;; esac

state="$RUNNER_TEMP/nixflare"
mkdir -p "$state"
chmod 700 "$state"
umask 077

if ! command -v nixflare >/dev/null; then
  echo "::group::installing nixflare from ${NIXFLARE_ACTION_ROOT}"
  cargo install --locked --path "$NIXFLARE_ACTION_ROOT" --bin nixflare --root "$state/install"
  echo "::endgroup::"
  export PATH="$state/install/bin:$PATH"
  echo "$state/install/bin" >>"${GITHUB_PATH:-/dev/null}"
fi
nixflare_bin=$(command -v nixflare)

key="$state/signing-key.sec"
printf '%s' "$signing_key" >"$key"
export NIXFLARE_CONFIG="$state/config.toml" NIXFLARE_QUEUE="$state/queue"
# Later steps of the job may run nixflare with the same settings (`nixflare push`, `pin`).
{ echo "NIXFLARE_CONFIG=$NIXFLARE_CONFIG"; echo "NIXFLARE_QUEUE=$NIXFLARE_QUEUE"; } >>"$GITHUB_ENV"
if [[ -n "$token" ]]; then
  printf '%s' "$token" | nixflare login ci "$url" --signing-key "$key" --default
else
  nixflare login ci "$url" --signing-key "$key" --default --no-token
fi
unset token signing_key
upstream_args

if [[ $mode == hook ]]; then
  conf=${NIXFLARE_ACTION_NIX_CONF:-/etc/nix/nix.conf}
  if grep -Eq '^[[:space:]]*(extra-)?post-build-hook[[:space:]]*=' "$conf" 2>/dev/null; then
    echo "::error::$conf already sets a post-build-hook: use mode watch-store, or remove it"
    exit 1
  fi
  hook="$state/post-build-hook"
  # The daemon (root) runs the hook; it adds entries to our queue, which `watch`
  # (started below) creates; we read and delete them.
  printf '#!/bin/sh\nexec %q hook --queue %q\n' "$nixflare_bin" "$NIXFLARE_QUEUE" >"$hook"
  chmod 755 "$hook"
  # finish.sh puts the original back: a hook left behind would outlive RUNNER_TEMP
  # and stop every later build on a reused (self-hosted) runner.
  cp "$conf" "$state/nix.conf.orig"
  echo "nix_conf=$conf" >>"$GITHUB_STATE"
  printf '\npost-build-hook = %s\n' "$hook" | as_conf_writer tee -a "$conf" >/dev/null
  restart_nix_daemon
  command=(watch)
else
  command=(watch-store)
fi

# Its own session: the step's end does not take it down; finish.sh (or the runner's
# orphan cleanup at the end of the job) does.
detach=()
command -v setsid >/dev/null && detach=(setsid)   # not on macOS; nohup still holds
${detach[@]+"${detach[@]}"} nohup nixflare "${command[@]}" --queue "$NIXFLARE_QUEUE" \
  ${upstream[@]+"${upstream[@]}"} >"$state/watch.log" 2>&1 </dev/null &
pid=$!
echo "pid=$pid" >>"$GITHUB_STATE"
# Ready when it says so (or fail now, with its reason, rather than at the end).
for _ in $(seq 100); do
  grep -q "^watching" "$state/watch.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$state/watch.log"; echo "::error::nixflare $mode stopped"; exit 1; }
  sleep 0.1
done
echo "nixflare: pushing what this job builds to $url (mode $mode, log $state/watch.log)"
