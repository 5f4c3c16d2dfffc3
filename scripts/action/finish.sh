#!/usr/bin/env bash
# The action's post step: stop the background pusher, put nix.conf back (hook mode),
# push what is still queued (bounded by wait-timeout), print what was pushed, and
# remove the signing key and the saved token.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

state="${RUNNER_TEMP:?}/nixflare"
export NIXFLARE_CONFIG="$state/config.toml" NIXFLARE_QUEUE="$state/queue"
timeout=${NIXFLARE_INPUT_WAIT_TIMEOUT:-600}
[[ -d $state/install/bin ]] && export PATH="$state/install/bin:$PATH"
trap 'rm -f "$state/signing-key.sec" "$NIXFLARE_CONFIG"' EXIT

if [[ -n "${STATE_nix_conf:-}" && -f "$state/nix.conf.orig" ]]; then
  conf=$STATE_nix_conf
  as_conf_writer cp "$state/nix.conf.orig" "$conf" && restart_nix_daemon
fi

pid=${STATE_pid:-}
if [[ -z $pid ]]; then
  echo "nixflare: the start step did not get as far as pushing; nothing to do"
  exit 0
fi
if kill -0 "$pid" 2>/dev/null && [[ $(ps -p "$pid" -o comm= 2>/dev/null) == nixflare* ]]; then
  # watch-store queues a path a tenth of a second after Nix registers it: let the last
  # ones in, then stop it; whatever it was sending resumes below.
  sleep 1
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi

upstream_args
echo "::group::pushing what is still queued (at most ${timeout}s)"
nixflare watch --queue "$NIXFLARE_QUEUE" --exit-when-empty --timeout "$timeout" \
  ${upstream[@]+"${upstream[@]}"} 2>&1 | tee "$state/finish.log"
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
