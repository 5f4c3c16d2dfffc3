"""A GC sweep killed part-way (SIGKILL to workerd, as a crashed or evicted worker), then
the cron's lap and pass over an hour later: the lap must not adopt again a narinfo the
dead sweep had taken out of the index, the pass replays the removal as decided, and
afterwards the index claims exactly what the bucket holds. A push built on the replayed
paths then re-uploads them, and stock Nix substitutes it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, DAY, Cache, Keys, Nix, Tokens, cron, list_keys, put_objects, run, start_worker

LEAVES = 1000  # two sweep layers of 500: R2 deletes long enough to be killed in

# The leaves, and a path pushed after the replay that names every leaf: its push must
# upload again what the GC removed, which it does only if the index does not claim it.
PATHS_EXPR = r"""
{ salt }:
let
  leaves = builtins.genList
    (i: builtins.toFile "crash-leaf-${toString i}${salt}" "leaf ${toString i} ${salt}\n") LEAVES;
in { inherit leaves; late = builtins.toFile "crash-late${salt}" (builtins.concatStringsSep "\n" leaves); }
""".replace("LEAVES", str(LEAVES))


def evaluate(nix: Nix, salt: str, attr: str):
    out = run(["nix-instantiate", "--read-write-mode", "--eval", "--strict", "--json", "-E", PATHS_EXPR,
               "--argstr", "salt", salt, "-A", attr], env=nix.env).stdout
    return json.loads(out)


def index_db(persist: Path) -> Path:
    """The index's SQLite file, as workerd keeps the Durable Object's storage on disk."""
    files = [f for f in (persist / "v3" / "do").rglob("*.sqlite") if "Index" in str(f) and f.name != "metadata.sqlite"]
    assert len(files) == 1, files
    return files[0]


def pending_hashes(persist: Path) -> set[str]:
    """Paths a sweep took out of the index and has not yet seen deleted from R2."""
    with contextlib.closing(sqlite3.connect(index_db(persist))) as db:
        return {row[0] for row in db.execute("SELECT hash FROM gc_pending")}


def narinfo_hashes(persist: Path) -> set[str]:
    return {key[:32] for key in list_keys(persist) if key.endswith(".narinfo")}


def kill_at_first_pending_layer(persist: Path, variables: dict, nix: Nix, token: str) -> None:
    """Starts the worker, runs `nixflare gc`, and SIGKILLs workerd the moment the index
    has handed out a layer (committed to its storage), racing R2's delete of it."""
    proc, url = start_worker(persist, variables)
    gc = subprocess.Popen([str(CLI), "gc", "--cache", url], env=dict(nix.env, NIXFLARE_TOKEN=token),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index_db(persist)}?mode=ro", uri=True)) as db:
            deadline = time.monotonic() + 120
            while db.execute("SELECT COUNT(*) FROM gc_pending").fetchone()[0] == 0:
                assert gc.poll() is None, "the GC finished without a layer pending"
                assert time.monotonic() < deadline, "no layer handed out"
                time.sleep(0.0005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        gc.kill()
        gc.wait()


@pytest.mark.timeout(900)
def test_a_sweep_killed_part_way_is_replayed_and_the_index_stays_true(
        nix: Nix, keys: Keys, tokens: Tokens, tmp_path, tmp_path_factory):
    salt = "-" + str(time.time_ns())
    leaves = evaluate(nix, salt, "leaves")
    cache_dir = tmp_path / "file-cache"
    nix("copy", "--to", f"file://{cache_dir}?secret-key={keys.secret_file}&compression=zstd", *leaves)
    files = [(f.relative_to(cache_dir).as_posix(), f) for f in sorted(cache_dir.rglob("*"))
             if f.is_file() and f.name != "nix-cache-info"]
    seeded = tmp_path_factory.mktemp("crash-seed")
    put_objects(seeded, files)
    operator = tokens.mint("read,write,delete", subject="ops")
    base = {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public}
    expiring = dict(base, RETAIN_DAYS="1")

    # Day 0: the cron adopts every leaf (pushed now, to the index's clock).
    cache = Cache(seeded, expiring)
    try:
        stats = cron(cache.start(0), 0, operator)
        assert stats["paths"] == LEAVES, stats["paths"]
    finally:
        cache.stop()

    # Day 3: every leaf has expired. `nixflare gc`, killed as the first layer is handed
    # out. R2's delete of 500 keys may win the race: try again from the same start.
    for attempt in range(6):
        persist = tmp_path_factory.mktemp(f"crash-r2-{attempt}")
        shutil.copytree(seeded, persist, dirs_exist_ok=True)
        variables = dict(expiring, TEST_CLOCK_OFFSET_SECONDS=str(3 * DAY))
        kill_at_first_pending_layer(persist, variables, nix, operator)
        pending = pending_hashes(persist)
        still_in_r2 = pending & narinfo_hashes(persist)
        if still_in_r2:
            break
    else:
        pytest.fail("no kill left a pending layer's narinfo in R2")
    print(f"killed with {len(pending)} paths pending, {len(still_in_r2)} of their narinfos still in R2"
          f" (attempt {attempt + 1})")

    # Over an hour later, retention switched off: the lap must not adopt the pending
    # narinfos again, and the pass replays their removal, decided under RETAIN_DAYS=1.
    cache = Cache(persist, base)
    try:
        worker = cache.start(3 + 2 / 24)
        stats = cron(worker, 3 + 2 / 24, operator)
        assert not pending_hashes(persist), "the removal was not replayed"
        in_r2 = narinfo_hashes(persist)
        assert not (in_r2 & still_in_r2), "a pending narinfo survived its replayed removal"
        assert stats["paths"] == len(in_r2), (stats["paths"], len(in_r2))

        # A path naming every leaf: the push uploads what the GC removed again (the
        # index does not claim it), and stock Nix substitutes the whole closure.
        late = evaluate(nix, salt, "late")
        run([str(CLI), "push", "--cache", worker.url, "--key", str(keys.secret_file),
             "--spool-dir", str(tmp_path / "spool"), late], env=dict(nix.env, NIXFLARE_TOKEN=operator))
        assert narinfo_hashes(persist) >= {Path(p).name[:32] for p in leaves}, "a leaf is missing after the push"
        store = tmp_path / "store"
        nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public, late)
        assert (store / late.lstrip("/")).exists()
    finally:
        cache.stop()
