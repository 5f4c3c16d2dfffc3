"""The index of what the cache holds (a Durable Object under workerd): closure-complete
publishing, upstream caches, batch "what's missing" queries, stats, deletes that keep
closures whole, and the reconcile pass over a bucket written behind the worker's back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (CLI, field, MK, Closure, Keys, Nix, Tokens, Worker, bearer, build_closure, delete_object,
                      free_port, put_objects, request, run, running_worker)


def file_cache(nix: Nix, keys: Keys, top: str, directory: Path) -> Path:
    """A binary cache written by stock Nix (signed, zstd)."""
    nix("copy", "--to", f"file://{directory}?secret-key={keys.secret_file}&compression=zstd", top)
    return directory


def narinfo_text(cache: Path, store_path: str) -> str:
    return (cache / f"{Path(store_path).name[:32]}.narinfo").read_text()


def publish(worker: Worker, cache: Path, store_path: str, token: str) -> tuple[int, bytes]:
    """PUTs the path's NAR, then its narinfo; the narinfo's status and body."""
    text = narinfo_text(cache, store_path)
    url = field(text, "URL")
    assert request(worker, "PUT", "/" + url, bearer(token), (cache / url).read_bytes())[0] in (200, 201)
    status, _, body = request(worker, "PUT", f"/{Path(store_path).name[:32]}.narinfo", bearer(token), text.encode())
    return status, body


def hash_of(store_path: str) -> str:
    return Path(store_path).name[:32]


def query(worker: Worker, token: str, paths) -> dict:
    body = json.dumps({"hashes": [hash_of(p) for p in paths]}).encode()
    status, _, answer = request(worker, "POST", "/_nixflare/missing", bearer(token), body)
    assert status == 200, answer
    return json.loads(answer)


def missing(worker: Worker, token: str, paths) -> set[str]:
    return set(query(worker, token, paths)["missing"])


def stats(worker: Worker, token: str, nix: Nix) -> dict:
    """Through the CLI, as an operator reads them."""
    out = run([str(CLI), "info", "--json", "--cache", worker.url], env=dict(nix.env, NIXFLARE_TOKEN=token)).stdout
    return json.loads(out)


def narinfo_status(worker: Worker, store_path: str) -> int:
    return request(worker, "GET", f"/{hash_of(store_path)}.narinfo")[0]


def by_name(closure: Closure, part: str) -> str:
    return next(p for p in closure.paths if f"-{part}" in Path(p).name)


# --- closure completeness, on the session's worker (no upstream caches) -------------


def test_a_narinfo_missing_references_is_refused_and_nothing_is_stored(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    cache = file_cache(nix, keys, closure.top, tmp_path / "cache")
    token = tokens.mint()
    top, middle, leaf = by_name(closure, "top"), by_name(closure, "middle"), by_name(closure, "leaf")

    status, body = publish(worker, cache, top, token)
    assert status == 422, body
    assert Path(middle).name.encode() in body and Path(leaf).name.encode() in body, body
    assert b"push them first" in body
    assert narinfo_status(worker, top) == 404, "nothing published"
    assert missing(worker, token, closure.paths) == {hash_of(p) for p in closure.paths}

    status, body = publish(worker, cache, middle, token)
    assert status == 422 and Path(leaf).name.encode() in body and b"-middle" not in body.split(b":", 2)[-1], body
    # References first, as `nix copy` and `nixflare push` send them: accepted.
    for path in (leaf, middle, top):
        status, body = publish(worker, cache, path, token)
        assert status == 201, body
    assert missing(worker, token, closure.paths) == set()


def test_stock_nix_copy_of_a_closure_works_and_is_recorded(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {worker.host} login nix password {tokens.mint(subject='copier')}\n")
    nix("copy", "--option", "netrc-file", str(netrc), "--to",
        f"{worker.url}?secret-key={keys.secret_file}&compression=zstd", closure.top)
    token = tokens.mint()
    assert missing(worker, token, closure.paths) == set()
    recent = {item["storePath"]: item for item in stats(worker, token, nix)["recent"]}
    top = recent[Path(closure.top).name]
    assert top["subject"] == "copier" and len(top["tokenId"]) == 32
    assert top["publishedAt"] > 0
    # The same narinfo again, by someone else: it was already there, the record stands.
    narinfo_path = f"/{hash_of(closure.top)}.narinfo"
    text = request(worker, "GET", narinfo_path)[2]
    assert request(worker, "PUT", narinfo_path, bearer(tokens.mint(subject="replayer")), text)[0] == 200
    recent = {item["storePath"]: item for item in stats(worker, token, nix)["recent"]}
    assert recent[Path(closure.top).name]["subject"] == "copier"


def test_a_reference_seeded_behind_the_workers_back_is_adopted(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, closure: Closure, tmp_path):
    """The session's worker was filled with a closure before it started (its index never
    saw it): a path referencing it is accepted, and the reference is indexed."""
    app = run(["nix-build", "--no-out-link", "-E", APP_EXPR, "--argstr", "base", closure.top,
               "--argstr", "salt", os.urandom(6).hex()], env=nix.env).stdout.strip()
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {worker.host} login nix password {tokens.mint()}\n")
    nix("copy", "--option", "netrc-file", str(netrc), "--to",
        f"{worker.url}?secret-key={keys.secret_file}&compression=zstd", app)
    assert narinfo_status(worker, app) == 200
    assert hash_of(closure.top) not in missing(worker, tokens.mint(), [closure.top, app])


def test_a_referenced_path_cannot_be_deleted_before_what_needs_it(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    cache = file_cache(nix, keys, closure.top, tmp_path / "cache")
    writer, deleter = tokens.mint(), tokens.mint("delete")
    top, middle, leaf = by_name(closure, "top"), by_name(closure, "middle"), by_name(closure, "leaf")
    for path in (leaf, middle, top):
        assert publish(worker, cache, path, writer)[0] == 201

    status, _, body = request(worker, "DELETE", f"/{hash_of(leaf)}.narinfo", bearer(deleter))
    assert status == 409 and b"referenced by" in body, body
    assert narinfo_status(worker, leaf) == 200, "nothing deleted"
    for path in (top, middle, leaf):
        status, _, body = request(worker, "DELETE", f"/{hash_of(path)}.narinfo", bearer(deleter))
        assert status == 204, body
        assert narinfo_status(worker, path) == 404
    assert missing(worker, writer, closure.paths) == {hash_of(p) for p in closure.paths}
    # Deleted, then pushed again: accepted like any other publish.
    for path in (leaf, middle, top):
        assert publish(worker, cache, path, writer)[0] == 201


def test_batch_queries_are_bounded_and_need_a_token(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    path = "/_nixflare/missing"
    hashes = lambda n: json.dumps({"hashes": ["0" * 32] * n}).encode()  # noqa: E731
    assert request(worker, "POST", path, {}, hashes(1))[0] == 401
    assert request(worker, "POST", path, bearer(token), hashes(1000))[0] == 200
    status, _, body = request(worker, "POST", path, bearer(token), hashes(1001))
    assert status == 413 and b"1000" in body, body
    for bad in (b"not json", b'{"hashes": "x"}', b'{"hashes": ["e' + b"0" * 31 + b'"]}', b"[]"):
        status, _, body = request(worker, "POST", path, bearer(token), bad)
        assert status == 400, (bad, body)
    assert request(worker, "GET", path, bearer(token))[0] == 405
    assert request(worker, "GET", "/_nixflare/stats")[0] == 401


# --- upstream caches ---------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    closure: Closure
    directory: Path


@pytest.fixture(scope="module")
def upstream(nix: Nix, keys: Keys, tmp_path_factory):
    """A second binary cache standing in for cache.nixos.org: written by stock Nix,
    served over HTTP by Python."""
    closure = build_closure(nix, salt="-upstream-" + os.urandom(6).hex())
    directory = file_cache(nix, keys, closure.top, tmp_path_factory.mktemp("upstream"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/nix-cache-info", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "upstream cache did not start"
                time.sleep(0.2)
        yield Upstream(url=url, closure=closure, directory=directory)
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def with_upstream(keys: Keys, tokens: Tokens, upstream: Upstream, tmp_path_factory) -> Worker:
    persist = tmp_path_factory.mktemp("r2-upstream")
    with running_worker(persist, {
        "PUBLIC_KEYS": keys.public,
        "TOKEN_PUBLIC_KEYS": tokens.public,
        "UPSTREAM_CACHES": upstream.url + "/",
    }) as worker:
        yield worker


APP_EXPR = r"""
{ base, salt }:
let
""" + MK + r"""
  dep = builtins.storePath base;
  lib = mk "nixflare-app-lib-${salt}" "echo ${dep} > $out";
  app = mk "nixflare-app-${salt}" "mkdir -p $out; echo ${lib} ${dep} > $out/refs";
