"""The landing page, rendered by a real headless Chromium (Debian's `chromium`)."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (CLI, REPO, Closure, Keys, Nix, Tokens, Worker, bearer, build_closure, request, run,
                      running_worker)


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


# Interactive checks drive Debian's chromium through Playwright; screenshots are kept in
# target/e2e-screenshots/ (git-ignored) as the run's artifacts.
SCREENSHOTS = REPO / "target" / "e2e-screenshots"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                              args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], f"the page's script failed: {errors}"


def look_up(page, text: str) -> str:
    page.fill("#lookup-input", text)
    page.click("#lookup-form button")
    page.wait_for_function("() => !document.querySelector('#lookup-result').textContent.startsWith('Looking up')"
                           " && document.querySelector('#lookup-result').textContent.length > 0")
    return page.inner_text("#lookup-result")


def test_lookup_finds_a_path_and_says_so_of_a_missing_one_and_of_garbage(page, worker: Worker, closure: Closure,
                                                                         keys: Keys):
    page.goto(worker.url + "/")
    found = look_up(page, closure.top)
    assert "In this cache." in found and closure.top in found
    refs = len(closure.paths) - 1
    assert f"Complete here: all {refs} paths it refers to are here too." in found, found
    assert f"nix copy --from {worker.url} {closure.top}" in found
    assert re.search(r"Pushed\s+(just now|\d+ (second|minute|hour|day)s? ago)", found), found
    assert re.search(rf"Signed by\s+{re.escape(keys.public.split(':')[0])}\n", found), found
    assert "unpacked" in found
    # A line of `nix build` output names it as well as the bare hash does.
    line = f"copying path '{closure.top}' from 'https://cache.nixos.org'..."
    assert "In this cache." in look_up(page, line)
    hash_only = Path(closure.top).name[:32]
    assert "In this cache." in look_up(page, hash_only)
    missing = "0" * 32
    assert f"Not in this cache ({missing})." in look_up(page, f"/nix/store/{missing}-gone")
    assert "not a store path" in look_up(page, "hello <b>world</b>")


def test_copy_buttons_put_the_snippet_on_the_clipboard(page, worker: Worker, keys: Keys):
    page.goto(worker.url + "/")
    page.wait_for_function("() => !document.querySelector('.public-keys').textContent.includes('loading')")
    page.click("#public-use pre >> nth=0 >> button.copy")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"extra-substituters = {worker.url}\nextra-trusted-public-keys = {keys.public}"
    assert page.inner_text("#public-use pre >> nth=0 >> button.copy") == "Copied"
    buttons = page.locator("button.copy").count()
    assert buttons == page.locator("pre").count() >= 5


@pytest.mark.parametrize("width", [1280, 375])
def test_snippets_never_scroll_sideways(browser, worker: Worker, width):
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(worker.url + "/")
    page.wait_for_function("() => !document.querySelector('.public-keys').textContent.includes('loading')")
    overflowing = page.evaluate("""() => [...document.querySelectorAll('pre')]
        .filter((pre) => pre.scrollWidth > pre.clientWidth).map((pre) => pre.textContent.slice(0, 60))""")
    assert overflowing == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"landing-{width}px.png"), full_page=True)
    page.close()


def test_the_chart_and_numbers_come_from_the_summary_after_a_push(page, nix: Nix, keys: Keys, tokens: Tokens,
                                                                  tmp_path):
    persist = tmp_path / "r2"
    persist.mkdir()
    closure = build_closure(nix, salt="-page-" + os.urandom(4).hex())
    with running_worker(persist, {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public}) as cache:
        assert request(cache, "GET", "/_nixflare/summary.json")[0] == 404  # nothing written yet
        env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint("read,write"))
        run([str(CLI), "push", "--cache", cache.url, "--key", str(keys.secret_file), "--spool-dir",
             str(tmp_path / "spool"), closure.top], env=env)
        # The index rewrites the summary a few seconds after the publish.
        deadline = time.monotonic() + 60
        while True:
            status, headers, body = request(cache, "GET", "/_nixflare/summary.json")
            if status == 200 and json.loads(body)["paths"] == len(closure.paths):
                break
            assert time.monotonic() < deadline, (status, body)
            time.sleep(1)
        summary = json.loads(body)
        assert headers["cache-control"] == "public, max-age=60"
        # Only the index writes it: no token may replace or remove it.
        operator = bearer(tokens.mint("read,write,overwrite,delete"))
        for method in ("PUT", "POST", "DELETE"):
            assert request(cache, method, "/_nixflare/summary.json", operator, b"{}")[0] == 405
        assert request(cache, "GET", "/_nixflare/summary.json")[2] == body
        assert summary["days"][-1]["paths"] == len(closure.paths) and "e2e" not in body.decode()
        page.goto(cache.url + "/")
        page.wait_for_selector("svg.chart")
        bars = page.eval_on_selector_all("svg.chart rect.bar", "bars => bars.map((b) => Number(b.dataset.paths))")
        assert len(bars) == 30 and bars[-1] == len(closure.paths) and sum(bars) == len(closure.paths)
        assert page.inner_text("#stat-paths b") == str(len(closure.paths))
        assert re.fullmatch(r"just now|\d+ \w+ ago", page.inner_text("#stat-last-push b"))
        assert "Keeps everything pushed" in page.inner_text("#stat-gc")
