"""HTTP benchmark: the nixflare worker against the baseline worker (benches/baseline: path
= key, R2 streams passed straight through, nothing else), under the same local workerd
(wrangler dev), on the same R2 data, loaded alternately (baseline, nixflare, baseline,
nixflare), loopback only. Each figure keeps the better of its two rounds per worker.

Load: wrk for request rates (bounded by time), curl for big bodies, a Python client
for nixflare's multipart upload. CPU and RSS are read from /proc for the workerd
process (which also runs the simulated R2: docs/platform.md §2)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import http.client
from dataclasses import dataclass, field
from pathlib import Path

from common import CLI_RELEASE, REPO, Section, nix32_of_digest, run, start_worker, stop_worker, verdict

MIB = 1 << 20
BASELINE_CONFIG = REPO / "benches" / "baseline" / "wrangler.toml"
FLOOR = REPO / "benches" / "floor"
# Figures the floor worker (reads only) is measured on.
FLOOR_FIGURES = ("narinfo hit", "narinfo hit p99", "narinfo miss (404)", "CPU per 10k narinfo hits")
ROUNDS = 2
NARINFO = """StorePath: /nix/store/{h}-bench
URL: nar/{f}.nar.zst
Compression: zstd
FileHash: sha256:{f}
FileSize: 1234
NarHash: sha256:{f}
NarSize: 5678
References: {h}-bench
Sig: bench-1:{sig}
"""


def workerd_pid(proc: subprocess.Popen) -> int:
    """The workerd process wrangler started (same process group)."""
    candidates = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == proc.pid and comm == "workerd":
            candidates.append((rss_kib(int(entry.name)), int(entry.name)))
    if not candidates:
        raise RuntimeError("no workerd process found")
    return max(candidates)[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Samples a process's RSS every 10 ms while in use; `growth_mib` is peak − start."""

    def __init__(self, pid: int):
        self.pid, self.start, self.peak = pid, rss_kib(pid), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024


def wrk(url: str, seconds: int, connections: int, headers: tuple[str, ...] = (),
        expect_status: str = "2xx") -> tuple[float, float, int]:
    """req/s, p99 latency in ms, and the number of requests. Unless `expect_status` is
    "4xx" (a 404 measured as such), any answer other than 2xx/3xx is an error: a rate of
    refusals measures nothing."""
    args = [arg for header in headers for arg in ("-H", header)]
    out = run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *args, url]).stdout
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if expect_status == "2xx" and failed:
        raise AssertionError(f"{url}: {failed.group(1)} answers were not 2xx/3xx")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rate, p99, total


def curl(args: list[str]) -> tuple[int, float, int]:
    """bytes moved, seconds, status."""
    out = run(["curl", "-s", "-o", "/dev/null", "-H", "Expect:",
               "-w", "%{size_download} %{size_upload} %{time_total} %{http_code}", *args]).stdout
    down, up, seconds, status = out.split()
    return int(float(down)) + int(float(up)), float(seconds), int(status)