in app
"""


def test_references_an_upstream_serves_are_accepted_and_push_skips_them(
        nix: Nix, with_upstream: Worker, upstream: Upstream, keys: Keys, tokens: Tokens, tmp_path):
    worker = with_upstream
    app = run(["nix-build", "--no-out-link", "-E", APP_EXPR, "--argstr", "base", upstream.closure.top,
               "--argstr", "salt", os.urandom(6).hex()], env=nix.env).stdout.strip()
    info = json.loads(nix("path-info", "--json", "--recursive", app).stdout)
    app_closure = {item["path"] for item in info} if isinstance(info, list) else set(info)
    own = app_closure - set(upstream.closure.paths)
    assert len(own) == 2 and set(upstream.closure.paths) <= app_closure

    token = tokens.mint()
    info_line = json.loads(request(worker, "GET", "/_nixflare/info")[2])
    assert info_line["upstreamCaches"] == [upstream.url]
    proc = run([str(CLI), "push", "--cache", worker.url, "--key", str(keys.secret_file),
                "--spool-dir", str(tmp_path / "spool"), app], env=dict(nix.env, NIXFLARE_TOKEN=token))
    assert "pushed 2 paths" in proc.stderr and f"{len(upstream.closure.paths)} in its upstream caches" in proc.stderr, proc.stderr
    for path in upstream.closure.paths:
        assert narinfo_status(worker, path) == 404, f"{path} was pushed although upstream has it"
    for path in own:
        assert narinfo_status(worker, path) == 200

    # The cache checked the direct upstream reference once and remembered it.
    answer = query(worker, token, app_closure)
    assert set(answer["missing"]) == {hash_of(p) for p in upstream.closure.paths}
    assert hash_of(upstream.closure.top) in answer["inUpstream"]
    assert stats(worker, token, nix)["upstreamPaths"] >= 1
    again = run([str(CLI), "push", "--cache", worker.url, "--key", str(keys.secret_file),
                 "--spool-dir", str(tmp_path / "spool"), app], env=dict(nix.env, NIXFLARE_TOKEN=token))
    assert "nothing to push" in again.stderr, again.stderr

    # A client with both caches as substituters gets the whole closure into a fresh store.
    store = tmp_path / "store"
    nix("build", "--store", str(store), "--no-link", "--option", "substituters", f"{worker.url} {upstream.url}",
        "--option", "trusted-public-keys", keys.public, app)
    refs = (store / app.lstrip("/") / "refs").read_text().split()
    assert set(refs) == (own - {app}) | {upstream.closure.top}


def test_a_reference_neither_cache_has_is_refused_with_upstreams_declared(
        nix: Nix, with_upstream: Worker, keys: Keys, tokens: Tokens, tmp_path):
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    cache = file_cache(nix, keys, closure.top, tmp_path / "cache")
    status, body = publish(with_upstream, cache, by_name(closure, "middle"), tokens.mint())
    assert status == 422 and Path(by_name(closure, "leaf")).name.encode() in body, body
    assert narinfo_status(with_upstream, by_name(closure, "middle")) == 404


WIDE_EXPR = r"""
{ salt, n }:
let
  leaves = builtins.genList (i: builtins.toFile "wide-${salt}-${toString i}" "leaf ${toString i}\n")
    (builtins.fromJSON n);
