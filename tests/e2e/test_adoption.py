"""A bucket filled behind the worker's back, as the Nix manuals fill an S3 cache (here:
stock `nix copy --to file://`, then every file copied into local R2), then nixflare
deployed in front of it with default settings and the hourly cron left to run, days
ahead. Nothing the operator stored may go: every path still substitutes with stock Nix.
The same after the index is wiped (a new Durable Object) between passes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import CLI, Cache, Keys, Nix, Tokens, cron, list_keys, put_objects, request, run

LEAVES = 1000  # plus 100 middles and 10 tops: 1,110 paths, three levels deep

# Text files in the store (builtins.toFile), each middle naming ten leaves and each top
# ten middles: closures that reference each other, made without building anything.
PATHS_EXPR = r"""
{ salt }:
let
  leaf = i: builtins.toFile "seed-leaf-${toString i}${salt}" "leaf ${toString i} ${salt}\n";
  ten = f: from: map (i: f (from + i)) [ 0 1 2 3 4 5 6 7 8 9 ];
  middle = j: builtins.toFile "seed-middle-${toString j}${salt}"
    (builtins.concatStringsSep "\n" (ten leaf (10 * j)));
  top = k: builtins.toFile "seed-top-${toString k}${salt}"
    (builtins.concatStringsSep "\n" (ten middle (10 * k)));
in ten top 0
"""


def seeded_tops(nix: Nix, salt: str) -> list[str]:
    out = run(["nix-instantiate", "--read-write-mode", "--eval", "--strict", "--json", "-E", PATHS_EXPR,
               "--argstr", "salt", salt], env=nix.env).stdout
    return json.loads(out)


def substitute_all(nix: Nix, worker, keys: Keys, tops: list[str], store: Path) -> None:
    nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public, *tops)
    for top in tops:
        assert (store / top.lstrip("/")).exists(), top


def wipe_index(persist: Path) -> None:
    """A new Durable Object: the index's storage is gone, the bucket stays."""
    files = [f for f in (persist / "v3" / "do").rglob("*") if f.is_file() and "Index" in str(f)]
    assert files, f"no index storage under {persist}"
    for f in files:
        f.unlink()


@pytest.mark.timeout(900)
def test_a_bucket_seeded_behind_the_workers_back_loses_nothing(
        nix: Nix, keys: Keys, tokens: Tokens, tmp_path, tmp_path_factory):
    salt = "-" + str(time.time_ns())
    tops = seeded_tops(nix, salt)
    cache_dir = tmp_path / "file-cache"
    nix("copy", "--to", f"file://{cache_dir}?secret-key={keys.secret_file}&compression=zstd", *tops)
    files = [(f.relative_to(cache_dir).as_posix(), f) for f in sorted(cache_dir.rglob("*"))
             if f.is_file() and f.name != "nix-cache-info"]
    narinfos = [key for key, _ in files if key.endswith(".narinfo")]
    assert len(narinfos) >= LEAVES + 110, len(narinfos)
    persist = tmp_path_factory.mktemp("seeded-r2")
    put_objects(persist, files)
    nars = sorted(key for key, _ in files if key.startswith("nar/"))

    # Default settings: no RETAIN_DAYS, no MAX_CACHE_BYTES, 48 h grace.
    cache = Cache(persist, {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public})
    operator = tokens.mint("read,write,delete", subject="ops")
    try:
        # The hourly cron, days after the objects were stored (the index's clock).
        for days in (3, 6, 9):
            worker = cache.start(days)
            started = time.monotonic()
            stats = cron(worker, days, operator)
            assert stats["paths"] == len(narinfos), stats["paths"]
            if days == 3:
                first_lap = time.monotonic() - started
                print(f"first lap and pass over {len(narinfos)} narinfos: {first_lap:.1f} s")
            assert sorted(list_keys(persist, "nar/")) == nars, "a NAR the operator stored is gone"
        substitute_all(nix, worker, keys, tops, tmp_path / "store")

        # A new Durable Object between passes: it deletes nothing it has not seen, and
        # sees the whole bucket again.
        cache.stop()
        wipe_index(persist)
        for days in (12, 15):
            worker = cache.start(days)
            stats = cron(worker, days, operator)
            assert stats["paths"] == len(narinfos), stats["paths"]
            assert sorted(list_keys(persist, "nar/")) == nars, "a NAR the operator stored is gone"
        for key in narinfos[:20]:
            assert request(worker, "GET", "/" + key)[0] == 200, key
        substitute_all(nix, worker, keys, tops, tmp_path / "store-after-wipe")
        info = run([str(CLI), "info", "--cache", worker.url], env=dict(nix.env, NIXFLARE_TOKEN=operator)).stdout
        assert "last complete lap began" in info, info
    finally:
        cache.stop()
