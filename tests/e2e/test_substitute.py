"""Stock Nix substitutes a closure from the worker, and refuses it under a wrong key."""

import json
from pathlib import Path

from conftest import Closure, Keys, Nix, Worker


def path_info(nix: Nix, store: Path, path: str) -> dict[str, str]:
    """path -> NarHash for the closure of `path` as `store` holds it."""
    info = json.loads(nix("path-info", "--store", str(store), "--json", "--recursive", path).stdout)
    items = info if isinstance(info, list) else [dict(v, path=k) for k, v in info.items()]
    return {item["path"]: item["narHash"] for item in items}


def test_nix_copy_from_worker_into_fresh_store(nix: Nix, worker: Worker, keys: Keys, closure: Closure, tmp_path):
    store = tmp_path / "store"
    nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public, closure.top)

    # Every path arrived, with the NAR hash the building store has: bytes are intact.
    assert path_info(nix, store, closure.top) == closure.nar_hashes
    hello = store / closure.top.lstrip("/") / "bin" / "hello"
    assert hello.read_text() == "#!/bin/sh\necho hello from nixflare\n"
    assert hello.stat().st_mode & 0o111, "executable bit lost"


def test_substituter_setting_realises_closure(nix: Nix, worker: Worker, keys: Keys, closure: Closure, tmp_path):
    """The way users configure a cache: `substituters` + `trusted-public-keys`."""
    store = tmp_path / "store"
    nix.store(
        "--store", str(store), "--realise", closure.top,
        "--option", "substituters", worker.url,
        "--option", "trusted-public-keys", keys.public,
    )
    assert sorted(path_info(nix, store, closure.top)) == closure.paths


def test_wrong_public_key_is_refused(nix: Nix, worker: Worker, keys: Keys, closure: Closure, tmp_path):
    store = tmp_path / "store"
    proc = nix(
        "copy", "--from", worker.url, "--to", str(store),
        "--option", "trusted-public-keys", keys.wrong_public, closure.top,
        check=False,
    )
    assert proc.returncode != 0
    assert "signature" in proc.stderr, proc.stderr
    assert not (store / closure.top.lstrip("/")).exists()
