"""End-to-end fixtures: a real Nix (Debian nix-bin) and the real worker under workerd
(`wrangler dev`) with R2 simulated on disk.

One worker is started per test session. Its R2 is filled before it starts with the
files a stock `nix copy --to file://` wrote, exactly as they would sit in a bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

# Each test's limit: a hung `nix` or worker call fails its test instead of hanging CI.
# The longest tests (GC over days, a seeded bucket) take a minute or two here.
TEST_TIMEOUT_SECONDS = 600


@pytest.fixture(autouse=True)
def per_test_timeout(request):
    """Fails a test that runs longer than TEST_TIMEOUT_SECONDS (SIGALRM interrupts
    whatever it waits for; its fixtures still clean up)."""
    limit = request.node.get_closest_marker("timeout")
    seconds = limit.args[0] if limit else TEST_TIMEOUT_SECONDS

    def expire(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): this test's own time limit")


REPO = Path(__file__).resolve().parents[2]
WRANGLER = REPO / "node_modules" / ".bin" / "wrangler"
CLI = REPO / "target" / "debug" / "nixflare"  # built by `make e2e`
# Small in tests so "too large" and multipart are cheap to reach; real deployments use
# 100 MB. Above R2's 5 MiB minimum part, so multipart works.
MAX_REQUEST_BYTES = 16 << 20
BUCKET = "nixflare"  # bucket_name in wrangler.toml


# The Nix configuration of every test and benchmark (see the file's comments).
NIX_CONF_DIR = REPO / "tests" / "nix"


def host_env(base: dict | None = None) -> dict:
    """`base` (default: this process's environment) without anything that configures Nix
    or nixflare on the host: NIX_CONFIG, NIX_CONF_DIR, NIX_REMOTE, NIX_PATH, NIXFLARE_TOKEN,
    a GitHub job's ACTIONS_ID_TOKEN_REQUEST_URL…
    A test sets what it relies on itself."""
    base = os.environ if base is None else base
    # ACTIONS_ID_TOKEN_REQUEST_*: in a GitHub job allowed an ID token, nixflare would
    # use it wherever a test gives no token.
    return {k: v for k, v in base.items() if not k.startswith(("NIX_", "NIXFLARE_", "ACTIONS_ID_TOKEN_REQUEST_"))}


def nix_env(home: Path, base: dict | None = None) -> dict:
    """An environment in which Nix reads tests/nix/nix.conf and nothing else of the host's
    configuration (system or user nix.conf, NIX_CONFIG), whatever `base` holds, and keeps
    its caches (the narinfo disk cache among them) in the private `home`."""
    home.mkdir(parents=True, exist_ok=True)
    env = host_env(base)
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CONFIG_DIRS=str(home / ".config-dirs"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        # Replaces /etc/nix/nix.conf (and /etc/nix/netrc, /etc/nix/machines).
        NIX_CONF_DIR=str(NIX_CONF_DIR),
        # Replaces the XDG user files; reading the same file twice is harmless.
        NIX_USER_CONF_FILES=str(NIX_CONF_DIR / "nix.conf"),
    )
    return env


def run(cmd: list[str], *, env: dict | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=host_env() if env is None else env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@dataclass
class Nix:
    """Runs Nix commands isolated from the machine's settings and caches."""

    env: dict

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["nix", *args], env=self.env, check=check)

    def store(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["nix-store", *args], env=self.env, check=check)


@pytest.fixture(scope="session")
def nix(tmp_path_factory) -> Nix:
    # A private HOME: Nix's narinfo disk cache must not remember other runs.
    return Nix(nix_env(tmp_path_factory.mktemp("nix-home")))


@dataclass
class Keys:
    secret_file: Path
    public: str
    wrong_secret_file: Path  # a key the cache does not trust
    wrong_public: str


@pytest.fixture(scope="session")
def keys(nix: Nix, tmp_path_factory) -> Keys:
    """Signing keys made by Nix itself."""
    d = tmp_path_factory.mktemp("keys")
    secret = nix("key", "generate-secret", "--key-name", "e2e-test-1").stdout
    (d / "sk").write_text(secret)
    public = run(["nix", "key", "convert-secret-to-public"], env=nix.env, input=secret).stdout
    other = nix("key", "generate-secret", "--key-name", "e2e-test-1").stdout
    (d / "wrong-sk").write_text(other)
    wrong = run(["nix", "key", "convert-secret-to-public"], env=nix.env, input=other).stdout
    return Keys(d / "sk", public.strip(), d / "wrong-sk", wrong.strip())


