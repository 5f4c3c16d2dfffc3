"""The landing page, rendered by a real headless Chromium (Debian's `chromium`)."""

import subprocess

from conftest import Keys, Worker


def rendered_dom(url: str, profile) -> str:
    """The DOM after the page's scripts ran (they fetch /public-keys)."""
    proc = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}",
            "--virtual-time-budget=10000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_page_shows_this_caches_url_and_key(worker: Worker, keys: Keys, tmp_path):
    dom = rendered_dom(worker.url + "/", tmp_path / "profile")
    assert "nixflare" in dom
    # The snippets a visitor copies carry the real address and the configured key.
    assert f"extra-substituters = <span class=\"cache-url\">{worker.url}</span>" in dom
    assert f"extra-trusted-public-keys = <span class=\"public-keys\">{keys.public}</span>" in dom
    assert f"\"{keys.public}\"" in dom
    assert "loading…" not in dom
    assert f"machine <span class=\"cache-host\">{worker.host}</span> login" in dom
    assert f"nixflare push --cache <span class=\"cache-url\">{worker.url}</span>" in dom
