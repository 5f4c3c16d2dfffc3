"""Publishing many narinfos in one request (`POST /_nixflare/narinfos`): each is checked
and stored exactly as a PUT of it would be, each is answered on its own, and `nixflare
push` uses it (or one PUT per narinfo where the cache takes no batches)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import (CLI, Closure, Keys, Nix, RecordingProxy, Tokens, Worker, bearer, build_closure, field,
                      list_keys, request, run, running_worker)
from test_push import assert_consistent, push_cmd, substitute


def narinfo_name(store_path: str) -> str:
    return f"{Path(store_path).name[:32]}.narinfo"


def by_name(closure: Closure, word: str) -> str:
    return next(p for p in closure.paths if f"-{word}-" in p)


class Written:
    """A closure as stock Nix writes it to a file cache (zstd), signed with `key`."""

    def __init__(self, nix: Nix, directory: Path, key: Path | None, salt: str):
        self.closure = build_closure(nix, salt=salt)
        self.dir = directory
        key_param = f"&secret-key={key}" if key else ""
        nix("copy", "--to", f"file://{directory}?compression=zstd{key_param}", self.closure.top)

    def text(self, word: str, directory: Path | None = None) -> str:
        return ((directory or self.dir) / narinfo_name(by_name(self.closure, word))).read_text()

    def signed_copy(self, nix: Nix, directory: Path, key: Path) -> Path:
        nix("copy", "--to", f"file://{directory}?compression=zstd&secret-key={key}", self.closure.top)
        return directory

    def upload_nar(self, worker: Worker, token: str, word: str) -> None:
        url = field(self.text(word), "URL")
        status, _, body = request(worker, "PUT", "/" + url, bearer(token), (self.dir / url).read_bytes())
        assert status in (200, 201), body


def publish_batch(worker: Worker, token: str, texts: list[str]) -> list[dict]:
    body = json.dumps({"narinfos": texts}).encode()
    status, _, answer = request(worker, "POST", "/_nixflare/narinfos", bearer(token), body)
    assert status == 200, answer
    results = json.loads(answer)["results"]
    assert len(results) == len(texts)
    return results


def test_a_batch_publishes_exactly_the_good_paths(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens,
                                                  tmp_path_factory):
    token = tokens.mint()
    salt = "-batch-" + os.urandom(6).hex()
    make = lambda tag, key: Written(nix, tmp_path_factory.mktemp(tag), key, salt + "-" + tag)  # noqa: E731
    good = make("good", keys.secret_file)
    wrong = make("wrong", keys.wrong_secret_file)  # signed by a key the cache does not trust
    partial = make("partial", keys.secret_file)
    lonely = make("lonely", keys.secret_file)
    squat = make("squat", None)  # unsigned
    for w, words in [(good, ["leaf", "middle", "top"]), (wrong, ["leaf", "middle"]),
                     (partial, ["leaf", "top"]),  # partial's middle NAR is not sent
                     (lonely, ["middle"]), (squat, ["leaf"])]:
        for word in words:
            w.upload_nar(worker, token, word)
    # wrong's middle signed by the trusted key: good in itself, but its leaf is refused.
    resigned = wrong.signed_copy(nix, tmp_path_factory.mktemp("resigned"), keys.secret_file)
    wrong_size = partial.text("top").replace("FileSize: ", "FileSize: 1", 1)
    forged_ca = squat.text("leaf") + "CA: fixed:r:sha256:" + "0" * 52 + "\n"
    # The good closure's top first: the worker orders references first itself.
    batch = [
        ("good top", good.text("top"), 201, None),
        ("bad signature", wrong.text("leaf"), 400, "no Sig verifies"),
        ("references the refused one", wrong.text("middle", resigned), 424, "did not publish"),
        ("good middle", good.text("middle"), 201, None),
        ("missing NAR", partial.text("middle"), 400, "upload the NAR first"),
        ("wrong FileSize", wrong_size, 400, "FileSize"),
        ("next to refusals, needing none", partial.text("leaf"), 201, None),
        ("reference nowhere", lonely.text("middle"), 422, "neither in this cache"),
        ("CA squat", forged_ca, 400, "does not make its store path"),
        ("good leaf", good.text("leaf"), 201, None),
        ("sent twice", good.text("leaf"), 400, "twice"),
    ]
    before = set(list_keys(worker.persist))
    results = publish_batch(worker, token, [text for _, text, _, _ in batch])
    for (what, _, status, reason), result in zip(batch, results):
        assert result["status"] == status, (what, result)
        if reason is None:
            assert result["outcome"] == "created", (what, result)
        else:
            assert result["outcome"] == "refused" and reason in result["reason"], (what, result)
    # Storage otherwise unchanged: exactly the good narinfos were added.
    published = good.closure.paths + [by_name(partial.closure, "leaf")]
    added = set(list_keys(worker.persist)) - before
    assert added == {narinfo_name(p) for p in published}, added
    for w in (wrong, partial, lonely, squat):
        for path in set(w.closure.paths) - set(published):
            assert request(worker, "GET", "/" + narinfo_name(path))[0] == 404, path
    # The good closure substitutes with stock Nix.
    assert_consistent(worker, good.closure.paths)
    store = tmp_path_factory.mktemp("substituted") / "store"
    hashes = substitute(nix, worker, keys, good.closure.top, store)
    assert hashes == good.closure.nar_hashes
    # The same batch again: the good paths are unchanged (200), the rest refused again.
    again = publish_batch(worker, token, [good.text("leaf"), good.text("top")])
    assert [(r["outcome"], r["status"]) for r in again] == [("unchanged", 200)] * 2
    # Once the missing NAR is there, the refused paths go in one batch, top first.
    partial.upload_nar(worker, token, "middle")
    results = publish_batch(worker, token, [partial.text(w) for w in ("top", "middle")])
    assert [r["status"] for r in results] == [201] * 2, results
    assert_consistent(worker, partial.closure.paths)


def test_a_batch_needs_a_write_token_and_a_bounded_body(worker: Worker, tokens: Tokens):
    body = json.dumps({"narinfos": []}).encode()
    assert request(worker, "POST", "/_nixflare/narinfos", None, body)[0] == 401
    assert request(worker, "POST", "/_nixflare/narinfos", bearer(tokens.mint("read")), body)[0] == 403
    status, _, answer = request(worker, "POST", "/_nixflare/narinfos", bearer(tokens.mint()), b"{\"narinfos\": 1}")
    assert status == 400 and b"narinfos" in answer
    too_many = json.dumps({"narinfos": ["x"] * 65}).encode()
    status, _, answer = request(worker, "POST", "/_nixflare/narinfos", bearer(tokens.mint()), too_many)
    assert status == 413 and b"at most 64" in answer, answer
    assert request(worker, "GET", "/_nixflare/narinfos", bearer(tokens.mint()))[0] == 405


def test_push_without_batches_puts_each_narinfo(nix: Nix, keys: Keys, tokens: Tokens, tmp_path):
    """Against a cache that takes no batches (MAX_BATCH_NARINFOS=0, as an older worker),
    `nixflare push` publishes with one PUT per narinfo."""
    closure = build_closure(nix, salt="-nobatch-" + os.urandom(6).hex())
    variables = {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public, "MAX_BATCH_NARINFOS": "0"}
    persist = tmp_path / "r2"
    persist.mkdir()
    with running_worker(persist, variables) as worker:
        info = json.loads(request(worker, "GET", "/_nixflare/info")[2])
        assert info["maxBatchNarinfos"] == 0
        proxy = RecordingProxy(worker)
        try:
            cmd = [str(CLI), "push", "--cache", proxy.url, "--key", str(keys.secret_file),
                   "--spool-dir", str(tmp_path / "spool"), closure.top]
            run(cmd, env=dict(nix.env, NIXFLARE_TOKEN=tokens.mint()))
        finally:
            proxy.close()
        narinfo_puts = [path for path, _ in proxy.puts() if path.endswith(".narinfo")]
        assert sorted(narinfo_puts) == sorted("/" + narinfo_name(p) for p in closure.paths)
        assert request(worker, "POST", "/_nixflare/narinfos", bearer(tokens.mint()), b"{}")[0] == 404
        assert_consistent(worker, closure.paths)


def test_push_publishes_in_batches(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    closure = build_closure(nix, salt="-batched-" + os.urandom(6).hex())
    proxy = RecordingProxy(worker)
    try:
        run(push_cmd(proxy, keys, tmp_path / "spool", closure.top), env=dict(nix.env, NIXFLARE_TOKEN=tokens.mint()))
    finally:
        proxy.close()
    assert not [path for path, _ in proxy.puts() if path.endswith(".narinfo")], "no narinfo PUT"
    assert_consistent(worker, closure.paths)
    assert all(request(worker, "GET", "/" + narinfo_name(p))[0] == 200 for p in closure.paths)
