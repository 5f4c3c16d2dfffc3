"""The landing page's cost: its summary read against a narinfo read (both one R2 object,
the same worker, loaded alternately), the page itself, and the index requests a page
view makes, counted by the index itself (`nixflare_index_operations_total` from
/_nixflare/metrics, less the scrapes' own `gauges`): the target is zero. A batch query
after them is the control: it must count as one."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from common import Section, bench_keys, run, start_worker, stop_worker, verdict
from worker_vs_baseline import BASELINE_CONFIG, Figures, load_data, wrk

ROUNDS = 3
PAGE_VIEWS = 200


def get(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def index_operations(url: str, token: str) -> int:
    """Operations the index served so far, the scrapes' own `gauges` left out."""
    status, body = get(f"{url}/_nixflare/metrics", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    total = 0
    for line in body.decode().splitlines():
        if line.startswith("nixflare_index_operations_total{") and 'op="gauges"' not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def page_view(url: str, narinfo: str) -> None:
    """What a visitor's browser fetches: the page, its keys, info and summary, and a lookup."""
    for path in ("/", "/public-keys", "/_nixflare/info", "/_nixflare/summary.json", f"/{narinfo}"):
        status, _ = get(url + path)
        assert status == 200, (path, status)
    assert get(f"{url}/{narinfo}", "HEAD")[0] == 200


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-page-"))
    persist = work / "r2"
    persist.mkdir()
    figures = {"narinfo": Figures(), "summary": Figures(), "page": Figures()}
    try:
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"])
        keys = bench_keys(work, "read,write,metrics")
        token_public, token = keys["token_public"], keys["token"]
        proc, url = start_worker(persist, {}, config=BASELINE_CONFIG, ready_path="/")
        try:
            data = load_data(url, work, nar_sizes=())
        finally:
            stop_worker(proc)
        proc, url = start_worker(persist, {"TOKEN_PUBLIC_KEYS": token_public})
        try:
            # The narinfo was written behind the worker's back: a reconcile step indexes it,
            # and the index writes the summary a few seconds later.
            status, body = get(f"{url}/_nixflare/reconcile", "POST", {"Authorization": f"Bearer {token}"})
            assert status == 200, body
            deadline = time.monotonic() + 60
            while get(f"{url}/_nixflare/summary.json")[0] != 200:
                assert time.monotonic() < deadline, "no summary after a reconcile step"
                time.sleep(1)
            summary = json.loads(get(f"{url}/_nixflare/summary.json")[1])
            assert summary["paths"] == 1, summary

            before = index_operations(url, token)
            started = time.monotonic()
            for _ in range(PAGE_VIEWS):
                page_view(url, data["narinfo"])
            seconds = time.monotonic() - started
            after = index_operations(url, token)
            index_per_view = (after - before) / PAGE_VIEWS
            # The control: one request that does reach the index is counted as one.
            status, body = get(f"{url}/_nixflare/missing", "POST", {"Authorization": f"Bearer {token}"},
                               json.dumps({"hashes": [data["narinfo"][:32]]}).encode())
            assert status == 200, body
            assert index_operations(url, token) - after == 1, "the index's counter missed a batch query"

            wrk(f"{url}/{data['narinfo']}", 1, 8)  # warm
            for round_no in range(1, ROUNDS + 1):
                figures["narinfo"].keep("rate", wrk(f"{url}/{data['narinfo']}", 5, 32)[0])
                figures["summary"].keep("rate", wrk(f"{url}/_nixflare/summary.json", 5, 32)[0])
                figures["page"].keep("rate", wrk(f"{url}/", 5, 32)[0])
                print(f"page: round {round_no}: done")
        finally:
            stop_worker(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    narinfo, summary, page = (figures[n].values["rate"] for n in ("narinfo", "summary", "page"))
    ratio = summary / narinfo
    shown, ok = verdict(ratio, True, 0.85)
    zero_shown, zero_ok = ("= 0: met", True) if index_per_view == 0 else ("= 0: MISSED", False)
    lines = [
        "| figure | value | baseline (narinfo read) | ratio | target |",
        "|---|---|---|---|---|",
        f"| summary.json reads (req/s) | {summary:.4g} | {narinfo:.4g} | {ratio:.2f} | {shown} |",
        f"| landing page (req/s) | {page:.4g} | {narinfo:.4g} | {page / narinfo:.2f} | — |",
        f"| index requests per page view | {index_per_view:g} | — | — | {zero_shown} |",
        "",
        f"A page view here is what a visitor's browser fetches: the page, `/public-keys`, `/_nixflare/info`, "
        f"the summary and a lookup (a narinfo GET and HEAD); {PAGE_VIEWS} of them took {seconds:.1f} s one after "
        "another. The index counted the operations it served before and after them (its own counter, read "
        "through `/_nixflare/metrics`). Workers Cache is not emulated by `wrangler dev`: every request here ran "
        "the worker.",
    ]
    print(f"page: summary {summary:.4g} req/s vs narinfo {narinfo:.4g} (ratio {ratio:.2f}, {shown}); "
          f"page {page:.4g} req/s; index requests per page view {index_per_view:g} ({zero_shown})")
    if not (ok and zero_ok):
        lines.append("\nMissed: " + ", ".join(n for n, good in (("summary reads", ok), ("zero index requests",
                                                                               zero_ok)) if not good) + ".")
    return Section("Landing page cost", "\n".join(lines))
