#!/usr/bin/env bash
# The action's post step: stop the background pusher, push what is still queued
# (bounded by wait-timeout), print what was pushed, and remove the signing key.
set -uo pipefail

state="${RUNNER_TEMP:?}/nixflare"
export NIXFLARE_CONFIG="$state/config.toml" NIXFLARE_QUEUE="$state/queue"
timeout=${NIXFLARE_INPUT_WAIT_TIMEOUT:-600}
[[ -d $state/install/bin ]] && export PATH="$state/install/bin:$PATH"
trap 'rm -f "$state/signing-key.sec"' EXIT

if [[ -n "${STATE_pid:-}" ]] && kill -0 "$STATE_pid" 2>/dev/null; then
  # watch-store queues a path a tenth of a second after Nix registers it: let the last
  # ones in, then stop it; whatever it was sending resumes below.
  sleep 1
  kill "$STATE_pid"
  for _ in $(seq 50); do kill -0 "$STATE_pid" 2>/dev/null || break; sleep 0.1; done
fi

upstream=()
for u in ${NIXFLARE_INPUT_UPSTREAM:-}; do upstream+=(--upstream "$u"); done
echo "::group::pushing what is still queued (at most ${timeout}s)"
nixflare watch --queue "$NIXFLARE_QUEUE" --exit-when-empty --timeout "$timeout" "${upstream[@]}" 2>&1 \
  | tee "$state/finish.log"
status=${PIPESTATUS[0]}
echo "::endgroup::"

pushed=$(grep -h "nixflare watch: .*closure of" "$state/watch.log" "$state/finish.log" 2>/dev/null \
  | sed 's/^nixflare watch: //')
echo "nixflare: what this job pushed:"
echo "${pushed:-  nothing new}"
if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
  { echo "### nixflare"; echo; echo '```'; echo "${pushed:-nothing new}"; echo '```'; } >>"$GITHUB_STEP_SUMMARY"
fi
if [[ $status -ne 0 ]]; then
  echo "::error::nixflare could not push everything within ${timeout}s: see the log above"
fi
exit "$status"