@dataclass
class Tokens:
    """Mints upload tokens with an admin key made by `nixflare keygen`."""

    key_file: Path
    public: str

    def mint(self, permissions: str = "read,write", *, subject: str = "e2e", expires_at: int | None = None) -> str:
        args = [str(CLI), "token", "mint", "--key", str(self.key_file), "--subject", subject, "--permissions", permissions]
        args += ["--expires-at", str(expires_at)] if expires_at is not None else ["--expires-in", "1h"]
        return run(args).stdout.strip()

    def id_of(self, token: str) -> str:
        out = run([str(CLI), "token", "inspect", token]).stdout
        return next(line.split(": ")[1] for line in out.splitlines() if line.startswith("id: "))


@pytest.fixture(scope="session")
def tokens(tmp_path_factory) -> Tokens:
    d = tmp_path_factory.mktemp("token-key")
    public = run([str(CLI), "keygen", "e2e-tokens-1", "--out", str(d / "admin.sec")]).stdout.strip()
    return Tokens(d / "admin.sec", public)


# `mk name script`, for closures built in tests (tests/nix/mk.nix says how).
MK = f"""
  mk = import {NIX_CONF_DIR / "mk.nix"};
"""

CLOSURE_EXPR = r"""
{ salt ? "" }:
let
""" + MK + r"""
  leaf = mk "nixflare-e2e-leaf${salt}" "echo leaf > $out";
  middle = mk "nixflare-e2e-middle${salt}" "echo ${leaf} > $out";
  # A directory with a reference to both others, a symlink, an executable and a
  # file big enough (1.6 MB) that reads span several network chunks.
  top = mk "nixflare-e2e-top${salt}" ''
    read -r line < ${middle}
    mkdir -p $out/bin $out/share
    echo "$line ${middle}" > $out/share/refs
    ln -s ${leaf} $out/share/leaf
    printf '#!/bin/sh\necho hello from nixflare\n' > $out/bin/hello
    chmod +x $out/bin/hello
    i=0; while [ $i -lt 40000 ]; do echo "line $i of a file that compresses well"; i=$((i+1)); done > $out/share/big
  '';
in top
"""


@dataclass
class Closure:
    top: str
    paths: list[str]  # every path of the closure, top included
    nar_hashes: dict[str, str]  # path -> NarHash as Nix reports it


def build_closure(nix: Nix, salt: str = "") -> Closure:
    top = run(
        ["nix-build", "--no-out-link", "-E", CLOSURE_EXPR, "--argstr", "salt", salt],
        env=nix.env,
    ).stdout.strip()
    info = json.loads(nix("path-info", "--json", "--recursive", top).stdout)
    # Nix 2.8 prints a list of objects; newer Nix prints an object keyed by path.
    items = info if isinstance(info, list) else [dict(v, path=k) for k, v in info.items()]
    hashes = {item["path"]: item["narHash"] for item in items}
    assert len(hashes) >= 3, f"closure too small: {sorted(hashes)}"
    return Closure(top=top, paths=sorted(hashes), nar_hashes=hashes)


@pytest.fixture(scope="session")
def closure(nix: Nix) -> Closure:
    """Served from R2 pre-filled by the fixture below."""
    return build_closure(nix)


@pytest.fixture(scope="session")
def fresh_closure(nix: Nix) -> Closure:
    """Never seen by any cache before this session: for upload tests."""
    return build_closure(nix, salt="-" + os.urandom(6).hex())


@pytest.fixture(scope="session")
def file_cache(nix: Nix, keys: Keys, closure: Closure, tmp_path_factory) -> Path:
    """A binary cache written by stock Nix: what the worker must serve as it is."""
    d = tmp_path_factory.mktemp("file-cache")
    nix(
        "copy",
        "--to",
        f"file://{d}?secret-key={keys.secret_file}&compression=xz&write-nar-listing=true",
        closure.top,
    )
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrangler_env() -> dict:
    env = host_env()
    env.update(CLOUDFLARE_CF_FETCH_ENABLED="false", WRANGLER_SEND_METRICS="false", CI="true")
    return env


@dataclass
class Worker:
    url: str
    host: str
    port: int
    persist: Path


R2_LOCAL = Path(__file__).with_name("r2_local.mjs")


def put_objects(persist: Path, items: list[tuple[str, Path]]) -> None:
    """Stores files in the local R2 under exactly these keys."""
    payload = json.dumps([{"key": key, "file": str(file)} for key, file in items])
    run(["node", str(R2_LOCAL), str(persist), BUCKET, "put"], input=payload, cwd=REPO)


