"""The read path's HTTP contract, checked over the wire against workerd."""

from pathlib import Path

import pytest

from conftest import DECOY_KEYS, Keys, Worker, get_object, request

ABSENT_HASH = "0" * 32  # a valid store path hash nobody pushed


@pytest.fixture(scope="module")
def stored(file_cache: Path) -> dict[str, Path]:
    """Protocol path -> file the worker's R2 holds for it."""
    return {
        "/" + f.relative_to(file_cache).as_posix(): f
        for f in file_cache.rglob("*")
        if f.is_file() and f.name != "nix-cache-info"
    }


def first(stored: dict[str, Path], suffix: str) -> tuple[str, bytes]:
    path = sorted(p for p in stored if p.endswith(suffix))[0]
    return path, stored[path].read_bytes()


def biggest_nar(stored: dict[str, Path]) -> tuple[str, bytes]:
    path = max((p for p in stored if p.startswith("/nar/")), key=lambda p: stored[p].stat().st_size)
    return path, stored[path].read_bytes()


def test_nix_cache_info(worker: Worker):
    status, headers, body = request(worker, "GET", "/nix-cache-info")
    assert status == 200
    assert headers["content-type"] == "text/x-nix-cache-info"
    assert body == b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"


def test_public_keys(worker: Worker, keys: Keys):
    status, headers, body = request(worker, "GET", "/public-keys")
    assert status == 200
    assert body.decode() == keys.public + "\n"


def test_narinfo_get(worker: Worker, stored):
    path, expected = first(stored, ".narinfo")
    status, headers, body = request(worker, "GET", path)
    assert status == 200
    assert body == expected
    assert headers["content-type"] == "text/x-nix-narinfo"
    assert headers["content-length"] == str(len(expected))
    assert headers["etag"].startswith('"')
    assert "max-age=86400" in headers["cache-control"]
    assert "content-encoding" not in headers


@pytest.mark.parametrize("kind", [".narinfo", ".ls", ".nar.xz"])
def test_head_matches_get_without_body(worker: Worker, stored, kind):
    path, expected = first(stored, kind)
    _, get_headers, _ = request(worker, "GET", path)
    status, headers, body = request(worker, "HEAD", path)
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len(expected))
    for name in ("content-type", "etag", "cache-control", "accept-ranges"):
        assert headers[name] == get_headers[name], name


def test_nar_get_streams_whole_file(worker: Worker, stored):
    path, expected = biggest_nar(stored)
    assert len(expected) > 4096, "fixture NAR too small to test ranges"
    status, headers, body = request(worker, "GET", path)
    assert status == 200
    assert body == expected
    assert headers["content-type"] == "application/x-nix-nar"
    assert headers["content-length"] == str(len(expected))
    assert headers["accept-ranges"] == "bytes"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-encoding" not in headers


def test_listing_is_json(worker: Worker, stored):
    path, expected = first(stored, ".ls")
    status, headers, body = request(worker, "GET", path)
    assert (status, body) == (200, expected)
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "spec, start, end",
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, None),
        ("bytes=-500", -500, None),
        ("bytes=100-100", 100, 100),
    ],
)
def test_single_range(worker: Worker, stored, spec, start, end):
    path, data = biggest_nar(stored)
    size = len(data)
    first_byte = start if start >= 0 else size + start
    last_byte = size - 1 if end is None else end
    status, headers, body = request(worker, "GET", path, {"Range": spec})
    assert status == 206
    assert body == data[first_byte : last_byte + 1]
    assert headers["content-range"] == f"bytes {first_byte}-{last_byte}/{size}"
    assert headers["content-length"] == str(last_byte - first_byte + 1)


