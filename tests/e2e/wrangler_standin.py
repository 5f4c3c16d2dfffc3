#!/usr/bin/env python3
"""A stand-in for `wrangler` on PATH, for `nixflare init` tests: the commands that touch a
Cloudflare account are recorded (STANDIN_STATE/calls.jsonl) and emulated; `deploy`
starts the real `wrangler dev` on the configuration it was given (R2 simulated on disk),
so the deployed cache really answers; every other command runs the real wrangler
(REAL_WRANGLER)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STATE = Path(os.environ["STANDIN_STATE"])
REAL = os.environ["REAL_WRANGLER"]
# The real wrangler (and the worker's build) runs with the real HOME: cargo lives there.
ENV = {**os.environ, "HOME": os.environ.get("STANDIN_HOME", os.environ["HOME"])}


def record(args: list[str]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls.jsonl", "a") as log:
        log.write(json.dumps(args) + "\n")


def buckets() -> set[str]:
    file = STATE / "buckets"
    return set(file.read_text().split()) if file.exists() else set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def stop_dev(name: str) -> None:
    """Stops the previous "deployment" and waits until its port is free again (workerd
    can hold it a moment after SIGTERM; the redeploy binds the same port)."""
    pid_file = STATE / f"{name}.pid"
    port_file = STATE / f"{name}.port"
    if not pid_file.exists():
        return
    pgid = int(pid_file.read_text())
    pid_file.unlink()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not port_file.exists() or port_free(int(port_file.read_text())):
                return
            time.sleep(0.2)


def deploy(config: str) -> int:
    # One local "deployment" per configuration directory (one per worker), on a port
    # kept across redeploys as a workers.dev URL is.
    name = Path(config).parent.name
    stop_dev(name)
    port_file = STATE / f"{name}.port"
    if not port_file.exists():
        port_file.write_text(str(free_port()))
    port = int(port_file.read_text())
    log = open(STATE / f"{name}.log", "a")
    proc = subprocess.Popen(
        [REAL, "dev", "--config", config, "--ip", "127.0.0.1", "--port", str(port),
         "--inspector-port", str(free_port()), "--persist-to", str(STATE / name),
         "--show-interactive-dev-session=false"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=ENV,
    )
    (STATE / f"{name}.pid").write_text(str(proc.pid))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print((STATE / f"{name}.log").read_text()[-3000:], file=sys.stderr)
            return 1
        try:
            urllib.request.urlopen(f"{url}/", timeout=2).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.5)
    else:
        print("wrangler dev did not start", file=sys.stderr)
        return 1
    print(f"Uploaded (stand-in)\nDeployed triggers (stand-in)\n  {url}\nCurrent Version ID: standin")
    return 0


def main(args: list[str]) -> int:
    if args[:1] == ["whoami"]:
        record(args)
        if os.environ.get("STANDIN_LOGGED_OUT"):
            print("You are not authenticated. Please run `wrangler login`.")
            return 1
        print(json.dumps({"loggedIn": True, "email": "ci@example.org"}))
        return 0
    if args[:3] == ["r2", "bucket", "info"]:
        record(args)
        if args[3] in buckets():
            print(json.dumps({"name": args[3]}))
            return 0
        print("✘ [ERROR] The specified bucket does not exist.", file=sys.stderr)
        return 1
    if args[:3] == ["r2", "bucket", "create"]:
        record(args)
        STATE.mkdir(parents=True, exist_ok=True)
        (STATE / "buckets").write_text(" ".join(sorted(buckets() | {args[3]})))
        print(f"Created bucket '{args[3]}'")
        return 0
    if args[:1] == ["deploy"] and "--dry-run" not in args:
        record(args)
        if os.environ.get("STANDIN_DEPLOY_FAILS"):
            print("✘ [ERROR] A request to the Cloudflare API failed.", file=sys.stderr)
            return 1
        return deploy(args[args.index("--config") + 1])
    os.execve(REAL, [REAL, *args], ENV)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
