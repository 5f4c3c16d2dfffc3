"""Index benchmarks, each against its baseline in the same invocation:

- no-op push: `nixflare push` of a closure the cache already holds (2,001 paths made
  cheaply with `builtins.toFile`), asking with one HEAD per path (what a cache without
  the index needs; `--per-path-queries`) against batch queries (`/_nixflare/missing`,
  1,000 paths a request). Alternating rounds, medians.
- reconcile: 10,000 narinfos written straight into the local R2 (as `nix copy --to
  s3://` would leave them), indexed by `nixflare reconcile`; seconds per 10,000 paths,
  and the index's size, from which the size per million paths is extrapolated."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import (CLI_RELEASE, REPO, Section, bench_keys, nix32_of_digest, nix_env, run, start_worker,
                    stop_worker)

NOOP_PATHS = 2000
ROUNDS = 3
SEEDED_PATHS = 10_000

TOFILE_EXPR = r"""
{ salt, n }:
let
  leaves = builtins.genList (i: builtins.toFile "noop-${salt}-${toString i}" "leaf ${toString i}\n") (builtins.fromJSON n);
in builtins.toFile "noop-${salt}-root" (builtins.concatStringsSep "\n" leaves)
"""


def noop_push(work: Path, k: dict) -> tuple[int, list[float], list[float]]:
    env = nix_env(work / "home")
    root = run(["nix-instantiate", "--eval", "--read-write-mode", "-E", TOFILE_EXPR, "--argstr", "salt",
                os.urandom(6).hex(), "--argstr", "n", str(NOOP_PATHS)], env=env).stdout.strip().strip('"')
    persist = work / "r2-noop"
    persist.mkdir()
    proc, url = start_worker(persist, {"PUBLIC_KEYS": k["public"], "TOKEN_PUBLIC_KEYS": k["token_public"]})
    push_env = dict(env, NIXFLARE_TOKEN=k["token"])

    def push(*extra: str) -> float:
        started = time.monotonic()
        run([str(CLI_RELEASE), "push", "--quiet", "--cache", url, "--key", str(k["secret_file"]),
             "--spool-dir", str(work / "spool"), *extra, root], env=push_env)
        return time.monotonic() - started

    try:
        first = push()
        print(f"index: first push of {NOOP_PATHS + 1} paths took {first:.1f} s")
        per_path, batch = [], []
        for _ in range(ROUNDS):
            per_path.append(push("--per-path-queries"))
            batch.append(push())
    finally:
        stop_worker(proc)
    return NOOP_PATHS + 1, per_path, batch


def seeded_narinfos(directory: Path, count: int) -> list[tuple[str, Path]]:
    """Narinfos of made-up paths, each pointing at a made-up NAR: the reconcile pass
    indexes what parses, it does not fetch NARs."""
    items = []
    for i in range(count):
        digest = hashlib.sha256(f"seed {i}".encode()).digest()
        store_hash = nix32_of_digest(digest)[:32]
        file_hash = nix32_of_digest(hashlib.sha256(f"nar {i}".encode()).digest())
        text = (f"StorePath: /nix/store/{store_hash}-seeded-{i}\n"
                f"URL: nar/{file_hash}.nar.zst\nCompression: zstd\n"
                f"FileHash: sha256:{file_hash}\nFileSize: {1000 + i}\n"
                f"NarHash: sha256:{file_hash}\nNarSize: {2000 + i}\nReferences: \n")
        path = directory / f"{store_hash}.narinfo"
        path.write_text(text)
        items.append((path.name, path))
    return items


def reconcile(work: Path, k: dict) -> tuple[float, dict, dict]:
    from conftest import put_objects  # the e2e tests' way into the local R2

    persist = work / "r2-seeded"
    persist.mkdir()
    files = work / "narinfos"
    files.mkdir()
    put_objects(persist, seeded_narinfos(files, SEEDED_PATHS))
    proc, url = start_worker(persist, {"PUBLIC_KEYS": k["public"], "TOKEN_PUBLIC_KEYS": k["token_public"],
                                       "TEST_CLOCK_OFFSET_SECONDS": "3600"})
    env = dict(os.environ, NIXFLARE_TOKEN=k["token"])
    try:
        started = time.monotonic()
        out = run([str(CLI_RELEASE), "reconcile", "--json", "--cache", url], env=env).stdout
        seconds = time.monotonic() - started
        stats = json.loads(run([str(CLI_RELEASE), "info", "--json", "--cache", url], env=env).stdout)
    finally:
        stop_worker(proc)
    return seconds, json.loads(out), stats


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-index-"))
    try:
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"], cwd=REPO)
        k = bench_keys(work)
        paths, per_path, batch = noop_push(work, k)
        seconds, step, stats = reconcile(work, k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    before, after = statistics.median(per_path), statistics.median(batch)
    print(f"index: no-op push of {paths} paths: per-path HEADs {before:.2f} s, batch queries {after:.2f} s "
          f"(batch / per-path = {after / before:.2f})")
    per_million = stats["indexBytes"] / stats["paths"] * 1e6 if stats["paths"] else float("nan")
    print(f"index: reconcile of {SEEDED_PATHS} seeded narinfos: {seconds:.1f} s, indexed {step['indexed']}; "
          f"index {stats['indexBytes'] / 2**20:.1f} MiB ({per_million / 2**30:.2f} GiB per million paths)")
    body = "\n".join([
        f"No-op push of an already-cached closure of {paths} paths (`builtins.toFile`), "
        f"{ROUNDS} alternating rounds each, medians:",
        "",
        "| how the CLI asks | seconds (each round) | median | ratio to per-path |",
        "|---|---|---|---|",
        f"| one HEAD per path (`--per-path-queries`, before the index) | "
        f"{', '.join(f'{s:.2f}' for s in per_path)} | {before:.2f} | 1.00 |",
        f"| batch queries (`/_nixflare/missing`) | {', '.join(f'{s:.2f}' for s in batch)} | {after:.2f} | "
        f"{after / before:.2f} |",
        "",
        f"Reconcile of {SEEDED_PATHS} narinfos written straight into R2: {seconds:.1f} s "
        f"({step['indexed']} indexed, {step['unreadable']} unreadable); the index then held "
        f"{stats['paths']} paths in {stats['indexBytes'] / 2**20:.1f} MiB, about "
        f"{per_million / 2**30:.2f} GiB per million paths (no references; each reference adds a row).",
    ])
    return Section("Index: no-op push and reconcile", body)


if __name__ == "__main__":
    print(bench().body)
