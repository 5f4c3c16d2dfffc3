"""A private cache (READ_ACCESS=token) through workerd and the real Nix: it reads only
with a token that has `read`, and tells a request without one nothing, whatever it asks."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from conftest import (CLI, Closure, Keys, Nix, Tokens, Worker, bearer, build_closure, field, list_keys,
                      nix_env, put_objects, request, run, running_worker)
from test_landing_page import rendered_dom
from test_push import nar_hashes, push_cmd

# Seconds between a read token's revocation lookups (REVOCATION_CHECK_SECONDS).
RECHECK = 2
HASH = "7rjj86a15146cq1d3qy068lml7n8ykzm"
MISSING = "0rjj86a15146cq1d3qy068lml7n8ykzm"
PRIVATE_CACHE_CONTROL = "private, no-store"
# Side files put straight into R2: reads care only that they are stored.
SIDE_FILES = [
    f"{HASH}.ls",
    f"log/{HASH}-hello.drv",
    f"realisations/sha256:{'e' * 64}!out.doi",
    f"build-trace-v2/{HASH}-hello.drv/out.doi",
    "debuginfo/0123456789abcdef",
]


def private_vars(keys: Keys, tokens: Tokens, access: str = "token") -> dict[str, str]:
    return {
        "PUBLIC_KEYS": keys.public,
        "TOKEN_PUBLIC_KEYS": tokens.public,
        "READ_ACCESS": access,
        "REVOCATION_CHECK_SECONDS": str(RECHECK),
    }


@pytest.fixture(scope="module")
def private(keys: Keys, tokens: Tokens, tmp_path_factory) -> Worker:
    persist = tmp_path_factory.mktemp("private-r2")
    side = persist.parent / "side-file"
    side.write_text('{"version":1,"root":{"type":"regular","size":1}}\n')
    put_objects(persist, [(key, side) for key in SIDE_FILES])
    with running_worker(persist, private_vars(keys, tokens)) as worker:
        yield worker


@pytest.fixture(scope="module")
def pushed(nix: Nix, private: Worker, keys: Keys, tokens: Tokens, tmp_path_factory) -> Closure:
    """A closure pushed with a read,write token (a private cache answers a pusher's
    queries only if it may read)."""
    closure = build_closure(nix, salt="private")
    env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint("read,write"))
    run(push_cmd(private, keys, tmp_path_factory.mktemp("spool"), closure.top), env=env)
    return closure


def fresh_nix(tmp_path: Path) -> Nix:
    """Nix with a narinfo disk cache of its own: a refusal seen by one run must not
    answer for another."""
    return Nix(nix_env(tmp_path / "nix-home"))


def netrc(tmp_path: Path, worker: Worker, token: str | None) -> Path:
    path = tmp_path / "netrc"
    path.write_text(f"machine {worker.host} login nixflare password {token}\n" if token else "")
    return path


def copy_from(nix: Nix, worker: Worker, keys: Keys, top: str, store: Path, netrc_file: Path, check=True):
    return nix("copy", "--from", worker.url, "--to", str(store), "--option", "netrc-file", str(netrc_file),
               "--option", "trusted-public-keys", keys.public, top, check=check)


def revoke(worker: Worker, tokens: Tokens, victim: str) -> None:
    run([str(CLI), "token", "revoke", "--cache", worker.url, "--token", tokens.mint("read,revoke"), victim])


def other_admin_token(tmp_path: Path) -> str:
    """A well-formed token signed by a key the cache does not trust."""
    key = tmp_path / "other-admin.sec"
    run([str(CLI), "keygen", "other-tokens-1", "--out", str(key)])
    return run([str(CLI), "token", "mint", "--key", str(key), "--subject", "intruder",
                "--permissions", "read", "--expires-in", "1h"]).stdout.strip()


def narinfo_path(path: str) -> str:
    return f"/{Path(path).name[:32]}.narinfo"


def test_nix_substitutes_with_a_netrc_read_token(nix: Nix, private: Worker, keys: Keys, tokens: Tokens,
                                                 pushed: Closure, tmp_path):
    reader = fresh_nix(tmp_path)
    token_file = netrc(tmp_path, private, tokens.mint("read"))
    # `nix copy --from`, and the substituter setting as users configure it.
    copy_from(reader, private, keys, pushed.top, tmp_path / "copied", token_file)
    assert nar_hashes(reader, str(tmp_path / "copied"), pushed.top) == pushed.nar_hashes
    store = tmp_path / "realised"
    reader.store("--store", str(store), "--realise", pushed.top,
                 "--option", "substituters", private.url, "--option", "netrc-file", str(token_file),
                 "--option", "trusted-public-keys", keys.public)
    assert nar_hashes(reader, str(store), pushed.top) == pushed.nar_hashes


def test_stock_nix_copy_to_a_private_cache(nix: Nix, private: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """`nix copy --to` reads before it writes (nix-cache-info, which paths are there).
    On a private cache every write needs read too: a write answers whether what it
    names is there. A write-only token stores nothing; read,write pushes."""
    closure = build_closure(nix, salt="private-copy-to")
    to = f"{private.url}?secret-key={keys.secret_file}&compression=zstd&write-nar-listing=true"
    before = set(list_keys(private.persist))
    proc = nix("copy", "--option", "netrc-file", str(netrc(tmp_path, private, tokens.mint("write"))),
               "--to", to, closure.top, check=False)
    assert proc.returncode != 0
    assert set(list_keys(private.persist)) == before
    nix("copy", "--option", "netrc-file", str(netrc(tmp_path, private, tokens.mint("read,write"))),
        "--to", to, closure.top)
    reader = fresh_nix(tmp_path)
    copy_from(reader, private, keys, closure.top, tmp_path / "store", netrc(tmp_path, private, tokens.mint("read")))
    assert nar_hashes(reader, str(tmp_path / "store"), closure.top) == closure.nar_hashes


def test_nix_fails_without_a_valid_read_token(nix: Nix, private: Worker, keys: Keys, tokens: Tokens,
                                              pushed: Closure, tmp_path):
    revoked = tokens.mint("read")
    revoke(private, tokens, revoked)
    cases = {
        "none": None,
        "wrong": other_admin_token(tmp_path),
        "expired": tokens.mint("read", expires_at=int(time.time()) - 60),
        "revoked": revoked,
        "write-only": tokens.mint("write"),
    }
    for name, token in cases.items():
        case_dir = tmp_path / name
        case_dir.mkdir()
        store = case_dir / "store"
        proc = copy_from(fresh_nix(case_dir), private, keys, pushed.top, store, netrc(case_dir, private, token),
                         check=False)
        assert proc.returncode != 0, f"{name}: Nix read a private cache"
        assert not (store / pushed.top.lstrip("/")).exists(), name


def leak_free(status: int, headers: dict, body: bytes) -> tuple:
    """What a refusal may show, with what every answer has anyway (Date) left out."""
    return status, {k: v for k, v in headers.items() if k not in ("date",)}, body


def test_every_file_kind_answers_the_same_refusal(private: Worker, tokens: Tokens, pushed: Closure, tmp_path):
    info = request(private, "GET", narinfo_path(pushed.top), bearer(tokens.mint("read")))
    assert info[0] == 200, info
    nar = "/" + field(info[2].decode(), "URL")
    _, nar_headers, _ = request(private, "HEAD", nar, bearer(tokens.mint("read")))
    etag = nar_headers["etag"]
    missing_nar = "/nar/" + "0" * 52 + ".nar.zst"
    # Present and missing alike, every kind of file and every other read.
    paths = [narinfo_path(pushed.top), f"/{MISSING}.narinfo", nar, missing_nar,
             *(f"/{key}" for key in SIDE_FILES), f"/{MISSING}.ls", f"/log/{MISSING}-hello.drv",
             "/nix-cache-info", "/public-keys", "/_nixflare/info", "/_nixflare/stats", "/_nixflare/pins"]
    revoked = tokens.mint("read")
    revoke(private, tokens, revoked)
    cases = {
        "none": {},
        "garbage": {"Authorization": "Bearer nixflare1_AAAA"},
        "not a scheme": {"Authorization": "Token abc"},
        "wrong": bearer(other_admin_token(tmp_path)),
        "expired": bearer(tokens.mint("read", expires_at=int(time.time()) - 60)),
        "revoked": bearer(revoked),
        "write-only": bearer(tokens.mint("write")),
        "write-only, basic": {"Authorization": "Basic " + base64.b64encode(
            f"nixflare:{tokens.mint('write')}".encode()).decode()},
    }
    for name, auth in cases.items():
        answers = {}
        for path in paths:
            for method, extra in [("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-9"}),
                                  ("GET", {"If-None-Match": etag}), ("GET", {"Range": "bytes=99999999-"})]:
                answers[(path, method, str(extra))] = leak_free(*request(private, method, path, {**auth, **extra}))
        if name.startswith("write-only"):
            # A write would answer whether what it names is there: it needs read too.
            for path in (narinfo_path(pushed.top), f"/{MISSING}.narinfo"):
                status, _, _ = request(private, "PUT", path, auth, b"StorePath: x\n")
                assert status == 403, (name, path, status)
            for key in (nar.lstrip("/"), missing_nar.lstrip("/")):
                status, _, _ = request(private, "POST", f"/_nixflare/uploads/{key}?uploads", auth, b"")
                assert status == 403, (name, key, status)
        answers[("/_nixflare/missing", "POST", "")] = leak_free(*request(
            private, "POST", "/_nixflare/missing", {**auth, "Content-Type": "application/json"},
            f'{{"hashes":["{Path(pushed.top).name[:32]}"]}}'.encode()))
        gets = {key: answer for key, answer in answers.items() if key[1] != "HEAD"}
        heads = {key: answer for key, answer in answers.items() if key[1] == "HEAD"}
        # One answer for every path, present or not, whatever the request asks.
        assert len(set(map(repr, gets.values()))) == 1, (name, gets)
        assert len(set(map(repr, heads.values()))) == 1, (name, heads)
        status, headers, body = next(iter(gets.values()))
        assert status == (403 if name.startswith("write-only") else 401), (name, status, body)
        assert headers["cache-control"] == PRIVATE_CACHE_CONTROL, (name, headers)
        assert not {"etag", "content-range", "accept-ranges", "cache-tag", "last-modified"} & set(headers), headers
        if status == 401:
            assert headers["www-authenticate"].startswith("Basic"), headers
        assert body.count(b"\n") == 1 and len(body) < 200, body
        assert next(iter(heads.values()))[2] == b""


def test_admitted_reads_are_whole_and_never_shared(private: Worker, tokens: Tokens, pushed: Closure):
    reader = bearer(tokens.mint("read"))
    path = narinfo_path(pushed.top)
    # Twice: the second answer is the kept copy, and must be the same file.
    first = request(private, "GET", path, reader)
    second = request(private, "GET", path, reader)
    assert first[0] == second[0] == 200
    assert first[2] == second[2]
    for name in ("content-type", "etag", "content-length"):
        assert first[1][name] == second[1][name], name
    for answer in (first, second):
        assert answer[1]["cache-control"] == PRIVATE_CACHE_CONTROL
    # A copy kept for readers never answers a request without a token.
    status, headers, body = request(private, "GET", path)
    assert status == 401 and pushed.top.encode() not in body
    nar = "/" + field(first[2].decode(), "URL")
    status, headers, _ = request(private, "HEAD", nar, reader)
    assert status == 200 and int(headers["content-length"]) > 0
    status, _, part = request(private, "GET", nar, {**reader, "Range": "bytes=0-9"})
    assert status == 206 and len(part) == 10
    status, _, _ = request(private, "GET", nar, {**reader, "If-None-Match": headers["etag"]})
    assert status == 304
    for path in ("/nix-cache-info", "/public-keys", "/_nixflare/info", f"/{SIDE_FILES[0]}"):
        status, headers, _ = request(private, "GET", path, reader)
        assert status == 200 and headers["cache-control"] == PRIVATE_CACHE_CONTROL, path
    # The landing page is served to anyone, and private too.
    status, headers, _ = request(private, "GET", "/")
    assert status == 200 and headers["cache-control"] == PRIVATE_CACHE_CONTROL
    # The index's answers need read as well; whoami tells a token only about itself.
    status, _, body = request(private, "POST", "/_nixflare/missing", {**reader, "Content-Type": "application/json"},
                              f'{{"hashes":["{Path(pushed.top).name[:32]}"]}}'.encode())
    assert status == 200, body
    writer = bearer(tokens.mint("write"))
    assert request(private, "GET", "/_nixflare/whoami", writer)[0] == 200


def test_a_revoked_read_token_stops_within_the_interval(private: Worker, keys: Keys, tokens: Tokens,
                                                        pushed: Closure, tmp_path):
    token = tokens.mint("read")
    path = narinfo_path(pushed.top)
    assert request(private, "GET", path, bearer(token))[0] == 200
    revoke(private, tokens, token)
    time.sleep(RECHECK + 0.5)
    status, _, body = request(private, "GET", path, bearer(token))
    assert status == 401 and b"revoked" in body, body
    proc = copy_from(fresh_nix(tmp_path), private, keys, pushed.top, tmp_path / "store",
                     netrc(tmp_path, private, token), check=False)
    assert proc.returncode != 0


def test_nixflare_use_prints_the_netrc_line_and_push_needs_read(private: Worker, keys: Keys, tokens: Tokens,
                                                                 nix: Nix, tmp_path):
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"}
    reader = tokens.mint("read")
    out = run([str(CLI), "use", private.url], env=dict(env, NIXFLARE_TOKEN=reader)).stdout
    assert f"machine {private.host} login nixflare password {reader}\n" in out, out
    assert "netrc-file = /etc/nix/netrc" in out and f"extra-trusted-public-keys = {keys.public}" in out
    # Without a token, and for a push whose token may not read: one clear line.
    proc = run([str(CLI), "use", private.url], env=env, check=False)
    assert proc.returncode != 0 and "private cache" in proc.stderr, proc.stderr
    proc = run(push_cmd(private, keys, tmp_path / "spool", build_closure(nix, salt="private-wo").top),
               env=dict(nix.env, NIXFLARE_TOKEN=tokens.mint("write")), check=False)
    assert proc.returncode != 0 and "private cache" in proc.stderr, proc.stderr


def test_landing_page_of_a_private_cache_shows_access_and_nothing_else(private: Worker, keys: Keys,
                                                                       pushed: Closure, tmp_path):
    # What a visitor sees: the DOM less the script that made it.
    dom = rendered_dom(private.url + "/", tmp_path / "profile").split("<script>")[0]
    assert "This cache is private" in dom
    assert f"machine <span class=\"cache-host\">{private.host}</span> login nixflare password READ_TOKEN" in dom
    assert f"nixflare use <span class=\"cache-url\">{private.url}</span>" in dom
    assert keys.public.split(":")[0] not in dom, "the page shows the cache's key"
    assert "(loading…)" not in dom and "could not load" not in dom
    assert 'id="public-use"' not in dom and "Anyone can download" not in dom
    # No lookup and no stats: nothing of the contents without a token.
    assert 'id="lookup"' not in dom and 'id="stats"' not in dom
    assert request(private, "GET", "/_nixflare/summary.json")[0] == 401


def test_switching_access_is_a_config_change(nix: Nix, keys: Keys, tokens: Tokens, tmp_path):
    persist = tmp_path / "r2"
    persist.mkdir()
    closure = build_closure(nix, salt="switch")
    with running_worker(persist, private_vars(keys, tokens)) as worker:
        env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint("read,write"))
        run(push_cmd(worker, keys, tmp_path / "spool", closure.top), env=env)
        assert request(worker, "GET", narinfo_path(closure.top))[0] == 401
    stored = set(list_keys(persist))
    with running_worker(persist, private_vars(keys, tokens, "public")) as worker:
        status, headers, _ = request(worker, "GET", narinfo_path(closure.top))
        assert status == 200 and headers["cache-control"].startswith("public"), headers
        copy_from(fresh_nix(tmp_path), worker, keys, closure.top, tmp_path / "store", netrc(tmp_path, worker, None))
    assert set(list_keys(persist)) == stored
    # Back to private; and a misspelt setting fails closed, never open.
    with running_worker(persist, private_vars(keys, tokens)) as worker:
        assert request(worker, "GET", narinfo_path(closure.top))[0] == 401
    with running_worker(persist, private_vars(keys, tokens, "private")) as worker:
        for path in (narinfo_path(closure.top), "/nix-cache-info", "/"):
            status, headers, body = request(worker, "GET", path)
            assert status == 500 and headers["cache-control"] == PRIVATE_CACHE_CONTROL, (path, status, body)
