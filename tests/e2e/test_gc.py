"""Retention and garbage collection through workerd with real Nix and an injected clock
(TEST_CLOCK_OFFSET_SECONDS, changed by restarting the worker on the same storage):
roots that age out, pins that hold and move, closures kept whole, removed paths 404 at
once and their NARs only after the grace period, orphans, pushes that race a pass, and
the size budget."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import (CLI, DAY, MK, Keys, Nix, Tokens, Worker, bearer, field, list_keys, nix32_sha256, request,
                      run)

# Four closures that share one path: top-X -> own-X, top-X -> shared.
CLOSURES_EXPR = r"""
{ salt }:
let
""" + MK + r"""
  shared = mk "gc-shared${salt}" "echo shared > $out";
  own = n: mk "gc-own-${n}${salt}" "echo ${n} > $out";
  top = n: mk "gc-top-${n}${salt}" "mkdir $out; echo ${shared} > $out/shared; echo ${own n} > $out/own";
  # A later path that references an old closure's own path only.
  late = mk "gc-late${salt}" "echo ${own "c"} > $out";
in { a = top "a"; b = top "b"; c = top "c"; d = top "d"; e = top "e"; f = top "f"; inherit late; }
"""


def build(nix: Nix, salt: str, attr: str) -> str:
    return run(["nix-build", "--no-out-link", "-E", CLOSURES_EXPR, "--argstr", "salt", salt, "-A", attr],
               env=nix.env).stdout.strip()


def closure(nix: Nix, top: str) -> list[str]:
    return nix.store("--query", "--requisites", top).stdout.split()


def named(paths: list[str], part: str) -> str:
    return next(p for p in paths if Path(p).name[33:].startswith(part))


def hash_of(path: str) -> str:
    return Path(path).name[:32]


def cli(nix: Nix, worker: Worker, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(CLI), *args, "--cache", worker.url], env=dict(nix.env, NIXFLARE_TOKEN=token), check=check)


def push(nix: Nix, worker: Worker, keys: Keys, token: str, spool: Path, *paths: str) -> subprocess.CompletedProcess:
    return run([str(CLI), "push", "--cache", worker.url, "--key", str(keys.secret_file), "--spool-dir", str(spool),
                *paths], env=dict(nix.env, NIXFLARE_TOKEN=token))


def gc(nix: Nix, worker: Worker, token: str) -> list[dict]:
    """The passes `nixflare gc` finished: the one under way, if any, then a new one."""
    return json.loads(cli(nix, worker, token, "gc", "--json").stdout)["passes"]


def total(passes: list[dict], field_name: str) -> int:
    return sum(p[field_name] for p in passes)


def narinfo_status(worker: Worker, path: str) -> int:
    return request(worker, "GET", f"/{hash_of(path)}.narinfo")[0]


def nar_key(worker: Worker, path: str) -> str:
    status, _, body = request(worker, "GET", f"/{hash_of(path)}.narinfo")
    assert status == 200, (path, status)
    return field(body.decode(), "URL")


def substitute(nix: Nix, worker: Worker, keys: Keys, top: str, store: Path) -> None:
    nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public, top)
    assert (store / top.lstrip("/")).exists()


def test_retention_pins_grace_and_races(nix: Nix, keys: Keys, tokens: Tokens, make_cache, tmp_path):
    salt = "-" + os.urandom(6).hex()
    tops = {x: build(nix, salt, x) for x in "abcdef"}
    late = build(nix, salt, "late")
    paths = {x: closure(nix, top) for x, top in tops.items()}
    shared = named(paths["a"], "gc-shared")
    own = {x: named(paths[x], f"gc-own-{x}") for x in tops}
    writer = tokens.mint("read,write", subject="ci")
    operator = tokens.mint("read,write,delete,pin", subject="ops")
    spool = tmp_path / "spool"
    cache = make_cache(RETAIN_DAYS="30", GC_GRACE_HOURS="48")

    # Day 0: A, B, C pushed with nixflare; D with stock Nix (a .ls too); B pinned; a NAR
    # uploaded with no narinfo (an upload in flight, or abandoned).
    worker = cache.start(0)
    push(nix, worker, keys, writer, spool, tops["a"], tops["b"], tops["c"])
    nix("copy", "--to", f"{worker.url}?secret-key={keys.secret_file}&compression=zstd&write-nar-listing=true",
        "--option", "netrc-file", str(netrc(tmp_path, worker, writer)), tops["d"])
    assert request(worker, "GET", f"/{hash_of(tops['d'])}.ls")[0] == 200
    stray = b"not a nar anyone references" + os.urandom(8)
    stray_key = f"nar/{nix32_sha256(stray)}.nar"
    assert request(worker, "PUT", "/" + stray_key, bearer(writer), stray)[0] == 201
    # Side files of C: its build log and its NAR listing (as stock Nix writes it), and a
    # log uploaded on its own, for a derivation no path here names.
    _, _, c_info = request(worker, "GET", f"/{hash_of(tops['c'])}.narinfo")
    c_log = "log/" + field(c_info.decode(), "Deriver")
    standalone_log = "log/" + "0" * 32 + "-standalone.drv"
    for key in (c_log, standalone_log):
        assert request(worker, "PUT", "/" + key, bearer(writer), b"build output\n")[0] == 201
    listing_cache = tmp_path / "listing-cache"
    nix("copy", "--to", f"file://{listing_cache}?compression=none&write-nar-listing=true", tops["c"])
    c_listing = f"{hash_of(tops['c'])}.ls"
    assert request(worker, "PUT", "/" + c_listing, bearer(writer), (listing_cache / c_listing).read_bytes())[0] == 201
    denied = cli(nix, worker, writer, "pin", "add", "keep", tops["b"], check=False)
    assert denied.returncode != 0 and "pin permission" in denied.stderr, denied.stderr
    cli(nix, worker, operator, "pin", "add", "keep", tops["b"])
    assert "keep" in cli(nix, worker, operator, "pin", "list").stdout
    # Nothing is old yet, and a young orphan is an upload in flight: a pass removes nothing.
    first = gc(nix, worker, operator)
    assert len(first) == 1 and total(first, "removedPaths") == 0 and total(first, "removedObjects") == 0, first
    assert stray_key in list_keys(cache.persist, "nar/")

    # Day 20: A is pushed again (every path already there: nothing uploaded).
    worker = cache.start(20)
    again = push(nix, worker, keys, writer, spool, tops["a"])
    assert "nothing to push" in again.stderr, again.stderr

    # Day 40: A (pushed 20 days ago) and B (pinned) stay; C and D are past RETAIN_DAYS.
    worker = cache.start(40)
    plan = json.loads(cli(nix, worker, operator, "gc", "--dry-run", "--json").stdout)
    planned = {c["storePath"]: c["rule"] for c in plan["plan"]["paths"]}
    doomed = {tops["c"], own["c"], tops["d"], own["d"]}
    assert set(planned) == {Path(p).name for p in doomed}, planned
    assert set(planned.values()) == {"retention"}
    assert all(narinfo_status(worker, p) == 200 for p in doomed), "a dry run removed something"
    for args in (["gc"], ["gc", "--dry-run"]):
        denied = cli(nix, worker, writer, *args, check=False)
        assert denied.returncode != 0 and "delete permission" in denied.stderr, denied.stderr
    # Between that mark and the sweep: D is pushed again, and a new path starts to
    # reference C's own path (stock Nix: it finds own-c there and uploads only the new one).
    push(nix, worker, keys, writer, spool, tops["d"])
    nix("copy", "--to", f"{worker.url}?secret-key={keys.secret_file}&compression=zstd",
        "--option", "netrc-file", str(netrc(tmp_path, worker, writer)), late)
    nars = {p: nar_key(worker, p) for p in doomed}
    swept = gc(nix, worker, operator)
    # The dry run's pass sweeps first: top-c goes; what the push and the new reference
    # saved is counted as spared. The new pass after it finds nothing more.
    assert len(swept) == 2, swept
    assert swept[0]["removedPaths"] == 1 and swept[0]["sparedPaths"] == 3, swept[0]
    assert swept[1]["removedPaths"] == 0, swept[1]
    assert narinfo_status(worker, tops["c"]) == 404
    for kept in [*paths["a"], *paths["b"], *paths["d"], own["c"], late]:
        assert narinfo_status(worker, kept) == 200, kept
    # The stray NAR, 40 days old to the cache's clock, is known unused from now on: it
    # goes a grace period later (the index cannot know whether a narinfo named it
    # before it began to remember).
    assert stray_key in list_keys(cache.persist, "nar/")
    # Every kept closure substitutes whole into an empty store, with stock Nix.
    for i, top in enumerate([tops["a"], tops["b"], tops["d"], late]):
        substitute(nix, worker, keys, top, tmp_path / f"store-{i}")
    # The removed path's NAR outlives its narinfo by the grace period.
    assert nars[tops["c"]] in list_keys(cache.persist, "nar/")
    assert request(worker, "GET", "/" + c_log)[0] == 200 and request(worker, "GET", "/" + c_listing)[0] == 200

    # Day 41: within the grace period, the hourly cron runs a pass: the NAR stays.
    worker = cache.start(41)
    assert request(worker, "GET", "/__scheduled?cron=17+*+*+*+*")[0] == 200
    state = json.loads(cli(nix, worker, operator, "gc", "--dry-run", "--json").stdout)
    assert state["run"]["run"] >= 4, state
    assert nars[tops["c"]] in list_keys(cache.persist, "nar/")

    # Day 43: past the grace period the NAR goes. The pin moves from B to A: B's own
    # paths go (shared stays, A reaches it).
    worker = cache.start(43)
    cli(nix, worker, operator, "pin", "add", "keep", tops["a"])
    pins = json.loads(cli(nix, worker, writer, "pin", "list", "--json").stdout)["pins"]
    assert [(p["name"], p["storePath"]) for p in pins] == [("keep", Path(tops["a"]).name)]
    done = gc(nix, worker, operator)
    assert total(done, "removedObjects") >= 1, done
    left = list_keys(cache.persist, "nar/")
    assert nars[tops["c"]] not in left
    assert stray_key not in left
    # C's log and listing went with its NAR; a log nothing removed named stays.
    assert request(worker, "GET", "/" + c_log)[0] == 404
    assert request(worker, "GET", "/" + c_listing)[0] == 404
    assert request(worker, "GET", "/" + standalone_log)[0] == 200
    # top-b goes; own-b waits a day, since the edge cache (which workerd does not purge)
    # may still serve top-b's narinfo to a client that would then ask for own-b.
    assert narinfo_status(worker, tops["b"]) == 404
    assert narinfo_status(worker, own["b"]) == 200
    assert done[-1]["heldPaths"] == 1, done
    for kept in [*paths["a"], shared]:
        assert narinfo_status(worker, kept) == 200, kept
    substitute(nix, worker, keys, tops["a"], tmp_path / "store-after-move")

    # Day 44.5: the hold is over.
    worker = cache.start(44.5)
    gc(nix, worker, operator)
    assert narinfo_status(worker, own["b"]) == 404
    for kept in [*paths["a"], shared]:
        assert narinfo_status(worker, kept) == 200, kept


def netrc(tmp_path: Path, worker: Worker, token: str) -> Path:
    path = tmp_path / f"netrc-{worker.port}"
    path.write_text(f"machine {worker.host} login nixflare password {token}\n")
    return path


def test_a_push_racing_a_pass_loses_nothing(nix: Nix, keys: Keys, tokens: Tokens, make_cache, tmp_path):
    """A push that lands between a pass's mark and its sweep: the steps are driven by
    hand, so the interleaving is the same every run."""
    salt = "-" + os.urandom(6).hex()
    old, new = build(nix, salt, "a"), build(nix, salt, "b")
    shared = named(closure(nix, old), "gc-shared")
    writer = tokens.mint("read,write", subject="ci")
    operator = tokens.mint("read,write,delete", subject="ops")
    cache = make_cache(RETAIN_DAYS="1", GC_GRACE_HOURS="25")
    worker = cache.start(0)
    push(nix, worker, keys, writer, tmp_path / "spool", old)
    # Two days on, `old` is garbage. A dry run marks: the whole of `old` is doomed.
    worker = cache.start(2)
    plan = json.loads(cli(nix, worker, operator, "gc", "--dry-run", "--json").stdout)
    assert {c["storePath"] for c in plan["plan"]["paths"]} == {Path(p).name for p in closure(nix, old)}
    # Now `new`, which shares `shared`, is pushed: the push renews `shared` (it asks the
    # cache, finds it there, and names it again as a root).
    push(nix, worker, keys, writer, tmp_path / "spool", new)
    # The pass marked before the push sweeps: top-a goes, `shared` is spared.
    passes = gc(nix, worker, operator)
    marked = passes[0]
    assert marked["run"] == plan["run"]["run"], passes
    assert marked["removedPaths"] == 1 and marked["sparedPaths"] >= 1, marked
    assert narinfo_status(worker, old) == 404
    for path in closure(nix, new):
        assert narinfo_status(worker, path) == 200, path
    substitute(nix, worker, keys, new, tmp_path / "store")
    # Later passes still keep `new` whole (`shared` is its, and young).
    worker = cache.start(2.5)
    gc(nix, worker, operator)
    assert narinfo_status(worker, shared) == 200
    substitute(nix, worker, keys, new, tmp_path / "store-again")


def test_the_size_budget_drops_the_oldest_roots_first(nix: Nix, keys: Keys, tokens: Tokens, make_cache, tmp_path):
    salt = "-" + os.urandom(6).hex()
    tops = [build(nix, salt, x) for x in "abc"]
    writer = tokens.mint("read,write", subject="ci")
    operator = tokens.mint("read,write,delete,pin", subject="ops")
    cache = make_cache()
    # Pushed a day apart: a oldest, c newest.
    for day, top in enumerate(tops):
        worker = cache.start(day)
        push(nix, worker, keys, writer, tmp_path / "spool", top)
    sizes = {}
    for top in tops:
        for path in closure(nix, top):
            _, _, body = request(worker, "GET", f"/{hash_of(path)}.narinfo")
            sizes[path] = int(field(body.decode(), "FileSize"))
    newest_two = set(closure(nix, tops[1])) | set(closure(nix, tops[2]))
    budget = sum(sizes[p] for p in newest_two)
    # No RETAIN_DAYS: only the budget removes anything. Exactly the two newest closures fit.
    cache.variables["MAX_CACHE_BYTES"] = str(budget)
    worker = cache.start(3)
    plan = json.loads(cli(nix, worker, operator, "gc", "--dry-run", "--json").stdout)
    oldest_only = set(closure(nix, tops[0])) - newest_two
    assert {c["storePath"] for c in plan["plan"]["paths"]} == {Path(p).name for p in oldest_only}
    assert {c["rule"] for c in plan["plan"]["paths"]} == {"budget"}
    assert plan["run"]["keptBytes"] == budget and not plan["run"]["overBudget"], plan["run"]
    # The top goes at once, the path below it a day later (edge copies of the top).
    done = gc(nix, worker, operator)
    assert total(done, "removedPaths") == 1 and narinfo_status(worker, tops[0]) == 404, done
    worker = cache.start(4.2)
    done = gc(nix, worker, operator)
    assert total(done, "removedPaths") == len(oldest_only) - 1, done
    for path in oldest_only:
        assert narinfo_status(worker, path) == 404, path
    for path in newest_two:
        assert narinfo_status(worker, path) == 200, path
    # A pin keeps an older root's closure whatever the budget: pinned first, then the
    # newest roots that still fit.
    cache.variables["MAX_CACHE_BYTES"] = str(sum(sizes[p] for p in closure(nix, tops[2])))
    worker = cache.start(5)
    cli(nix, worker, operator, "pin", "add", "keep", tops[1])
    gc(nix, worker, operator)
    for path in closure(nix, tops[1]):
        assert narinfo_status(worker, path) == 200, path
    substitute(nix, worker, keys, tops[1], tmp_path / "store")


def test_bad_retention_requests_are_refused_and_change_nothing(nix: Nix, worker: Worker, tokens: Tokens):
    operator = tokens.mint("read,write,delete,pin", subject="ops")
    reader = tokens.mint("read", subject="reader")
    absent = "0" * 32 + "-never-pushed"

    def pins() -> list:
        status, _, body = request(worker, "GET", "/_nixflare/pins", bearer(operator))
        assert status == 200
        return json.loads(body)["pins"]

    before = pins()
    for body, status, reason in [
        (b"not json", 400, "must be"),
        (json.dumps({"storePath": absent, "keepDays": 0}).encode(), 400, "keepDays"),
        (json.dumps({"storePath": "not a store path"}).encode(), 400, "must be"),
        (json.dumps({"storePath": absent}).encode(), 404, "push it first"),
    ]:
        got, _, answer = request(worker, "PUT", "/_nixflare/pins/release", bearer(operator), body)
        assert (got, reason in answer.decode()) == (status, True), answer
    assert request(worker, "PUT", "/_nixflare/pins/release", bearer(reader),
                   json.dumps({"storePath": absent}).encode())[0] == 403
    assert request(worker, "PUT", "/_nixflare/pins/release", None, b"{}")[0] == 401
    assert request(worker, "PUT", "/_nixflare/pins/.hidden", bearer(operator), b"{}")[0] == 404
    assert request(worker, "GET", "/_nixflare/pins/release", bearer(operator))[0] == 405
    status, _, answer = request(worker, "DELETE", "/_nixflare/pins/nothing-here", bearer(operator))
    assert status == 404 and b"no pin named" in answer
    assert pins() == before

    # JSON that means two things, or nests without end: refused, naming why.
    for body, reason in [
        (b'{"storePath": "0000", "storePath": "1111"}', b"twice"),
        (b"[" * 300 + b"]" * 300, b"deeper"),
        (b"5", b"invalid type"),
    ]:
        got, _, answer = request(worker, "PUT", "/_nixflare/pins/release", bearer(operator), body)
        assert got == 400 and reason in answer and b"Reflect" not in answer, answer
    got, _, answer = request(worker, "POST", "/_nixflare/roots", bearer(operator),
                             b'{"hashes": [], "hashes": ["' + b"0" * 32 + b'"]}')
    assert got == 400 and b"twice" in answer, answer
    got, _, answer = request(worker, "POST", "/_nixflare/gc", bearer(operator), b'{"startUpTo": 1.5}')
    assert got == 400 and b"whole number" in answer, answer

    too_many = json.dumps({"hashes": ["0" * 32] * 1001}).encode()
    assert request(worker, "POST", "/_nixflare/roots", bearer(operator), too_many)[0] == 413
    assert request(worker, "POST", "/_nixflare/roots", bearer(operator), b"[]")[0] == 400
    assert request(worker, "POST", "/_nixflare/roots", bearer(reader), b'{"hashes": []}')[0] == 403
    status, _, answer = request(worker, "POST", "/_nixflare/roots", bearer(operator),
                                json.dumps({"hashes": ["0" * 32]}).encode())
    assert status == 200 and json.loads(answer) == {"refreshed": 0, "missing": ["0" * 32]}

    def gc_state():
        status, _, body = request(worker, "GET", "/_nixflare/stats", bearer(operator))
        assert status == 200
        return json.loads(body).get("gc")

    state = gc_state()
    assert request(worker, "POST", "/_nixflare/gc", bearer(operator), b"{")[0] == 400
    assert request(worker, "POST", "/_nixflare/gc", bearer(reader), b'{"startUpTo": 1}')[0] == 403
    assert request(worker, "GET", "/_nixflare/gc", bearer(reader))[0] == 403
    assert request(worker, "DELETE", "/_nixflare/gc", bearer(operator))[0] == 405
    assert gc_state() == state


def test_names_pins_and_deletes_are_exact(nix: Nix, keys: Keys, tokens: Tokens, make_cache, tmp_path):
    """A read-only token learns no names; a pin names a path exactly and keeps it from
    DELETE; a misnamed pin is refused."""
    salt = "-" + os.urandom(6).hex()
    top = build(nix, salt, "a")
    writer = tokens.mint("read,write", subject="ci-writer")
    operator = tokens.mint("read,write,delete,pin", subject="ops")
    reader = tokens.mint("read", subject="reader")
    cache = make_cache()
    worker = cache.start(0)
    push(nix, worker, keys, writer, tmp_path / "spool", top)
    cli(nix, worker, operator, "pin", "add", "release", top)

    def stats(token: str) -> dict:
        status, _, body = request(worker, "GET", "/_nixflare/stats", bearer(token))
        assert status == 200, body
        return json.loads(body)

    def pins(token: str) -> list:
        status, _, body = request(worker, "GET", "/_nixflare/pins", bearer(token))
        assert status == 200, body
        return json.loads(body)["pins"]

    assert {p["subject"] for p in stats(writer)["recent"]} == {"ci-writer"}
    assert [p["subject"] for p in pins(writer)] == ["ops"]
    # The same answers to a read-only token, without who.
    seen = stats(reader)
    assert seen["paths"] == stats(writer)["paths"]
    assert all(p["subject"] is None and p["tokenId"] is None for p in seen["recent"]), seen["recent"]
    assert [(p["name"], p["subject"]) for p in pins(reader)] == [("release", None)]

    # A pin under another name for the same hash: refused, nothing changes.
    name = Path(top).name
    misnamed = name[:33] + "invented"
    status, _, body = request(worker, "PUT", "/_nixflare/pins/other", bearer(operator),
                              json.dumps({"storePath": misnamed}).encode())
    assert status == 404 and b"not in the cache" in body, body
    assert [p["name"] for p in pins(operator)] == ["release"]
    # A pinned path cannot be deleted until its pin goes.
    status, _, body = request(worker, "DELETE", f"/{hash_of(top)}.narinfo", bearer(operator))
    assert status == 409 and b"pinned by release" in body, body
    assert narinfo_status(worker, top) == 200
    cli(nix, worker, operator, "pin", "remove", "release")
    status, _, body = request(worker, "DELETE", f"/{hash_of(top)}.narinfo", bearer(operator))
    assert status == 204, body
    assert narinfo_status(worker, top) == 404
