"""The worker's multipart NAR endpoints, spoken to directly over HTTP (the `nixflare push`
tests drive them through the client). Every refusal leaves nothing under `nar/`."""

import json
import os
import urllib.parse
import urllib.request

import pytest

from conftest import MAX_REQUEST_BYTES, Tokens, Worker, bearer, list_keys, nix32_sha256, request

MIB = 1 << 20
# A well-formed upload id nobody opened: `<32 hex nonce>.<R2's id>`.
UNKNOWN_ID = "0" * 32 + ".nonexistent"


def upload_path(data: bytes, ext: str = ".zst") -> str:
    return f"/_nixflare/uploads/nar/{nix32_sha256(data)}.nar{ext}"


def create(worker: Worker, token: str, path: str) -> str:
    status, _, body = request(worker, "POST", path + "?uploads", bearer(token), b"")
    assert status == 201, body
    reply = json.loads(body)
    assert reply["maxRequestBytes"] == MAX_REQUEST_BYTES
    return reply["uploadId"]


def put_part(worker: Worker, token: str, path: str, upload_id: str, number: int, data: bytes):
    query = urllib.parse.urlencode({"partNumber": number, "uploadId": upload_id})
    return request(worker, "PUT", f"{path}?{query}", bearer(token), data)


def complete(worker: Worker, token: str, path: str, upload_id: str, etags: list[str]):
    query = urllib.parse.urlencode({"uploadId": upload_id})
    body = "".join(f"{n} {etag}\n" for n, etag in enumerate(etags, 1)).encode()
    return request(worker, "POST", f"{path}?{query}", bearer(token), body)


def upload_parts(worker, token, path, upload_id, data: bytes, part_size: int) -> list[str]:
    etags = []
    for n, start in enumerate(range(0, len(data), part_size), 1):
        status, _, body = put_part(worker, token, path, upload_id, n, data[start:start + part_size])
        assert status == 200, body
        reply = json.loads(body)
        assert reply["partNumber"] == n
        etags.append(reply["etag"])
    return etags


def nar_path(path: str) -> str:
    return path.replace("/_nixflare/uploads", "")