def get_object(persist: Path, key: str) -> bytes | None:
    proc = subprocess.run(["node", str(R2_LOCAL), str(persist), BUCKET, "get", key], capture_output=True, cwd=REPO)
    return proc.stdout if proc.returncode == 0 else None


def delete_object(persist: Path, key: str) -> None:
    run(["node", str(R2_LOCAL), str(persist), BUCKET, "delete", key], cwd=REPO)


def list_keys(persist: Path, prefix: str = "") -> list[str]:
    out = run(["node", str(R2_LOCAL), str(persist), BUCKET, "list", prefix], cwd=REPO).stdout
    return out.splitlines()


# Objects stored under keys a raw-path worker could be tricked into reading.
# Each is the raw path (less its leading '/') of a request in test_http that must 404.
DECOY_KEYS = [
    "secret.txt",
    "nar/secret.txt",
    "nar/..%2fsecret.txt",
    "nar/%2e%2e%2fsecret.txt",
    "nar/../secret.txt",
    "../secret.txt",
    "log/..%2f..%2fsecret.txt",
    "log/..%252f..%252fsecret.txt",
]


def start_worker(persist: Path, variables: dict[str, str], *, extra_args: tuple[str, ...] = (),
                 config: Path | None = None, ready_path: str = "/nix-cache-info",
                 port: int | None = None, extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Starts `wrangler dev` (workerd) on a free loopback port (or `port`) with R2
    persisted in `persist`; returns the process (its own process group) and the URL once
    it answers. `config` picks another wrangler.toml (the benchmark baseline);
    `extra_env` is added to wrangler's environment (e.g. SSL_CERT_FILE)."""
    port, inspector = port or free_port(), free_port()
    log = open(persist / "wrangler.log", "w")
    # wrangler.toml declares cache.nixos.org upstream, which this machine cannot reach:
    # a test names its upstreams, or has none (every closure whole in the cache).
    variables = {"UPSTREAM_CACHES": "", **variables}
    var_args = [arg for name, value in variables.items() for arg in ("--var", f"{name}:{value}")]
    proc = subprocess.Popen(
        [str(WRANGLER), "dev", "--ip", "127.0.0.1", "--port", str(port),
         "--inspector-port", str(inspector), "--persist-to", str(persist),
         *var_args, "--show-interactive-dev-session=false", *extra_args,
         *(["--config", str(config)] if config else [])],
        cwd=REPO, env={**wrangler_env(), **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stopping kills workerd too
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"wrangler dev exited:\n{(persist / 'wrangler.log').read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}{ready_path}", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except urllib.error.HTTPError:
            return proc, url  # answering at all means ready
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_worker(proc)
            raise AssertionError(f"wrangler dev not ready:\n{(persist / 'wrangler.log').read_text()[-4000:]}")
        time.sleep(0.5)


def worker_at(url: str, persist: Path) -> Worker:
    return Worker(url=url, host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), persist=persist)


@contextlib.contextmanager
def running_worker(persist: Path, variables: dict[str, str], **kw):
    """A worker on `persist` for the `with` block (`start_worker`'s options), stopped
    after it whatever happens."""
    proc, url = start_worker(persist, variables, **kw)
    try:
        yield worker_at(url, persist)
    finally:
        stop_worker(proc)


def stop_worker(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def worker(file_cache: Path, keys: Keys, tokens: Tokens, tmp_path_factory) -> Worker:
    persist = tmp_path_factory.mktemp("r2")
    items = [
        (f.relative_to(file_cache).as_posix(), f)
        for f in sorted(file_cache.rglob("*"))
        # nix-cache-info is rendered by the worker from its config.
        if f.is_file() and f.name != "nix-cache-info"
    ]
    decoy = tmp_path_factory.mktemp("decoy") / "secret.txt"
    decoy.write_text("must never be served\n")
    put_objects(persist, items + [(key, decoy) for key in DECOY_KEYS])

    variables = {
        "PUBLIC_KEYS": keys.public,
        "TOKEN_PUBLIC_KEYS": tokens.public,
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        # The cron's clock runs two days ahead: every unfinished upload is abandoned to it
        # (ABANDONED_UPLOAD_SECONDS is a day), so the cleanup test need not wait.
        "TEST_CLOCK_OFFSET_SECONDS": str(2 * 86400),
    }
    # Cron by request: GET /__scheduled.
    with running_worker(persist, variables, extra_args=("--test-scheduled",)) as worker:
        yield worker


def request(worker: Worker, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """Sends `path` byte for byte (no client-side normalisation) and reads the reply."""
    conn = http.client.HTTPConnection(worker.host, worker.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def field(narinfo: str, key: str) -> str:
    """The value of a narinfo line `key: value`."""
    return next(line.split(": ", 1)[1] for line in narinfo.splitlines() if line.startswith(key + ": "))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def nix32_sha256(data: bytes) -> str:
    """Nix's base-32 of SHA-256, the name a NAR file must have."""
    return nix32_of_digest(hashlib.sha256(data).digest())


def nix32_of_digest(digest: bytes) -> str:
    """Nix's base-32 of a 32-byte digest."""
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    out = []
    for n in range(51, -1, -1):
        b = n * 5
        i, j = b // 8, b % 8
        c = (digest[i] >> j) | ((digest[i + 1] << (8 - j)) if i + 1 < 32 else 0)
        out.append(alphabet[c & 0x1F])
    return "".join(out)


DAY = 86400


@dataclass
class Cache:
    persist: Path
    variables: dict
    proc: subprocess.Popen | None = None
    worker: Worker | None = None

    """A worker on storage of its own, restarted with its clock (TEST_CLOCK_OFFSET_SECONDS)
    moved on: days pass between two starts, the bucket and the index stay."""

    def start(self, offset_days: float) -> Worker:
        self.stop()
        variables = dict(self.variables, TEST_CLOCK_OFFSET_SECONDS=str(int(offset_days * DAY)))
        self.proc, url = start_worker(self.persist, variables, extra_args=("--test-scheduled",))
        self.worker = worker_at(url, self.persist)
        return self.worker

    def stop(self) -> None:
        if self.proc is not None:
            stop_worker(self.proc)
            self.proc = None


@pytest.fixture
def make_cache(keys: Keys, tokens: Tokens, tmp_path_factory):
    caches = []

    def make(**variables) -> Cache:
        cache = Cache(tmp_path_factory.mktemp("gc-r2"), {
            "PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public, **variables})
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.stop()


def wait_for_upkeep(worker: Worker, token: str, since_ms: int, timeout: float = 300) -> dict:
    """Polls the index until a reconcile lap begun at or after `since_ms` (the index's
    clock) is complete and the GC pass it ran is done: the object's alarm does the work
    after the cron's request returns."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = request(worker, "GET", "/_nixflare/stats", {"Authorization": f"Bearer {token}"})
        assert status == 200, body
        stats = json.loads(body)
        lap = stats["reconcile"]
        gc = stats.get("gc") or {}
        lap_done = (lap["completeLapStartedAt"] or 0) >= since_ms and lap["after"] == ""
        gc_done = gc.get("phase") == "done" and (gc.get("startedAt") or 0) >= since_ms
        if lap_done and gc_done:
            return stats
        assert time.monotonic() < deadline, f"upkeep not done: {stats['reconcile']}, gc {gc}"
        time.sleep(1)


def cron(worker, clock_days: float, token: str) -> dict:
    since = int((time.time() + clock_days * DAY) * 1000) - 1000
    status, _, body = request(worker, "GET", "/__scheduled?cron=17+*+*+*+*")
    assert status == 200, body
    return wait_for_upkeep(worker, token, since)


class RecordingProxy:
    """A proxy in front of a worker that records every request it forwards (method,
    path with query, status), can play a cache that is down (`down = True`: every
    connection is dropped unanswered) and slow publishing (`narinfo_delay`)."""

    def __init__(self, worker: Worker, misbehave=None):
        """`misbehave(handler)`, if given, sees each request first and returns True
        when it answered (or dropped) it itself."""
        import http.server
        import threading

        self.down = False
        # Seconds to hold each narinfo PUT before forwarding it.
        self.narinfo_delay = 0.0
        self.log: list[tuple[str, str, int]] = []
        self.refused = 0
        proxy = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def handle_any(self):
                if proxy.down:
                    with lock:
                        proxy.refused += 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if misbehave and misbehave(self):
                    return
                if self.command == "PUT" and self.path.endswith(".narinfo"):
                    time.sleep(proxy.narinfo_delay)
                conn = http.client.HTTPConnection(worker.host, worker.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with lock:
                    proxy.log.append((self.command, self.path, resp.status))
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def puts(self) -> list[tuple[str, int]]:
        return [(path, status) for method, path, status in self.log if method == "PUT"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