in builtins.toFile "wide-${salt}-root" (builtins.concatStringsSep "\n" leaves)
"""


def test_more_references_than_one_request_may_check_upstream_continue_on_retry(
        nix: Nix, with_upstream: Worker, upstream: Upstream, keys: Keys, tokens: Tokens, tmp_path):
    """45 references only the upstream serves: one request checks 40 (the Free plan's
    subrequest budget) and answers 503; the retry checks the rest and publishes."""
    root = run(["nix-instantiate", "--eval", "--read-write-mode", "-E", WIDE_EXPR, "--argstr", "salt",
                os.urandom(6).hex(), "--argstr", "n", "45"], env=nix.env).stdout.strip().strip('"')
    info = json.loads(nix("path-info", "--json", "--recursive", root).stdout)
    leaves = sorted(({item["path"] for item in info} if isinstance(info, list) else set(info)) - {root})
    assert len(leaves) == 45
    nix("copy", "--to", f"file://{upstream.directory}?secret-key={keys.secret_file}&compression=zstd", *leaves)
    cache = file_cache(nix, keys, root, tmp_path / "cache")
    token = tokens.mint()

    status, body = publish(with_upstream, cache, root, token)
    assert status == 503 and b"send the narinfo again" in body, body
    assert narinfo_status(with_upstream, root) == 404, "nothing published yet"
    status, body = publish(with_upstream, cache, root, token)
    assert status == 201, body
    assert hash_of(root) not in missing(with_upstream, token, [root])


# --- reconciling with the bucket ------------------------------------------------------


def test_reconcile_indexes_a_bucket_seeded_behind_the_workers_back(
        nix: Nix, keys: Keys, tokens: Tokens, tmp_path):
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    cache = file_cache(nix, keys, closure.top, tmp_path / "cache")
    # As `nix copy --to s3://` into R2 would leave it (nix-cache-info included).
    persist = tmp_path / "r2"
    persist.mkdir()
    put_objects(persist, [(f.relative_to(cache).as_posix(), f) for f in sorted(cache.rglob("*")) if f.is_file()])
    variables = {
        "PUBLIC_KEYS": keys.public,
        "TOKEN_PUBLIC_KEYS": tokens.public,
        # An hour ahead: what R2 stored a moment ago is old enough for the pass to judge.
        "TEST_CLOCK_OFFSET_SECONDS": "3600",
    }
    token = tokens.mint()
    env = dict(nix.env, NIXFLARE_TOKEN=token)
    with running_worker(persist, variables) as worker:
        url = worker.url
        assert stats(worker, token, nix)["paths"] == 0
        assert missing(worker, token, closure.paths) == {hash_of(p) for p in closure.paths}

        out = run([str(CLI), "reconcile", "--json", "--cache", url], env=env).stdout
        step = json.loads(out)
        assert (step["indexed"], step["removed"], step["unreadable"]) == (3, 0, 0), step
        assert missing(worker, token, closure.paths) == set()
        texts = [narinfo_text(cache, p) for p in closure.paths]
        numbers = stats(worker, token, nix)
        assert numbers["paths"] == 3
        assert numbers["narBytes"] == sum(int(field(t, "NarSize")) for t in texts)
        assert numbers["storedBytes"] == sum(int(field(t, "FileSize")) for t in texts)
        assert numbers["reconcile"]["lastPassAt"] is not None
        assert all(item["subject"] is None for item in numbers["recent"])
        # Indexed paths count as present for a publish that references them.
        again = run([str(CLI), "reconcile", "--json", "--cache", url], env=env).stdout
        assert json.loads(again)["indexed"] == 0

    # An index entry whose narinfo left the bucket behind the worker's back.
    leaf = by_name(closure, "leaf")
    delete_object(persist, f"{hash_of(leaf)}.narinfo")
    with running_worker(persist, variables, extra_args=("--test-scheduled",)) as worker:
        url = worker.url
        assert missing(worker, token, closure.paths) == set(), "the index still believes it"
        # The hourly cron finds it.
        with urllib.request.urlopen(f"{url}/__scheduled?cron=17+*+*+*+*", timeout=60) as r:
            assert r.status == 200
        assert missing(worker, token, closure.paths) == {hash_of(leaf)}
        step = json.loads(run([str(CLI), "reconcile", "--json", "--cache", url], env=env).stdout)
        assert (step["indexed"], step["removed"]) == (0, 0), step
        assert stats(worker, token, nix)["paths"] == 2
        # The human summary reads the same numbers.
        text = run([str(CLI), "info", "--cache", url], env=env).stdout
        assert "paths:        2" in text, text