def random_file(path: Path, size: int) -> str:
    """Writes `size` random bytes; returns their nix32 SHA-256 (a NAR's name)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MIB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return nix32_of_digest(digest.digest())


def multipart_upload(url: str, token: str, key: str, path: Path, part_size: int) -> int:
    """nixflare's multipart protocol, as `nixflare push` speaks it; returns bytes sent."""
    host, port = url.removeprefix("http://").split(":")
    auth = {"Authorization": f"Bearer {token}"}

    def call(method, target, body=b"", headers=None, length=None):
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        h = dict(auth, **(headers or {}))
        h["Content-Length"] = str(len(body) if length is None else length)
        conn.request(method, target, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {target}: {resp.status} {data[:200]!r}")
        return data

    base = f"/_nixflare/uploads/{key}"
    upload_id = json.loads(call("POST", base + "?uploads"))["uploadId"]
    quoted = urllib_quote(upload_id)
    size = path.stat().st_size
    etags = []
    with open(path, "rb") as f:
        for number, offset in enumerate(range(0, size, part_size), 1):
            length = min(part_size, size - offset)
            f.seek(offset)
            reply = call("PUT", f"{base}?partNumber={number}&uploadId={quoted}", body=f.read(length))
            etags.append(json.loads(reply)["etag"])
    listing = "".join(f"{n} {e}\n" for n, e in enumerate(etags, 1)).encode()
    call("POST", f"{base}?uploadId={quoted}", body=listing)
    return size


def urllib_quote(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="")


@dataclass
class Figures:
    """One worker's results; each keeps the best value seen over the rounds."""

    values: dict[str, float] = field(default_factory=dict)

    def keep(self, name: str, value: float, higher_is_better: bool = True) -> None:
        old = self.values.get(name)
        if old is None or (value > old if higher_is_better else value < old):
            self.values[name] = value


# (name, unit, higher is better, ratio target or None, what the target compares)
FIGURES = [
    ("narinfo hit", "req/s", True, 0.9),
    ("narinfo hit p99", "ms", False, None),
    ("narinfo miss (404)", "req/s", True, 0.9),
    ("NAR download 1 MiB", "MB/s", True, 0.95),
    ("NAR download 100 MiB", "MB/s", True, 0.95),
    ("NAR download 1 GiB", "MB/s", True, 0.95),
    ("NAR upload 100 MiB (one PUT)", "MB/s", True, 0.95),
    ("CPU per 10k narinfo hits", "s", False, 1.2),
    ("RSS growth, 1 GiB down", "MiB", False, None),
    ("RSS growth, 1 GiB up (first)", "MiB", False, None),
    ("RSS growth, 1 GiB up (second)", "MiB", False, None),
]


NOTES = """Notes on reading these figures (this machine, 2 cores shared by wrk, curl and workerd):

- Noise: the same figure moves by 10-15% between invocations on this machine (the
  baseline itself served 1,023 to 1,292 narinfo hits/s in three runs). One run of this
  command put nixflare at 0.86x on narinfo hits and 1.29x on CPU, the next at 1.07x and
  1.04x; big-object throughputs swing the same way (0.92x at 100 MiB next to 1.17x at
  1 GiB in one run, 0.98x and 0.94x in the next). Treat a ratio within ~0.1 of its
  target as "at the target", not as met or missed.
- The floor column is the baseline's job written with workers-rs (`benches/floor`): what
  wasm and workers-rs' glue cost before any nixflare logic. nixflare sits within ~10% of
  it on rate and CPU (ad-hoc runs: 7.4-7.7 s vs 7.4-7.5 s per 10k hits), so its strict
  parsing, Range/If-None-Match handling and headers cost little; the rest of any gap to
  the JS baseline is the wasm floor, which itself swings from 0.94x to 1.08x.
- The largest cost found was not in the worker: serving the landing page through a
  static-assets binding put an asset router in front of every request (0.70x rate, 1.83x
  CPU); the page is now built into the worker. `[cache]` makes no difference locally.
- Uploads: the single PUT includes R2 verifying the SHA-256 that names the NAR (the
  simulated R2 hashes every byte again), which the baseline does not ask for.
- Memory: the first 1 GiB upload in a fresh workerd grows its pools (the baseline's too,
  and the simulated R2 lives in the same process); the second shows whether memory
  follows object size. It does not (5-12 MiB for 1 GiB)."""


def measure(name: str, proc, url: str, data: dict, token: str | None, figures: Figures, work: Path,
            round_no: int) -> None:
    pid = workerd_pid(proc)
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    # Warm up the isolate and the code paths first.
    wrk(f"{url}/{data['narinfo']}", 1, 8)

    cpu_before = cpu_seconds(pid)
    rate, p99, total = wrk(f"{url}/{data['narinfo']}", 5, 32)
    cpu = cpu_seconds(pid) - cpu_before
    figures.keep("narinfo hit", rate)
    figures.keep("narinfo hit p99", p99, higher_is_better=False)
    figures.keep("CPU per 10k narinfo hits", cpu / total * 10_000, higher_is_better=False)
    rate, _, _ = wrk(f"{url}/{data['miss']}", 5, 32, expect_status="4xx")
    figures.keep("narinfo miss (404)", rate)
    if name == "floor":
        print(f"http: round {round_no} {name}: done")
        return

    rate, _, _ = wrk(f"{url}/{data['nar_1MiB']}", 4, 4)
    figures.keep("NAR download 1 MiB", rate * MIB / 1e6)
    moved = seconds = 0.0
    for _ in range(3):
        n, s, status = curl([f"{url}/{data['nar_100MiB']}"])
        assert status == 200, status
        moved, seconds = moved + n, seconds + s
    figures.keep("NAR download 100 MiB", moved / seconds / 1e6)
    with PeakRss(pid) as rss:
        n, s, status = curl([f"{url}/{data['nar_1GiB']}"])
    assert status == 200 and n == 1 << 30, (status, n)
    figures.keep("NAR download 1 GiB", n / s / 1e6)
    figures.keep("RSS growth, 1 GiB down", rss.growth_mib, higher_is_better=False)

    # Uploads: fresh content each time (nixflare skips a NAR it already has).
    up100 = work / "up100"
    digest = random_file(up100, 100 * MIB)
    key = f"nar/{digest}.nar"
    n, s, status = curl(["-T", str(up100), *auth, f"{url}/{key}"])
    assert status == 201, status
    figures.keep("NAR upload 100 MiB (one PUT)", n / s / 1e6)

    if round_no == 1:
        # Twice in the same process: the first 1 GiB grows the runtime's and the simulated
        # R2's pools (both workers, ~60-200 MiB); the second shows whether memory follows
        # the object size, which is what buffering would do.
        for attempt in ("first", "second"):
            up1g = work / "up1g"
            digest = random_file(up1g, 1 << 30)
            key = f"nar/{digest}.nar"
            with PeakRss(pid) as rss:
                if token:  # nixflare: in parts, as `nixflare push` sends it above the request limit
                    multipart_upload(url, token, key, up1g, 95 * MIB)
                else:  # the baseline has no limit: one PUT
                    _, _, status = curl(["-T", str(up1g), f"{url}/{key}"])
                    assert status == 201, status
            figures.keep(f"RSS growth, 1 GiB up ({attempt})", rss.growth_mib, higher_is_better=False)
            up1g.unlink()
    up100.unlink()
    print(f"http: round {round_no} {name}: done")


def load_data(url: str, work: Path, nar_sizes=(("1MiB", MIB), ("100MiB", 100 * MIB), ("1GiB", 1 << 30))) -> dict:
    """Puts the read-side objects through the baseline (keys verbatim): a narinfo and a
    NAR of each size."""
    data = {}
    h, miss = "7rjj86a15146cq1d3qy068lml7n8ykzm", "0rjj86a15146cq1d3qy068lml7n8ykzm"
    f = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    narinfo = work / "narinfo"
    narinfo.write_text(NARINFO.format(h=h, f=f, sig="A" * 86 + "=="))
    data["narinfo"], data["miss"] = f"{h}.narinfo", f"{miss}.narinfo"
    _, _, status = curl(["-T", str(narinfo), f"{url}/{data['narinfo']}"])
    assert status == 201
    for label, size in nar_sizes:
        path = work / f"nar-{label}"
        key = f"nar/{random_file(path, size)}.nar"
        _, _, status = curl(["-T", str(path), f"{url}/{key}"])
        assert status == 201, status
        data[f"nar_{label}"] = key
        path.unlink()
    return data


def wasm_size() -> tuple[int, int]:
    import gzip

    raw = (REPO / "build" / "index_bg.wasm").read_bytes()
    return len(raw), len(gzip.compress(raw, 9))


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-http-"))
    persist = work / "r2"
    persist.mkdir()
    results = {"baseline": Figures(), "floor": Figures(), "nixflare": Figures()}
    try:
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"])
        # Shares the cache's target directory: the worker crates are compiled once.
        run(["worker-build", "--release"], cwd=FLOOR, env=dict(os.environ, CARGO_TARGET_DIR=str(REPO / "target")))
        admin = work / "admin.sec"
        token_public = run([str(CLI_RELEASE), "keygen", "bench-tokens-1", "--out", str(admin)]).stdout.strip()
        token = run([str(CLI_RELEASE), "token", "mint", "--key", str(admin), "--subject", "bench",
                     "--expires-in", "1d"]).stdout.strip()
        # 200 MB (Business plan) so the 100 MiB figure is one PUT; parts are 95 MiB anyway.
        variables = {"TOKEN_PUBLIC_KEYS": token_public, "MAX_REQUEST_BYTES": "200000000"}
        data = None
        for round_no in range(1, ROUNDS + 1):
            for name in ("baseline", "floor", "nixflare"):
                config = {"baseline": BASELINE_CONFIG, "floor": FLOOR / "wrangler.toml"}.get(name)
                proc, url = start_worker(persist, variables if config is None else {}, config=config,
                                         ready_path="/" if config else "/nix-cache-info")
                try:
                    if data is None:
                        data = load_data(url, work)
                    measure(name, proc, url, data, token if config is None else None, results[name], work,
                            round_no)
                finally:
                    stop_worker(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base, ours, floor = results["baseline"].values, results["nixflare"].values, results["floor"].values
    lines = [
        "| figure | baseline (JS) | floor (workers-rs) | nixflare | floor / baseline | nixflare / baseline | target |",
        "|---|---|---|---|---|---|---|",
    ]
    missed = []
    for name, unit, higher, target in FIGURES:
        b, n = base[name], ours[name]
        ratio = n / b if b else float("nan")
        shown, ok = verdict(ratio, higher, target)
        if not ok:
            missed.append(name)
        f = floor.get(name)
        floor_cells = (f"{f:.4g}", f"{f / b:.2f}") if f is not None and b else ("—", "—")
        lines.append(f"| {name} ({unit}) | {b:.4g} | {floor_cells[0]} | {n:.4g} | {floor_cells[1]} | {ratio:.2f} | {shown} |")
        print(f"http: {name:30} baseline {b:10.4g} {unit:6} floor {floor_cells[0]:>8} nixflare {n:10.4g}"
              f"  ratio {ratio:.2f}  {shown}")
    for name in ("RSS growth, 1 GiB down", "RSS growth, 1 GiB up (second)"):
        ok = ours[name] < 64
        if not ok:
            missed.append(name)
        lines.append(f"\nnixflare {name}: {ours[name]:.1f} MiB (target < 64 MiB: {'met' if ok else 'MISSED'})")
        print(f"http: nixflare {name}: {ours[name]:.1f} MiB (target < 64: {'met' if ok else 'MISSED'})")
    raw, gz = wasm_size()
    ok = gz <= 120_000
    if not ok:
        missed.append("wasm size")
    lines.append(f"\nWasm: {raw:,} B raw, {gz:,} B gzip -9 (target ≤ 120 KB: {'met' if ok else 'MISSED'}).")
    print(f"http: wasm {raw:,} B raw, {gz:,} B gzip (target <= 120 KB: {'met' if ok else 'MISSED'})")
    lines.append(
        "\nBaseline: `benches/baseline/worker.js` (path = key, R2 streams passed through). The 1 GiB upload "
        "goes to the baseline in one PUT and to nixflare in 95 MiB parts plus the verified copy on "
        "completion, as `nixflare push` sends it over a 100 MB limit. RSS is the workerd process, which "
        "also holds the simulated R2."
    )
    if missed:
        lines.append("\nMissed: " + ", ".join(missed) + ".")
    lines.append("\n" + NOTES)
    return Section("Worker vs baseline (HTTP)", "\n".join(lines))