def test_parts_assemble_into_a_verified_nar(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    data = os.urandom(13 * MIB + 12345)
    path = upload_path(data)
    upload_id = create(worker, token, path)
    etags = upload_parts(worker, token, path, upload_id, data, 6 * MIB)
    assert len(etags) == 3
    # Nothing is visible until the upload is complete...
    assert request(worker, "GET", nar_path(path))[0] == 404
    # ...and the staging object is never served: the upload route takes no GET.
    status, headers, _ = request(worker, "GET", path)
    assert status == 405 and "GET" not in headers["allow"], headers
    status, _, body = complete(worker, token, path, upload_id, etags)
    assert status == 201, body
    status, headers, served = request(worker, "GET", nar_path(path))
    assert status == 200 and served == data
    assert headers["content-type"] == "application/x-nix-nar"
    assert list_keys(worker.persist, "_nixflare/uploads/") == []
    assert list_keys(worker.persist, "_nixflare/pending/") == []
    # Starting again for a NAR that is present says so instead of opening an upload.
    status, _, body = request(worker, "POST", path + "?uploads", bearer(token), b"")
    assert (status, json.loads(body)) == (200, {"present": True})


def test_assembled_bytes_must_hash_to_the_name(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    data = os.urandom(6 * MIB)
    path = upload_path(b"something else")
    upload_id = create(worker, token, path)
    etags = upload_parts(worker, token, path, upload_id, data, 5 * MIB)
    status, _, body = complete(worker, token, path, upload_id, etags)
    assert status == 400, body
    assert b"does not hash to the name" in body and body.count(b"\n") == 1
    assert request(worker, "GET", nar_path(path))[0] == 404
    assert list_keys(worker.persist, "_nixflare/uploads/") == []


def test_small_parts_but_the_last_are_refused(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    data = os.urandom(6 * MIB)
    path = upload_path(data)
    upload_id = create(worker, token, path)
    etags = upload_parts(worker, token, path, upload_id, data, 3 * MIB)
    status, _, body = complete(worker, token, path, upload_id, etags)
    assert status == 400, body
    assert b"R2 refused the upload" in body, body
    assert request(worker, "GET", nar_path(path))[0] == 404
    request(worker, "DELETE", f"{path}?uploadId={urllib.parse.quote(upload_id)}", bearer(token))


def test_a_part_over_the_request_limit_is_413(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    path = upload_path(b"x")
    upload_id = create(worker, token, path)
    status, _, body = put_part(worker, token, path, upload_id, 1, b"\0" * (MAX_REQUEST_BYTES + 1))
    assert status == 413, body
    request(worker, "DELETE", f"{path}?uploadId={urllib.parse.quote(upload_id)}", bearer(token))


def test_abort_then_the_upload_is_gone(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    data = os.urandom(5 * MIB)
    path = upload_path(data)
    upload_id = create(worker, token, path)
    assert len(list_keys(worker.persist, "_nixflare/pending/")) == 1
    status, _, _ = request(worker, "DELETE", f"{path}?uploadId={urllib.parse.quote(upload_id)}", bearer(token))
    assert status == 204
    assert list_keys(worker.persist, "_nixflare/pending/") == []
    status, _, body = put_part(worker, token, path, upload_id, 1, data)
    assert status == 404 and b"no such upload" in body


@pytest.mark.parametrize(
    "query, status",
    [
        ("", 400),  # no action
        ("?uploadId=", 400),
        ("?uploadId=x&partNumber=0", 400),
        ("?uploadId=x&partNumber=10001", 400),
        ("?uploadId=a%20b&partNumber=1", 400),
        ("?uploadId=nonexistent&partNumber=1", 400),
        (f"?uploadId={UNKNOWN_ID}&partNumber=1", 404),
    ],
)
def test_malformed_part_requests(worker: Worker, tokens: Tokens, query, status):
    path = upload_path(b"y")
    got, _, body = request(worker, "PUT", path + query, bearer(tokens.mint()), b"z" * 10)
    assert got == status, body
    assert body.count(b"\n") == 1


def test_malformed_part_lists(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    path = upload_path(b"w")
    for body in [b"", b"2 abc\n", b"1 a\n1 a\n", b"one abc\n", b"\xff\n"]:
        status, _, reply = request(worker, "POST", f"{path}?uploadId=abc", bearer(token), body)
        assert status == 400, (body, reply)


@pytest.mark.parametrize("method, query", [("POST", "?uploads"), ("PUT", f"?uploadId={UNKNOWN_ID}&partNumber=1"),
                                           ("POST", f"?uploadId={UNKNOWN_ID}"), ("DELETE", f"?uploadId={UNKNOWN_ID}")])
def test_every_step_needs_a_write_token(worker: Worker, tokens: Tokens, method, query):
    path = upload_path(b"v")
    assert request(worker, method, path + query, {}, b"")[0] == 401
    assert request(worker, method, path + query, bearer(tokens.mint("read")), b"")[0] == 403
    assert list_keys(worker.persist, "_nixflare/pending/") == []


def test_cron_aborts_abandoned_uploads(worker: Worker, tokens: Tokens):
    token = tokens.mint()
    data = os.urandom(5 * MIB)
    path = upload_path(data)
    upload_id = create(worker, token, path)
    assert put_part(worker, token, path, upload_id, 1, data)[0] == 200
    assert len(list_keys(worker.persist, "_nixflare/pending/")) == 1
    # The e2e worker's cron clock runs two days ahead: every unfinished upload is abandoned.
    with urllib.request.urlopen(f"{worker.url}/__scheduled?cron=17+*+*+*+*", timeout=30) as r:
        assert r.status == 200
    assert list_keys(worker.persist, "_nixflare/pending/") == []
    status, _, body = complete(worker, token, path, upload_id, ["x"])
    assert status in (400, 404), body
    assert request(worker, "GET", nar_path(path))[0] == 404


def test_two_uploads_of_one_nar_never_touch_each_other(worker: Worker, tokens: Tokens):
    """Each upload has its own staging object: a poisoned upload of the same NAR,
    completed at the same moment, neither feeds its bytes into nor removes those of an
    honest one. (The local R2 does not interleave the two completions finely enough to
    show the old shared staging object failing; core::multipart's tests pin the keys.)"""
    import threading

    token = tokens.mint()
    for attempt in range(4):
        data = os.urandom(7 * MIB)
        path = upload_path(data)
        honest, poisoned = create(worker, token, path), create(worker, token, path)
        assert honest != poisoned
        etags = {
            honest: upload_parts(worker, token, path, honest, data, 5 * MIB),
            poisoned: upload_parts(worker, token, path, poisoned, os.urandom(len(data)), 5 * MIB),
        }
        barrier, replies = threading.Barrier(2), {}

        def finish(upload_id):
            barrier.wait()
            replies[upload_id] = complete(worker, token, path, upload_id, etags[upload_id])

        threads = [threading.Thread(target=finish, args=(u,)) for u in (honest, poisoned)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert replies[honest][0] == 201, (attempt, replies[honest][2])
        assert replies[poisoned][0] in (200, 400), (attempt, replies[poisoned][2])
        assert request(worker, "GET", nar_path(path))[2] == data, attempt
        assert [k for k in list_keys(worker.persist, "_nixflare/uploads/") if nar_path(path)[5:] in k] == []


def test_the_cron_ages_uploads_from_their_last_part(keys, tokens: Tokens, tmp_path):
    """With its clock a day less 4 seconds ahead, the cron abandons what saw no part for
    more than 4 seconds."""
    import time

    from conftest import running_worker

    with running_worker(tmp_path, {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public,
                                   "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
                                   "TEST_CLOCK_OFFSET_SECONDS": str(86400 - 4)},
                        extra_args=("--test-scheduled",)) as own:
        url = own.url
        token = tokens.mint()
        data = os.urandom(5 * MIB)
        idle_path, busy_path = upload_path(data, ".xz"), upload_path(data, ".zst")
        idle, busy = create(own, token, idle_path), create(own, token, busy_path)
        time.sleep(6)
        assert put_part(own, token, busy_path, busy, 1, data)[0] == 200
        with urllib.request.urlopen(f"{url}/__scheduled?cron=17+*+*+*+*", timeout=30) as r:
            assert r.status == 200
        pending = list_keys(tmp_path, "_nixflare/pending/")
        assert len(pending) == 1 and nar_path(busy_path)[5:] in pending[0], pending
        assert put_part(own, token, idle_path, idle, 1, data)[0] == 404
        assert put_part(own, token, busy_path, busy, 1, data)[0] == 200


def test_info_and_whoami(worker: Worker, tokens: Tokens):
    status, headers, body = request(worker, "GET", "/_nixflare/info")
    assert status == 200 and headers["content-type"] == "application/json"
    info = json.loads(body)
    assert info["maxRequestBytes"] == MAX_REQUEST_BYTES
    assert info["minPartBytes"] == 5 * MIB
    assert len(info["publicKeys"]) == 1
    token = tokens.mint("read,write", subject="who")
    status, _, body = request(worker, "GET", "/_nixflare/whoami", bearer(token))
    assert status == 200, body
    claims = json.loads(body)
    assert claims["subject"] == "who" and claims["permissions"] == "read,write"
    assert claims["tokenId"] == tokens.id_of(token)
    assert request(worker, "GET", "/_nixflare/whoami")[0] == 401
    assert request(worker, "GET", "/_nixflare/whoami", bearer("nixflare1_garbage"))[0] == 401
