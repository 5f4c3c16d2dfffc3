"""`nixflare push` against the real worker, with Nix as the store and as the consumer.

The closure here has a 40 MiB incompressible NAR: above the e2e worker's 16 MiB request
limit, so it can only go up in parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (CLI, MK, Keys, Nix, RecordingProxy, Tokens, Worker, bearer, free_port, list_keys,
                      request, run)

BIG_MIB = 40

PUSH_EXPR = r"""
{ salt }:
let
""" + MK + r"""
  leaf = mk "nixflare-push-leaf-${salt}" "echo leaf > $out";
  # Random bytes: zstd cannot shrink them below the request limit.
  big = mk "nixflare-push-big-${salt}" ''
    mkdir -p $out
    echo ${leaf} > $out/ref
    head -c BIG_BYTES /dev/urandom > $out/blob
  '';
  top = mk "nixflare-push-top-${salt}" ''
    mkdir -p $out/bin
    echo "${big} ${leaf}" > $out/refs
    printf '#!/bin/sh\necho pushed by nixflare\n' > $out/bin/hello
    chmod +x $out/bin/hello
  '';
in top
""".replace("BIG_BYTES", str(BIG_MIB << 20))


def build(nix: Nix) -> tuple[str, dict[str, str]]:
    top = run(
        ["nix-build", "--no-out-link", "-E", PUSH_EXPR, "--argstr", "salt", os.urandom(6).hex()],
        env=nix.env,
    ).stdout.strip()
    return top, nar_hashes(nix, None, top)


def nar_hashes(nix: Nix, store: str | None, path: str) -> dict[str, str]:
    args = ["path-info", "--json", "--recursive", path] + (["--store", store] if store else [])
    info = json.loads(nix(*args).stdout)
    items = info if isinstance(info, list) else [dict(v, path=k) for k, v in info.items()]
    return {item["path"]: item["narHash"] for item in items}


def push_cmd(worker: Worker, keys: Keys, spool: Path, *paths: str, extra: list[str] = ()) -> list[str]:
    return [str(CLI), "push", "--cache", worker.url, "--key", str(keys.secret_file),
            "--spool-dir", str(spool), *extra, *paths]


def substitute(nix: Nix, worker: Worker, keys: Keys, top: str, store: Path) -> dict[str, str]:
    nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public, top)
    return nar_hashes(nix, str(store), top)


def narinfo_of(worker: Worker, path: str) -> dict[str, str] | None:
    status, _, body = request(worker, "GET", f"/{Path(path).name[:32]}.narinfo")
    if status == 404:
        return None
    assert status == 200
    return dict(line.split(": ", 1) for line in body.decode().splitlines())


def nar_keys(worker: Worker, paths) -> set[str]:
    """The NAR objects the published narinfos of `paths` point at."""
    return {narinfo_of(worker, path)["URL"] for path in paths}


def assert_consistent(worker: Worker, paths: list[str]) -> None:
    """Every published path is fully servable: its NAR and its references are there."""
    for path in paths:
        info = narinfo_of(worker, path)
        if info is None:
            continue
        assert request(worker, "HEAD", "/" + info["URL"])[0] == 200, f"{path}: NAR missing"
        for ref in filter(None, info["References"].split(" ")):
            assert narinfo_of(worker, "/nix/store/" + ref) is not None, f"{path}: reference {ref} missing"


@pytest.fixture(scope="module")
def big_closure(nix: Nix):
    return build(nix)


def test_push_closure_with_a_nar_over_the_limit_then_substitute(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, big_closure, tmp_path):
    top, hashes = big_closure
    # The token comes from a netrc, as `nix copy` users already have it.
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {worker.host} login nix password {tokens.mint()}\n")
    nars_before = set(list_keys(worker.persist, "nar/"))
    proc = run(push_cmd(worker, keys, tmp_path / "spool", top, extra=["--netrc-file", str(netrc)]), env=nix.env)
    assert "sent in 3 parts" in proc.stderr, proc.stderr
    assert f"pushed {len(hashes)} paths" in proc.stderr, proc.stderr

    assert substitute(nix, worker, keys, top, tmp_path / "store") == hashes
    hello = tmp_path / "store" / top.lstrip("/") / "bin" / "hello"
    assert hello.stat().st_mode & 0o111
    # The closure's NARs and nothing else, nothing staged or pending left, the spool emptied.
    assert set(list_keys(worker.persist, "nar/")) - nars_before == nar_keys(worker, hashes) - nars_before
    assert list_keys(worker.persist, "_nixflare/uploads/") == []
    assert list_keys(worker.persist, "_nixflare/pending/") == []
    assert list((tmp_path / "spool").iterdir()) == []
    # The narinfos are zstd and signed (the NarHashes were compared by substituting).
    info = narinfo_of(worker, top)
    assert info["Compression"] == "zstd" and info["Sig"].startswith("e2e-test-1:")

    again = run(push_cmd(worker, keys, tmp_path / "spool", top, extra=["--netrc-file", str(netrc)]), env=nix.env)
    assert "already in" in again.stderr


def test_interrupted_push_resumes_without_duplicates(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    top, hashes = build(nix)
    env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint())
    spool = tmp_path / "spool"
    nars_before = set(list_keys(worker.persist, "nar/"))
    # Slow and serial, so the kill lands between parts of the big NAR.
    cmd = push_cmd(worker, keys, spool, top, extra=["--limit-rate", "12M", "--jobs", "1"])
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "part 1/3 sent" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert any("part 1/3 sent" in line for line in seen), "".join(seen)
    assert narinfo_of(worker, top) is None, "top published before its big reference"
    assert_consistent(worker, list(hashes))

    again = run(push_cmd(worker, keys, spool, top), env=env)
    assert "resuming, 1 of 3 parts already sent" in again.stderr, again.stderr
    assert "(1 from an earlier run)" in again.stderr
    assert_consistent(worker, list(hashes))
    assert substitute(nix, worker, keys, top, tmp_path / "store") == hashes
    # Exactly the closure's NARs were added (no duplicate, no orphan), no upload left open.
    assert set(list_keys(worker.persist, "nar/")) - nars_before == nar_keys(worker, hashes) - nars_before
    assert list_keys(worker.persist, "_nixflare/pending/") == []
    assert list_keys(worker.persist, "_nixflare/uploads/") == []


def build_small(nix: Nix) -> str:
    """A three-path closure nobody pushed (its big path is 1000 bytes here)."""
    return run(
        ["nix-build", "--no-out-link", "-E", PUSH_EXPR.replace(str(BIG_MIB << 20), "1000"),
         "--argstr", "salt", os.urandom(6).hex()],
        env=nix.env,
    ).stdout.strip()


@pytest.fixture(scope="module")
def small_closure(nix: Nix):
    return build_small(nix)


def failing_push(nix: Nix, cmd: list[str], env_extra: dict) -> str:
    proc = run(cmd, env=dict(nix.env, **env_extra), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_wrong_key_fails_before_uploading(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, small_closure,
                                         tmp_path):
    cmd = [str(CLI), "push", "--cache", worker.url, "--key", str(keys.wrong_secret_file),
           "--spool-dir", str(tmp_path), small_closure]
    line = failing_push(nix, cmd, {"NIXFLARE_TOKEN": tokens.mint()})
    assert "does not trust the signing key" in line
    assert narinfo_of(worker, small_closure) is None


@pytest.mark.parametrize("kind", ["garbage", "read-only", "expired"])
def test_bad_token_fails_before_uploading(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, small_closure,
                                         tmp_path, kind):
    token = {
        "garbage": "nixflare1_garbage",
        "read-only": tokens.mint("read"),
        "expired": tokens.mint(expires_at=1),
    }[kind]
    line = failing_push(nix, push_cmd(worker, keys, tmp_path, small_closure), {"NIXFLARE_TOKEN": token})
    assert ("refused the upload token" in line) or ("cannot upload" in line), line
    assert narinfo_of(worker, small_closure) is None


def test_unreachable_cache_is_a_clear_error(nix: Nix, keys: Keys, small_closure, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(CLI), "push", "--cache", url, "--key", str(keys.secret_file), "--attempts", "2",
           "--spool-dir", str(tmp_path), small_closure]
    started = time.monotonic()
    line = failing_push(nix, cmd, {"NIXFLARE_TOKEN": "x"})
    assert "cannot reach the cache" in line and url in line, line
    assert time.monotonic() - started < 30


def test_missing_token_names_the_ways_to_give_one(nix: Nix, worker: Worker, keys: Keys, small_closure, tmp_path):
    cmd = push_cmd(worker, keys, tmp_path, small_closure, extra=["--netrc-file", str(tmp_path / "none")])
    line = failing_push(nix, cmd, {"HOME": str(tmp_path)})
    assert "no upload token" in line and "NIXFLARE_TOKEN" in line


def test_revoke_through_the_cache(worker: Worker, tokens: Tokens):
    victim = tokens.mint("read,write")
    admin = tokens.mint("revoke")
    assert request(worker, "GET", "/_nixflare/whoami", bearer(victim))[0] == 200
    run([str(CLI), "token", "revoke", "--cache", worker.url, "--token", admin, victim])
    status, _, body = request(worker, "GET", "/_nixflare/whoami", bearer(victim))
    assert status == 401 and b"revoked" in body
    # By id as well; a token without revoke permission is refused with a clear line.
    other = tokens.mint()
    proc = run([str(CLI), "token", "revoke", "--cache", worker.url, "--token", other, tokens.id_of(other)],
               check=False)
    assert proc.returncode != 0 and "403" in proc.stderr and "revoke" in proc.stderr


def test_use_prints_the_configuration(worker: Worker, keys: Keys):
    out = run([str(CLI), "use", worker.url]).stdout
    assert f"extra-substituters = {worker.url}" in out
    assert f"extra-trusted-public-keys = {keys.public}" in out
    assert f"machine {worker.host} password <TOKEN>" in out


class FlakyProxy(RecordingProxy):
    """Forwards to the worker, but answers the first request of every method+path with
    503 (and drops the connection on the first request of every third path), as an edge
    under load might: a push must retry its way through."""

    def __init__(self, worker: Worker):
        seen: set[tuple[str, str]] = set()
        self.failures = 0
        self.failed: set[tuple[str, str]] = seen

        def misbehave(handler) -> bool:
            key = (handler.command, handler.path.split("?")[0])
            if key in seen:
                return False
            seen.add(key)
            self.failures += 1
            if len(seen) % 3 == 0:
                handler.close_connection = True
                handler.connection.shutdown(2)
                return True
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return True

        super().__init__(worker, misbehave)


def test_push_retries_through_transient_failures(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    top, hashes = build(nix)
    proxy = FlakyProxy(worker)
    try:
        cmd = [str(CLI), "push", "--cache", proxy.url, "--key", str(keys.secret_file),
               "--spool-dir", str(tmp_path / "spool"), top]
        proc = run(cmd, env=dict(nix.env, NIXFLARE_TOKEN=tokens.mint()))
    finally:
        proxy.close()
    # Every distinct method and path failed once and was retried: info, whoami and the
    # missing query, the large NAR's HEAD, its upload's POSTs and part PUTs, the two small
    # NARs' PUTs (sent without asking first) and the batch of narinfos.
    assert proxy.failures >= 3 + 1 + 1 + 1 + 2 + 1, sorted(proxy.failed)
    assert ("POST", "/_nixflare/narinfos") in proxy.failed
    assert "sent in 3 parts" in proc.stderr
    assert_consistent(worker, list(hashes))
    assert substitute(nix, worker, keys, top, tmp_path / "store") == hashes


def test_quiet_uncompressed_push(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, small_closure, tmp_path):
    proc = run(push_cmd(worker, keys, tmp_path / "spool", small_closure, extra=["--quiet", "--compression", "none"]),
               env=dict(nix.env, NIXFLARE_TOKEN=tokens.mint()))
    assert proc.stderr == "" and proc.stdout == ""
    info = narinfo_of(worker, small_closure)
    assert info["Compression"] == "none" and info["URL"].endswith(".nar")
    hashes = nar_hashes(nix, None, small_closure)
    assert substitute(nix, worker, keys, small_closure, tmp_path / "store") == hashes


def test_a_spool_other_users_can_write_is_refused(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens,
                                                  tmp_path):
    top = build_small(nix)  # something to push, so the spool is needed
    spool = tmp_path / "shared-spool"
    spool.mkdir(mode=0o777)
    spool.chmod(0o777)
    line = failing_push(nix, push_cmd(worker, keys, spool, top), {"NIXFLARE_TOKEN": tokens.mint()})
    assert "open to other users (mode 777)" in line, line
    assert narinfo_of(worker, top) is None


def test_a_netrc_default_entry_is_not_a_token(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens,
                                             small_closure, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"default login x password {tokens.mint()}\n")
    line = failing_push(nix, push_cmd(worker, keys, tmp_path / "spool", small_closure,
                                      extra=["--netrc-file", str(netrc)]), {})
    assert "no upload token for 127.0.0.1" in line, line


def test_a_planted_spool_record_is_not_signed_for(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """A record and file consistent with each other but not the path's NAR (what a
    process that could write the spool would plant) are recompressed, not published."""
    import hashlib

    from conftest import nix32_of_digest

    top, hashes = build(nix)
    leaf = next(p for p in hashes if "-push-leaf-" in p)
    nar_hash = hashes[leaf]
    if nar_hash.startswith("sha256-"):  # SRI
        import base64

        nar_nix32 = nix32_of_digest(base64.b64decode(nar_hash[len("sha256-"):]))
    else:
        nar_nix32 = nar_hash.split(":", 1)[1]
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    stem = f"{Path(leaf).name[:32]}-none3-{nar_nix32[:12]}"
    planted = b"planted bytes, not the NAR of " + leaf.encode()
    (spool / f"{stem}.nar").write_bytes(planted)
    record = {"file_hash": nix32_of_digest(hashlib.sha256(planted).digest()), "file_size": len(planted), "upload": None}
    (spool / f"{stem}.json").write_text(json.dumps(record))
    run(push_cmd(worker, keys, spool, leaf, extra=["--compression", "none"]),
        env=dict(nix.env, NIXFLARE_TOKEN=tokens.mint()))
    narinfo = narinfo_of(worker, leaf)
    assert narinfo is not None and narinfo["FileHash"] != "sha256:" + record["file_hash"]
    assert substitute(nix, worker, keys, leaf, tmp_path / "store") == {leaf: nar_hash}
