# Shared by start.sh and finish.sh (sourced).

# Runs "$@" directly if it may write $conf, else with sudo.
as_conf_writer() {
  if [[ -w "$conf" ]]; then "$@"; else sudo "$@"; fi
}

# Restarts the Nix daemon so it reads nix.conf again, where there is one to restart
# (only for the real /etc/nix/nix.conf).
restart_nix_daemon() {
  [[ $conf == /etc/nix/nix.conf ]] || return 0
  if command -v systemctl >/dev/null && systemctl list-unit-files nix-daemon.service >/dev/null 2>&1; then
    sudo systemctl restart nix-daemon
  elif command -v launchctl >/dev/null; then
    sudo launchctl kickstart -k system/org.nixos.nix-daemon
  fi
}

# The upstream input as arguments (no glob expansion of its words).
upstream_args() {
  upstream=()
  set -f
  for u in ${NIXFLARE_INPUT_UPSTREAM:-}; do upstream+=(--upstream "$u"); done
  set +f
}
