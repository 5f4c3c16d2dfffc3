"""Private reads against public reads of the same worker: nixflare with READ_ACCESS=token
(every request carries a read token) against READ_ACCESS=public, on the same R2 data,
under the same local workerd, loaded alternately, loopback only. Each figure keeps the
best of its rounds per variant.

A third variant looks a read token's revocation up on every request
(REVOCATION_CHECK_SECONDS=0): what remembering admitted tokens per isolate saves.

Load: wrk for request rates, curl for a big NAR. CPU is the workerd process's (which
also runs the simulated R2 and the emulated Cache API)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from common import CLI_RELEASE, REPO, Section, run, start_worker, stop_worker, verdict
from worker_vs_baseline import BASELINE_CONFIG, MIB, Figures, cpu_seconds, curl, random_file, workerd_pid, NARINFO

ROUNDS = 3
VARIANTS = ("public", "private", "private, revocation per request")
# (name, unit, higher is better, target of private / public or None)
FIGURES = [
    ("narinfo hit", "req/s", True, 0.85),
    ("narinfo hit p99", "ms", False, None),
    ("narinfo miss (404)", "req/s", True, 0.85),
    ("CPU per 10k narinfo hits", "s", False, 1.3),
    ("NAR download 1 MiB", "req/s", True, 0.85),
    ("NAR download 100 MiB", "MB/s", True, 0.85),
]


def wrk(url: str, seconds: int, connections: int, headers: list[str]) -> tuple[float, float, int]:
    """req/s, p99 latency in ms, and the number of requests."""
    import re

    args = [arg for header in headers for arg in ("-H", header)]
    out = run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *args, url]).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rate, p99, total, int(non_2xx.group(1)) if non_2xx else 0


def load(url: str, work: Path) -> dict:
    """Objects put through the baseline worker (keys verbatim): a narinfo, two NARs."""
    h, miss = "7rjj86a15146cq1d3qy068lml7n8ykzm", "0rjj86a15146cq1d3qy068lml7n8ykzm"
    f = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    narinfo = work / "narinfo"
    narinfo.write_text(NARINFO.format(h=h, f=f, sig="A" * 86 + "=="))
    data = {"narinfo": f"{h}.narinfo", "miss": f"{miss}.narinfo"}
    _, _, status = curl(["-T", str(narinfo), f"{url}/{data['narinfo']}"])
    assert status == 201
    for label, size in [("1MiB", MIB), ("100MiB", 100 * MIB)]:
        path = work / f"nar-{label}"
        key = f"nar/{random_file(path, size)}.nar"
        _, _, status = curl(["-T", str(path), f"{url}/{key}"])
        assert status == 201, status
        data[f"nar_{label}"] = key
        path.unlink()
    return data


def measure(proc, url: str, data: dict, headers: list[str], figures: Figures) -> None:
    pid = workerd_pid(proc)
    hit = f"{url}/{data['narinfo']}"
    wrk(hit, 1, 8, headers)  # warm: the isolate, the token, the kept copy
    cpu_before = cpu_seconds(pid)
    rate, p99, total, failed = wrk(hit, 5, 32, headers)
    cpu = cpu_seconds(pid) - cpu_before
    assert failed == 0, f"{failed} narinfo hits failed"
    figures.keep("narinfo hit", rate)
    figures.keep("narinfo hit p99", p99, higher_is_better=False)
    figures.keep("CPU per 10k narinfo hits", cpu / total * 10_000, higher_is_better=False)
    rate, _, _, _ = wrk(f"{url}/{data['miss']}", 5, 32, headers)
    figures.keep("narinfo miss (404)", rate)
    rate, _, _, failed = wrk(f"{url}/{data['nar_1MiB']}", 4, 4, headers)
    assert failed == 0
    figures.keep("NAR download 1 MiB", rate)
    auth = [arg for header in headers for arg in ("-H", header)]
    moved = seconds = 0.0
    for _ in range(3):
        n, s, status = curl([*auth, f"{url}/{data['nar_100MiB']}"])
        assert status == 200, status
        moved, seconds = moved + n, seconds + s
    figures.keep("NAR download 100 MiB", moved / seconds / 1e6)


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-private-"))
    persist = work / "r2"
    persist.mkdir()
    results = {name: Figures() for name in VARIANTS}
    try:
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"])
        admin = work / "admin.sec"
        token_public = run([str(CLI_RELEASE), "keygen", "bench-tokens-1", "--out", str(admin)]).stdout.strip()
        token = run([str(CLI_RELEASE), "token", "mint", "--key", str(admin), "--subject", "bench-reader",
                     "--permissions", "read", "--expires-in", "1d"]).stdout.strip()
        proc, url = start_worker(persist, {}, config=BASELINE_CONFIG, ready_path="/")
        try:
            data = load(url, work)
        finally:
            stop_worker(proc)
        variables = {
            "public": {"READ_ACCESS": "public"},
            "private": {"READ_ACCESS": "token"},
            "private, revocation per request": {"READ_ACCESS": "token", "REVOCATION_CHECK_SECONDS": "0"},
        }
        for round_no in range(1, ROUNDS + 1):
            for name in VARIANTS:
                proc, url = start_worker(persist, {"TOKEN_PUBLIC_KEYS": token_public, **variables[name]})
                try:
                    headers = [] if name == "public" else [f"Authorization: Bearer {token}"]
                    if name != "public":
                        # The refusal is what an anonymous request gets: checked, not assumed.
                        status = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                                 f"{url}/{data['narinfo']}"], capture_output=True, text=True).stdout
                        assert status == "401", status
                    measure(proc, url, data, headers, results[name])
                finally:
                    stop_worker(proc)
                print(f"private: round {round_no} {name}: done")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    public, private, every = (results[name].values for name in VARIANTS)
    lines = [
        "| figure | public | private | revocation per request | private / public | target |",
        "|---|---|---|---|---|---|",
    ]
    missed = []
    for name, unit, higher, target in FIGURES:
        p, q, e = public[name], private[name], every[name]
        ratio = q / p if p else float("nan")
        shown, ok = verdict(ratio, higher, target)
        if not ok:
            missed.append(name)
        lines.append(f"| {name} ({unit}) | {p:.4g} | {q:.4g} | {e:.4g} | {ratio:.2f} | {shown} |")
        print(f"private: {name:28} public {p:10.4g} private {q:10.4g} per-request {e:10.4g} {unit:6}"
              f" ratio {ratio:.2f}  {shown}")
    lines.append(
        "\nEvery private request carries a read token (`Authorization: Bearer`). The worker admits a token it "
        "remembers (per isolate) without a signature check or an R2 operation, and answers a plain GET of a "
        "narinfo from its private Cache API copy after the first; the third column looks the token's revocation "
        "up in R2 on every request (REVOCATION_CHECK_SECONDS=0). Locally the Cache API is miniflare's emulation "
        "and R2 is simulated in the same process: the absolute figures are this machine's, the ratios the point."
    )
    if missed:
        lines.append("\nMissed: " + ", ".join(missed) + ".")
    return Section("Private reads vs public reads", "\n".join(lines))
