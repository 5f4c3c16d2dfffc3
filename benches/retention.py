"""GC benchmark: passes over 10,000 indexed paths (chains of ten, each path referencing
the one before), written straight into the local R2 with a NAR each and indexed by
`nixflare reconcile`, whose time is the baseline (one listing pass over the same
bucket). Three passes, the clock moved by restarting the worker:

- keep: every path pushed within RETAIN_DAYS, nothing goes (mark and a listing);
- sweep: 31 days on, every narinfo goes (their NARs wait for the grace period);
- orphans: 34 days on, past the grace period, every NAR goes.

For each: seconds, and index requests and R2 operations per 1,000 paths (as `nixflare
gc --json` reports them; plus one R2 HEAD per request for the token's revocation)."""

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
        for name, days in [("keep", 0), ("sweep", 31), ("orphans", 34)]:
            proc, url = start_worker(persist, dict(variables, TEST_CLOCK_OFFSET_SECONDS=str(days * 86400)))
            try:
                if name == "keep":
                    baseline, _ = timed([str(CLI_RELEASE), "reconcile", "--json", "--cache", url], env)
                results[name] = timed(gc + [url], env)
            finally:
                stop_worker(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, (seconds, report) in results.items():
        passes = report["passes"]
        per_k = PATHS / 1000
        r2 = report["r2Operations"] + report["requests"]
        line = (f"| {name} | {seconds:.1f} | {seconds / baseline:.2f} | {report['requests']} | "
                f"{report['indexRequests'] / per_k:.1f} | {r2 / per_k:.1f} | "
                f"{sum(p['removedPaths'] for p in passes)} paths, {sum(p['removedObjects'] for p in passes)} objects |")
        print(f"gc: {name} pass over {PATHS} paths: {seconds:.1f} s ({seconds / baseline:.2f} x reconcile), "
              f"{report['indexRequests'] / per_k:.1f} index requests and {r2 / per_k:.1f} R2 operations per 1,000 paths")
        rows.append(line)
    body = "\n".join([
        f"{PATHS} paths (chains of {CHAIN}) with a NAR each, seeded into R2 and indexed by `nixflare reconcile` "
        f"in {baseline:.1f} s (the baseline: one pass over the same bucket). One `nixflare gc` each; R2 "
        "operations include the token's revocation HEAD per request.",
        "",
        "| pass | seconds | ÷ reconcile | HTTP requests | index requests / 1,000 paths | "
        "R2 operations / 1,000 paths | removed |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    return Section("GC: passes over 10,000 paths", body)


if __name__ == "__main__":
    print(bench().body)
