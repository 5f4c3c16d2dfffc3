#!/usr/bin/env bash
# The action's first step: install nixflare (unless it is on PATH), save the cache
# (`nixflare login`, token from the environment, signing key written 0600 under
# RUNNER_TEMP), and start pushing in the background:
#   mode watch-store (default): `nixflare watch-store`, no Nix configuration touched;
#   mode hook: Nix's post-build-hook queues each build's outputs, `nixflare watch` drains.
# finish.sh stops it at the end of the job and drains what is left.
set -euo pipefail

: "${RUNNER_TEMP:?not on a GitHub runner: RUNNER_TEMP is unset}"
: "${GITHUB_ENV:?GITHUB_ENV is unset}" "${GITHUB_STATE:?GITHUB_STATE is unset}"
url=${NIXFLARE_INPUT_CACHE_URL:?the cache-url input is required}
mode=${NIXFLARE_INPUT_MODE:-watch-store}
[[ -n "${NIXFLARE_INPUT_TOKEN:-}" ]] || { echo "::error::the token input is empty (a write token, from a secret)"; exit 1; }
[[ -n "${NIXFLARE_INPUT_SIGNING_KEY:-}" ]] || { echo "::error::the signing-key input is empty (the narinfo signing key, from a secret)"; exit 1; }
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
printf '%s' "$NIXFLARE_INPUT_SIGNING_KEY" >"$key"
export NIXFLARE_CONFIG="$state/config.toml" NIXFLARE_QUEUE="$state/queue"
# Later steps of the job may run nixflare with the same settings (`nixflare push`, `pin`).
{ echo "NIXFLARE_CONFIG=$NIXFLARE_CONFIG"; echo "NIXFLARE_QUEUE=$NIXFLARE_QUEUE"; } >>"$GITHUB_ENV"
printf '%s' "$NIXFLARE_INPUT_TOKEN" | nixflare login ci "$url" --signing-key "$key" --default

upstream=()
for u in ${NIXFLARE_INPUT_UPSTREAM:-}; do upstream+=(--upstream "$u"); done

if [[ $mode == hook ]]; then
  conf=${NIXFLARE_ACTION_NIX_CONF:-/etc/nix/nix.conf}
  hook="$state/post-build-hook"
  # The daemon (root) runs the hook; it may write into our queue, we read and delete.
  printf '#!/bin/sh\nexec %q hook --queue %q\n' "$nixflare_bin" "$NIXFLARE_QUEUE" >"$hook"
  chmod 755 "$hook"
  sudo_if_needed() { if [[ -w "$conf" ]]; then "$@"; else sudo "$@"; fi; }
  echo "post-build-hook = $hook" | sudo_if_needed tee -a "$conf" >/dev/null
  if [[ $conf == /etc/nix/nix.conf ]] && command -v systemctl >/dev/null \
      && systemctl list-unit-files nix-daemon.service >/dev/null 2>&1; then
    sudo systemctl restart nix-daemon
  fi
  command=(watch)
else
  command=(watch-store)
fi

# Its own session: the step's end does not take it down; the runner's orphan
# cleanup at the end of the job does, after finish.sh.
setsid nohup nixflare "${command[@]}" --queue "$NIXFLARE_QUEUE" "${upstream[@]}" \
  >"$state/watch.log" 2>&1 </dev/null &
pid=$!
echo "pid=$pid" >>"$GITHUB_STATE"
# Ready when it says so (or fail now, with its reason, rather than at the end).
for _ in $(seq 100); do
  grep -q "^watching" "$state/watch.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$state/watch.log"; echo "::error::nixflare $mode stopped"; exit 1; }
  sleep 0.1
done
echo "nixflare: pushing what this job builds to $url (mode $mode, log $state/watch.log)"
