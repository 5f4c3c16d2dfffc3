"""Uploads: stock `nix copy --to` with a netrc token, and every way an upload can be
wrong. Each refusal is checked for its status AND for storage being unchanged."""

import base64
import gzip
import json
import os
from pathlib import Path

import pytest

from conftest import (field, MAX_REQUEST_BYTES, MK, Closure, Keys, Nix, Tokens, Worker, bearer, build_closure, nix32_sha256,
                      request, run, CLI)

ABSENT_NAR = "/nar/" + "1" * 52 + ".nar.xz"


def basic(token: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"nix:{token}".encode()).decode()}


def status_of(worker: Worker, path: str) -> int:
    return request(worker, "GET", path)[0]


def nar_hashes(nix: Nix, store: str, path: str) -> dict[str, str]:
    info = json.loads(nix("path-info", "--store", store, "--json", "--recursive", path).stdout)
    items = info if isinstance(info, list) else [dict(v, path=k) for k, v in info.items()]
    return {item["path"]: item["narHash"] for item in items}


def test_stock_nix_copy_to_then_substitute(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens,
                                          fresh_closure: Closure, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {worker.host} login nix password {tokens.mint('read,write')}\n")
    to = f"{worker.url}?secret-key={keys.secret_file}&compression=zstd&write-nar-listing=true"
    nix("copy", "--option", "netrc-file", str(netrc), "--to", to, fresh_closure.top)
    # Again: everything is there already, still a success.
    nix("copy", "--option", "netrc-file", str(netrc), "--to", to, fresh_closure.top)

    store = str(tmp_path / "store")
    nix("copy", "--from", worker.url, "--to", store, "--option", "trusted-public-keys", keys.public, fresh_closure.top)
    assert nar_hashes(nix, store, fresh_closure.top) == fresh_closure.nar_hashes


DEBUGINFO_EXPR = r"""
{ salt }:
let
""" + MK + r"""
in mk "nixflare-e2e-debuginfo-${salt}" ''
  mkdir -p $out/lib/debug/.build-id/ab
  echo ${salt} > $out/lib/debug/.build-id/ab/cdef0123456789abcdef0123456789abcdef01.debug
''
"""


def test_stock_nix_copy_with_debug_info_index(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """Nix's index-debug-info writes `debuginfo/<build id>.debug` (the key carries the
    file's suffix); the cache must take it, or `nix copy` fails."""
    top = run(["nix-build", "--no-out-link", "-E", DEBUGINFO_EXPR, "--argstr", "salt", os.urandom(6).hex()],
              env=nix.env).stdout.strip()
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {worker.host} login nix password {tokens.mint('read,write')}\n")
    to = f"{worker.url}?secret-key={keys.secret_file}&compression=zstd&index-debug-info=true"
    nix("copy", "--option", "netrc-file", str(netrc), "--to", to, top)

    status, headers, body = request(worker, "GET", "/debuginfo/abcdef0123456789abcdef0123456789abcdef01.debug")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    pointer = json.loads(body)
    assert pointer["member"] == "lib/debug/.build-id/ab/cdef0123456789abcdef0123456789abcdef01.debug"
    assert pointer["archive"].startswith("../nar/")


def test_nix_copy_without_token_fails_and_stores_nothing(nix: Nix, worker: Worker, keys: Keys, tmp_path):
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    proc = nix("copy", "--to", f"{worker.url}?secret-key={keys.secret_file}", closure.top, check=False)
    assert proc.returncode != 0
    assert "401" in proc.stderr, proc.stderr
    hash_part = Path(closure.top).name[:32]
    assert status_of(worker, f"/{hash_part}.narinfo") == 404


# --- the bad-input matrix, built from a binary cache stock Nix wrote -----------------


@pytest.fixture(scope="module")
def signed(nix: Nix, keys: Keys, tmp_path_factory):
    """A closure nobody pushed, as Nix writes it: signed with the trusted key, and a
    second copy signed with a key the cache does not trust."""
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    good, wrong = tmp_path_factory.mktemp("signed"), tmp_path_factory.mktemp("wrong-signed")
    for d, key in [(good, keys.secret_file), (wrong, keys.wrong_secret_file)]:
        nix("copy", "--to", f"file://{d}?secret-key={key}&compression=xz", closure.top)
    return closure, good, wrong


def narinfo_of(cache: Path, store_path: str) -> tuple[str, str]:
    """(request path, text) of a store path's narinfo in a file cache."""
    name = f"{Path(store_path).name[:32]}.narinfo"
    return "/" + name, (cache / name).read_text()


@pytest.fixture(scope="module")
def leaf(worker: Worker, tokens: Tokens, signed):
    """The leaf's NAR uploaded (so its narinfo may be published); the narinfo not yet."""
    closure, good, _ = signed
    leaf_path = next(p for p in closure.paths if "-leaf-" in p)
    path, text = narinfo_of(good, leaf_path)
    nar_path = "/" + field(text, "URL")
    nar = (good / field(text, "URL")).read_bytes()
    status, _, _ = request(worker, "PUT", nar_path, bearer(tokens.mint()), nar)
    # 200 if another test pushed the same bytes: a leaf's NAR does not contain its name.
    assert status in (200, 201)
    return path, text, nar_path, nar


@pytest.mark.parametrize(
    "auth, expected",
    [
        ("none", 401),
        ("not-a-token", 401),
        ("other-admin-key", 401),
        ("expired", 401),
        ("revoked", 401),
        ("read-only", 403),
        ("write-via-basic", 201),
    ],
)
def test_nar_put_authorization(worker: Worker, tokens: Tokens, tmp_path, auth, expected):
    nar = os.urandom(1000)
    path = "/nar/" + nix32_sha256(nar) + ".nar"
    if auth == "none":
        headers = {}
    elif auth == "not-a-token":
        headers = bearer("nixflare1_" + "A" * 100)
    elif auth == "other-admin-key":
        other = Tokens(tmp_path / "other.sec", run([str(CLI), "keygen", "e2e-tokens-1", "--out", str(tmp_path / "other.sec")]).stdout)
        headers = bearer(other.mint())
    elif auth == "expired":
        headers = bearer(tokens.mint(expires_at=1))
    elif auth == "revoked":
        token = tokens.mint()
        revoke = f"/_nixflare/revocations/{tokens.id_of(token)}"
        assert request(worker, "PUT", revoke, bearer(tokens.mint("write")), b"")[0] == 403  # needs revoke
        assert request(worker, "PUT", revoke, bearer(tokens.mint("revoke")), b"")[0] == 201
        # Revocations are bookkeeping, not cache content: never readable.
        status_get, allow, _ = request(worker, "GET", revoke)
        assert (status_get, allow["allow"]) == (405, "PUT")
        headers = bearer(token)
    elif auth == "read-only":
        headers = bearer(tokens.mint("read"))
    else:
        headers = basic(tokens.mint())
    status, resp_headers, body = request(worker, "PUT", path, headers, nar)
    assert status == expected, body
    if expected == 401:
        assert resp_headers["www-authenticate"] == 'Basic realm="nixflare"'
    if expected != 201:
        assert body.count(b"\n") == 1, "one-line reason"
        assert status_of(worker, path) == 404, "nothing stored"
    else:
        assert request(worker, "GET", path)[2] == nar


def test_nar_bytes_must_hash_to_their_name(worker: Worker, tokens: Tokens):
    nar = os.urandom(1000)
    path = "/nar/" + nix32_sha256(os.urandom(10)) + ".nar.xz"
    status, _, body = request(worker, "PUT", path, bearer(tokens.mint()), nar)
    assert status == 400
    assert b"do not hash to the name" in body
    assert status_of(worker, path) == 404


def test_nar_put_is_idempotent(worker: Worker, tokens: Tokens):
    nar = os.urandom(2000)
    path = "/nar/" + nix32_sha256(nar) + ".nar.zst"
    assert request(worker, "PUT", path, bearer(tokens.mint()), nar)[0] == 201
    assert request(worker, "PUT", path, bearer(tokens.mint()), nar)[0] == 200
    assert request(worker, "GET", path)[2] == nar


def test_oversize_body_is_413_with_a_hint(worker: Worker, tokens: Tokens):
    nar = b"\0" * (MAX_REQUEST_BYTES + 1)
    path = "/nar/" + nix32_sha256(nar) + ".nar"
    status, _, body = request(worker, "PUT", path, bearer(tokens.mint()), nar)
    assert status == 413
    assert b"nixflare push" in body
    assert status_of(worker, path) == 404


def test_chunked_body_is_411(worker: Worker, tokens: Tokens):
    import http.client

    conn = http.client.HTTPConnection(worker.host, worker.port, timeout=30)
    conn.request("PUT", ABSENT_NAR, body=iter([b"abc"]), headers=bearer(tokens.mint()), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()
    assert status_of(worker, ABSENT_NAR) == 404


def tamper_sig(narinfo: str) -> str:
    sig = field(narinfo, "Sig")
    name, b64 = sig.split(":", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[0] ^= 1
    return narinfo.replace(sig, f"{name}:{base64.b64encode(bytes(raw)).decode()}")


@pytest.mark.parametrize(
    "case, expected, reason",
    [
        ("bad-sig", 400, b"no Sig verifies"),
        ("unknown-key-sig", 400, b"no Sig verifies"),
        ("garbled-sig", 400, b"narinfo Sig"),
        ("no-sig", 400, b"no Sig verifies"),
        ("url-hash-mismatch", 400, b"does not match the URL"),
        ("nar-missing", 400, b"upload the NAR first"),
        ("file-size-mismatch", 400, b"FileSize"),
        ("malformed-line", 400, b"not 'Key: value'"),
        # Lines Nix would read differently: refused, whatever the signature says.
        ("nix-reads-another-url", 400, b"not 'Key: value'"),
        ("value-on-next-line", 400, b"not 'Key: value'"),
        ("crlf", 400, b"not 'Key: value'"),
        ("empty-deriver", 400, b"narinfo Deriver"),
        # Unsigned fields must bind the narinfo to exactly the NAR in its URL.
        ("no-file-hash", 400, b"no FileHash"),
        ("no-file-size", 400, b"no FileSize"),
        ("file-hash-mismatch", 400, b"FileHash does not match"),
        ("duplicate-field", 400, b"more than once"),
        ("url-traversal", 400, b"narinfo URL"),
        ("br-encoded", 415, b"Content-Encoding"),
        ("invalid-gzip", 400, b"not valid gzip"),
        ("gzip-bomb", 413, b"decodes to over"),
        ("oversize", 413, b"limit for a narinfo"),
    ],
)
def test_bad_narinfos_are_refused(worker: Worker, tokens: Tokens, signed, leaf, case, expected, reason):
    closure, good, wrong = signed
    path, text, _, _ = leaf
    headers = bearer(tokens.mint())
    target = path
    if case == "bad-sig":
        text = tamper_sig(text)
    elif case == "unknown-key-sig":
        text = (wrong / path.lstrip("/")).read_text()
    elif case == "garbled-sig":
        text = text.replace(field(text, "Sig"), "e2e-test-1:not*base64")
    elif case == "no-sig":
        text = "".join(line + "\n" for line in text.splitlines() if not line.startswith("Sig:"))
    elif case == "url-hash-mismatch":
        middle = next(p for p in closure.paths if "-middle-" in p)
        target = narinfo_of(good, middle)[0]
    elif case == "nar-missing":
        top = next(p for p in closure.paths if "-top-" in p)
        target, text = narinfo_of(good, top)
    elif case == "file-size-mismatch":
        size = field(text, "FileSize")
        text = text.replace(f"FileSize: {size}", f"FileSize: {int(size) + 1}")  # not signed: checked against R2
    elif case == "malformed-line":
        text += "no colon here\n"
    elif case == "nix-reads-another-url":
        text += "URL:xhttp://elsewhere/evil.nar#: y\n"
    elif case == "value-on-next-line":
        text = text.replace("URL: nar/", "URL:\nnar/")
    elif case == "crlf":
        text = text.replace("\n", "\r\n")
    elif case == "empty-deriver":
        text = text.replace(f"Deriver: {field(text, 'Deriver')}", "Deriver: ")
    elif case in ("no-file-hash", "no-file-size"):
        name = {"no-file-hash": "FileHash", "no-file-size": "FileSize"}[case]
        text = "".join(line + "\n" for line in text.splitlines() if not line.startswith(name + ":"))
    elif case == "file-hash-mismatch":
        text = text.replace(f"FileHash: {field(text, 'FileHash')}", "FileHash: sha256:" + "1" * 52)
    elif case == "duplicate-field":
        text += "NarSize: 1\n"
    elif case == "url-traversal":
        text = text.replace("URL: nar/", "URL: nar/../")
    elif case == "oversize":
        text += "X: " + "y" * (1 << 20) + "\n"
    body = text.encode()
    if case == "br-encoded":
        headers["Content-Encoding"] = "br"
    elif case == "invalid-gzip":
        headers["Content-Encoding"] = "gzip"
        body = b"\x1f\x8b" + os.urandom(200)
    elif case == "gzip-bomb":
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(text.encode() + b"X: " + b"y" * (64 << 20) + b"\n")
        assert len(body) < 1 << 20, "the bomb itself is under the narinfo limit"
    status, _, resp = request(worker, "PUT", target, headers, body)
    assert status == expected, resp
    assert reason in resp, resp
    assert status_of(worker, target) == 404, "nothing published"


def test_compressed_metadata_is_stored_decoded(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """Nix >= 2.32 with narinfo-compression / ls-compression sends Content-Encoding."""
    import zlib

    # A closure of its own: the middle path's reference goes first (the cache publishes
    # only whole closures), and the module's `leaf` stays unpublished for other tests.
    closure = build_closure(nix, salt="-" + os.urandom(6).hex())
    good = tmp_path / "cache"
    nix("copy", "--to", f"file://{good}?secret-key={keys.secret_file}&compression=xz", closure.top)
    write = bearer(tokens.mint())
    leaf_path, leaf_text = narinfo_of(good, next(p for p in closure.paths if "-leaf-" in p))
    leaf_nar = (good / field(leaf_text, "URL")).read_bytes()
    assert request(worker, "PUT", "/" + field(leaf_text, "URL"), write, leaf_nar)[0] in (200, 201)
    assert request(worker, "PUT", leaf_path, write, leaf_text.encode())[0] == 201
    middle = next(p for p in closure.paths if "-middle-" in p)
    path, text = narinfo_of(good, middle)
    nar = (good / field(text, "URL")).read_bytes()
    assert request(worker, "PUT", "/" + field(text, "URL"), write, nar)[0] in (200, 201)
    gz = dict(write, **{"Content-Encoding": "gzip"})
    assert request(worker, "PUT", path, gz, gzip.compress(text.encode()))[0] == 201
    status, headers, body = request(worker, "GET", path)
    assert (status, body) == (200, text.encode())
    assert "content-encoding" not in headers

    listing = b'{"version":1,"root":{"type":"directory","entries":{}}}'
    ls = f"/{'4' * 32}.ls"
    deflate = dict(write, **{"Content-Encoding": "deflate"})
    assert request(worker, "PUT", ls, deflate, zlib.compress(listing))[0] == 201
    assert request(worker, "GET", ls)[2] == listing

    log = f"/log/{'4' * 32}-x.drv"
    status, _, body = request(worker, "PUT", log, gz, gzip.compress(b"log\n"))
    assert status == 415 and b"log-compression" in body
    assert status_of(worker, log) == 404


def test_publish_then_conflict_then_overwrite(worker: Worker, tokens: Tokens, leaf):
    path, text, _, _ = leaf
    write = bearer(tokens.mint())
    assert request(worker, "PUT", path, write, text.encode())[0] == 201
    assert request(worker, "PUT", path, write, text.encode())[0] == 200, "same narinfo again"
    # Still validly signed (unknown keys are not signed), but different bytes.
    different = text + "Comment: rebuilt\n"
    status, _, body = request(worker, "PUT", path, write, different.encode())
    assert status == 409, body
    assert request(worker, "GET", path)[2] == text.encode()
    assert request(worker, "PUT", path, bearer(tokens.mint("write,overwrite")), different.encode())[0] == 201
    assert request(worker, "GET", path)[2] == different.encode()


def test_delete_needs_delete_permission(worker: Worker, tokens: Tokens):
    nar = os.urandom(500)
    path = "/nar/" + nix32_sha256(nar) + ".nar"
    assert request(worker, "PUT", path, bearer(tokens.mint()), nar)[0] == 201
    assert request(worker, "DELETE", path, bearer(tokens.mint("read,write")))[0] == 403
    assert status_of(worker, path) == 200
    assert request(worker, "DELETE", path, bearer(tokens.mint("delete")))[0] == 204
    assert status_of(worker, path) == 404


def test_side_files(worker: Worker, tokens: Tokens):
    write = bearer(tokens.mint())
    h = "2" * 32
    listing = b'{"version":1,"root":{"type":"regular","size":3}}'
    assert request(worker, "PUT", f"/{h}.ls", write, listing)[0] == 201
    assert request(worker, "GET", f"/{h}.ls")[2] == listing
    status, _, body = request(worker, "PUT", f"/{'3' * 32}.ls", write, b"{not json")
    assert status == 400 and b"not valid JSON" in body
    assert status_of(worker, f"/{'3' * 32}.ls") == 404
    log = b"building...\ndone\n"
    drv = f"/log/{h}-x.drv"
    assert request(worker, "PUT", drv, write, log)[0] == 201
    assert request(worker, "GET", drv)[2] == log
    assert request(worker, "PUT", "/nix-cache-info", write, b"StoreDir: /x\n")[0] == 200
    assert request(worker, "GET", "/nix-cache-info")[2].startswith(b"StoreDir: /nix/store\n")
    assert request(worker, "PUT", "/nix-cache-info", {}, b"x")[0] == 401
    assert request(worker, "PUT", "/public-keys", write, b"x")[0] == 405


@pytest.mark.parametrize("path", ["/nar/..%2fsecret.txt", "/log/..%2f..%2fx", "/x.narinfo", "/_nixflare/revocations/zz"])
def test_put_to_malformed_paths_is_404(worker: Worker, tokens: Tokens, path):
    status, _, _ = request(worker, "PUT", path, bearer(tokens.mint()), b"data")
    assert status == 404