def test_range_past_the_end_is_416(worker: Worker, stored):
    path, data = biggest_nar(stored)
    status, headers, body = request(worker, "GET", path, {"Range": f"bytes={len(data)}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(data)}"
    assert body == b""


def test_multi_range_gets_whole_object(worker: Worker, stored):
    path, data = biggest_nar(stored)
    status, _, body = request(worker, "GET", path, {"Range": "bytes=0-1,5-6"})
    assert (status, body) == (200, data)


def test_if_none_match(worker: Worker, stored):
    path, expected = first(stored, ".narinfo")
    _, headers, _ = request(worker, "GET", path)
    etag = headers["etag"]
    status, headers304, body = request(worker, "GET", path, {"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers304["etag"] == etag
    status, _, body = request(worker, "GET", path, {"If-None-Match": '"something-else"'})
    assert (status, body) == (200, expected)


def test_missing_narinfo_is_404_briefly_cached(worker: Worker):
    status, headers, body = request(worker, "GET", f"/{ABSENT_HASH}.narinfo")
    assert status == 404
    assert headers["cache-control"] == "public, max-age=60"
    assert body == b"404 not found\n"
    status, _, body = request(worker, "HEAD", f"/{ABSENT_HASH}.narinfo")
    assert (status, body) == (404, b"")


@pytest.mark.parametrize(
    "path",
    [
        "/secret.txt",
        "/nar/secret.txt",
        "/nar/..%2fsecret.txt",
        "/nar/%2e%2e%2fsecret.txt",
        "/log/..%2f..%2fsecret.txt",
        "/log/..%252f..%252fsecret.txt",
        "/nar/../secret.txt",
        "/nar/%2e%2e/secret.txt",
        "/%2e%2e/secret.txt",
        f"/{ABSENT_HASH.upper()}.narinfo",
        f"/{ABSENT_HASH}.narinfo/",
        f"//{ABSENT_HASH}.narinfo",
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
        "/nar/0000.nar.xz",
        "/nix-cache-info.bak",
        "/nar/",
        "/log/",
    ],
)
def test_malformed_and_traversal_paths_are_404(worker: Worker, path):
    """Decoy objects sit under exactly these raw keys in R2; none may be served."""
    status, _, body = request(worker, "GET", path)
    assert status == 404, body
    assert b"must never be served" not in body


@pytest.mark.parametrize("key", DECOY_KEYS)
def test_decoys_really_sit_in_r2(worker: Worker, key):
    """Positive control for the test above: the decoys are there to be found."""
    assert get_object(worker.persist, key) == b"must never be served\n"


@pytest.mark.parametrize("method", ["POST", "PATCH", "OPTIONS"])
def test_other_methods_are_405(worker: Worker, stored, method):
    path, expected = first(stored, ".narinfo")
    status, headers, body = request(worker, method, path, body=b"StorePath: /nix/store/x\n")
    assert status == 405
    assert headers["allow"] == "GET, HEAD, PUT, DELETE"
    assert body.startswith(b"405 ")
    assert request(worker, "GET", path)[2] == expected


def test_landing_page_is_served(worker: Worker):
    status, headers, body = request(worker, "GET", "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"extra-substituters" in body


def test_read_path_and_landing_page_need_no_configuration(stored: dict[str, Path], tmp_path):
    """A worker whose variables do not parse still serves stored files and its page:
    neither reads configuration (the anonymous read path is R2 only). What is made from
    configuration says the cache is misconfigured."""
    from conftest import put_objects, running_worker

    narinfo, body = first(stored, ".narinfo")
    put_objects(tmp_path, [(narinfo[1:], stored[narinfo])])
    with running_worker(tmp_path, {"MAX_REQUEST_BYTES": "lots"}, ready_path="/") as broken:
        status, _, got = request(broken, "GET", narinfo)
        assert (status, got) == (200, body)
        assert request(broken, "HEAD", narinfo)[0] == 200
        assert request(broken, "GET", f"/{ABSENT_HASH}.narinfo")[0] == 404
        assert request(broken, "GET", "/")[0] == 200
        status, _, reason = request(broken, "GET", "/nix-cache-info")
        assert (status, reason) == (500, b"500 cache misconfigured: see the worker log\n")
