"""GC benchmark: passes over 10,000 indexed paths (chains of ten, each path referencing
the one before), written straight into the local R2 with a NAR each and indexed by
`nixflare reconcile`, whose time is the baseline (one listing pass over the same
bucket). Three passes, the clock moved by restarting the worker:

- keep: every path pushed within RETAIN_DAYS, nothing goes (mark and a listing);
- sweep: from 31 days on, every narinfo goes (their NARs wait for the grace period),
  one layer of the chains per daily pass;
- orphans: 34 days on, past the grace period, every NAR goes.

For each: seconds, and index requests and R2 operations per 1,000 paths (as `nixflare
gc --json` reports them; plus one R2 HEAD per request for the token's revocation).
Without an edge-cache purge (workerd has none) each layer of a chain waits a day after
the one above, so the sweep is ten daily passes here, reported together."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import CLI_RELEASE, REPO, Section, bench_keys, nix32_of_digest, run, start_worker, stop_worker

PATHS = 10_000
CHAIN = 10


def seeded(directory: Path, count: int) -> list[tuple[str, Path]]:
    hashes = [nix32_of_digest(hashlib.sha256(f"gc seed {i}".encode()).digest())[:32] for i in range(count)]
    items = []
    for i, store_hash in enumerate(hashes):
        nar = f"gc nar {i}".encode()
        file_hash = nix32_of_digest(hashlib.sha256(nar).digest())
        references = f"{hashes[i - 1]}-gc-{i - 1}" if i % CHAIN else ""
        text = (f"StorePath: /nix/store/{store_hash}-gc-{i}\n"
                f"URL: nar/{file_hash}.nar\nCompression: none\n"
                f"FileHash: sha256:{file_hash}\nFileSize: {len(nar)}\n"
                f"NarHash: sha256:{file_hash}\nNarSize: {len(nar)}\nReferences: {references}\n")
        narinfo = directory / f"{store_hash}.narinfo"
        narinfo.write_text(text)
        nar_file = directory / f"{file_hash}.nar"
        nar_file.write_bytes(nar)
        items += [(narinfo.name, narinfo), (f"nar/{nar_file.name}", nar_file)]
    return items


def timed(cmd: list[str], env: dict) -> tuple[float, dict]:
    started = time.monotonic()
    out = run(cmd, env=env).stdout
    return time.monotonic() - started, json.loads(out)


def bench() -> Section:
    from conftest import put_objects  # the e2e tests' way into the local R2

    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-gc-"))
    try:
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"], cwd=REPO)
        k = bench_keys(work)
        persist = work / "r2"
        persist.mkdir()
        files = work / "seed"
        files.mkdir()
        put_objects(persist, seeded(files, PATHS))
        operator = run([str(CLI_RELEASE), "token", "mint", "--key", str(k["admin"]), "--subject", "bench-gc",
                        "--permissions", "read,write,delete", "--expires-in", "1d"]).stdout.strip()
        env = dict(os.environ, NIXFLARE_TOKEN=operator)
        variables = {"PUBLIC_KEYS": k["public"], "TOKEN_PUBLIC_KEYS": k["token_public"], "RETAIN_DAYS": "30",
                     "GC_GRACE_HOURS": "48"}
        gc = [str(CLI_RELEASE), "gc", "--json", "--cache"]
        results = {}
        # Without an edge-cache purge (workerd has none; neither has the cron), each layer
        # of a chain waits 25 h after the one above: the sweep takes CHAIN daily passes.
        schedule = [("keep", 0.0)] + [("sweep", 31 + 1.1 * i) for i in range(CHAIN)]
        schedule.append(("orphans", 31 + 1.1 * CHAIN + 2.5))
        for name, days in schedule:
            proc, url = start_worker(persist, dict(variables, TEST_CLOCK_OFFSET_SECONDS=str(int(days * 86400))))
            try:
                if name == "keep":
                    baseline, _ = timed([str(CLI_RELEASE), "reconcile", "--json", "--cache", url], env)
                seconds, report = timed(gc + [url], env)
            finally:
                stop_worker(proc)
            if name in results:
                before_seconds, before = results[name]
                before["passes"] += report["passes"]
                for counter in ("requests", "indexRequests", "r2Operations"):
                    before[counter] += report[counter]
                results[name] = (before_seconds + seconds, before)
            else:
                results[name] = (seconds, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, (seconds, report) in results.items():
        passes = report["passes"]
        per_k = PATHS / 1000
        r2 = report["r2Operations"] + report["requests"]
        line = (f"| {name} ({len(passes)}) | {seconds:.1f} | {seconds / baseline:.2f} | {report['requests']} | "
                f"{report['indexRequests'] / per_k:.1f} | {r2 / per_k:.1f} | "
                f"{sum(p['removedPaths'] for p in passes)} paths, {sum(p['removedObjects'] for p in passes)} objects |")
        print(f"gc: {name} pass over {PATHS} paths: {seconds:.1f} s ({seconds / baseline:.2f} x reconcile), "
              f"{report['indexRequests'] / per_k:.1f} index requests and {r2 / per_k:.1f} R2 operations per 1,000 paths")
        rows.append(line)
    body = "\n".join([
        f"{PATHS} paths (chains of {CHAIN}) with a NAR each, seeded into R2 and indexed by `nixflare reconcile` "
        f"in {baseline:.1f} s (the baseline: one pass over the same bucket). One `nixflare gc` per day; "
        "sweep: the ten daily passes (one layer of the chains each: no edge purge here) together. R2 "
        "operations include the token's revocation HEAD per request. NARs go once their grace period "
        "is over, so most go during the later daily sweep passes.",
        "",
        "| passes | seconds | ÷ reconcile | HTTP requests | index requests / 1,000 paths | "
        "R2 operations / 1,000 paths | removed |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    return Section("GC: passes over 10,000 paths", body)


if __name__ == "__main__":
    print(bench().body)
