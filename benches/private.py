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
import tempfile
from pathlib import Path

from common import CLI_RELEASE, Section, run, start_worker, stop_worker, verdict
from worker_vs_baseline import BASELINE_CONFIG, MIB, Figures, cpu_seconds, curl, load_data, workerd_pid, wrk

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


def measure(proc, url: str, data: dict, headers: tuple[str, ...], figures: Figures) -> None:
    pid = workerd_pid(proc)
    hit = f"{url}/{data['narinfo']}"
    wrk(hit, 1, 8, headers)  # warm: the isolate, the token, the kept copy
    cpu_before = cpu_seconds(pid)
    rate, p99, total = wrk(hit, 5, 32, headers)
    cpu = cpu_seconds(pid) - cpu_before
    figures.keep("narinfo hit", rate)
    figures.keep("narinfo hit p99", p99, higher_is_better=False)
    figures.keep("CPU per 10k narinfo hits", cpu / total * 10_000, higher_is_better=False)
    rate, _, _ = wrk(f"{url}/{data['miss']}", 5, 32, headers, expect_status="4xx")
    figures.keep("narinfo miss (404)", rate)
    rate, _, _ = wrk(f"{url}/{data['nar_1MiB']}", 4, 4, headers)
    figures.keep("NAR download 1 MiB", rate)
    auth = [arg for header in headers for arg in ("-H", header)]
    moved = seconds = 0.0
    for _ in range(3):
        n, s, status = curl([*auth, f"{url}/{data['nar_100MiB']}"])
        assert status == 200, status
        moved, seconds = moved + n, seconds + s
    figures.keep("NAR download 100 MiB", moved / seconds / 1e6)


def read_token_and_data(work: Path, persist: Path, nar_sizes) -> tuple[str, str, dict]:
    """A token key's public half, a day's read token of it, and the read-side objects
    (`load_data`) put in `persist` through the baseline."""
    run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"])
    admin = work / "admin.sec"
    token_public = run([str(CLI_RELEASE), "keygen", "bench-tokens-1", "--out", str(admin)]).stdout.strip()
    token = run([str(CLI_RELEASE), "token", "mint", "--key", str(admin), "--subject", "bench-reader",
                 "--permissions", "read", "--expires-in", "1d"]).stdout.strip()
    proc, url = start_worker(persist, {}, config=BASELINE_CONFIG, ready_path="/")
    try:
        return token_public, token, load_data(url, work, nar_sizes=nar_sizes)
    finally:
        stop_worker(proc)


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-private-"))
    persist = work / "r2"
    persist.mkdir()
    results = {name: Figures() for name in VARIANTS}
    try:
        token_public, token, data = read_token_and_data(work, persist, (("1MiB", MIB), ("100MiB", 100 * MIB)))
        variables = {
            "public": {"READ_ACCESS": "public"},
            "private": {"READ_ACCESS": "token"},
            "private, revocation per request": {"READ_ACCESS": "token", "REVOCATION_CHECK_SECONDS": "0"},
        }
        for round_no in range(1, ROUNDS + 1):
            for name in VARIANTS:
                proc, url = start_worker(persist, {"TOKEN_PUBLIC_KEYS": token_public, **variables[name]})
                try:
                    headers = () if name == "public" else (f"Authorization: Bearer {token}",)
                    if name != "public":
                        # The refusal is what an anonymous request gets: checked, not assumed.
                        _, _, status = curl([f"{url}/{data['narinfo']}"])
                        assert status == 401, status
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
