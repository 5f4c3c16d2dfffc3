"""Pushing what is built, by itself: saved settings (`login`), Nix's post-build-hook
feeding a durable queue (`hook`), the queue's drainer (`watch`) surviving a cache that is
down and SIGKILLs, and `watch-store` for users who cannot set a hook."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (CLI, CLOSURE_EXPR, MK, Keys, Nix, RecordingProxy, Tokens, Worker, build_closure,
                      request, run)
from test_push import PUSH_EXPR, nar_hashes, narinfo_of


class Background:
    """A `nixflare` process whose stderr is collected line by line as it runs."""

    def __init__(self, cmd: list[str], env: dict, kill_on: str | None = None):
        self.kill_on = kill_on
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            # SIGKILL from here, the moment the line is read: no polling delay.
            if self.kill_on and self.kill_on in line and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.lines):
            if self.proc.poll() is not None and not self.reader.is_alive():
                raise AssertionError(f"exited ({self.proc.returncode}) before {needle!r}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.text()[-4000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(timeout=5)


def wait_until(predicate, timeout: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s\n{log()[-4000:]}")
        time.sleep(0.1)


def entries(queue: Path) -> list[Path]:
    return sorted(queue.glob("*.paths")) if queue.exists() else []


def hook_script(tmp_path: Path, queue: Path) -> Path:
    """What the README tells users to install as Nix's post-build-hook."""
    script = tmp_path / "nixflare-hook"
    script.write_text(f"#!/bin/sh\nexec {CLI} hook --queue {queue}\n")
    script.chmod(0o755)
    return script


def substitutes(nix: Nix, worker: Worker, keys: Keys, top: str, store: Path) -> dict[str, str]:
    nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public, top)
    return nar_hashes(nix, str(store), top)


def test_hook_queues_while_the_cache_is_down_then_watch_pushes_it_all(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    proxy = RecordingProxy(worker)
    proxy.down = True
    queue = tmp_path / "queue"
    # Made by its watcher's user, as the README says (the hook never creates it).
    queue.mkdir(mode=0o700)
    hook = hook_script(tmp_path, queue)
    watcher = None
    try:
        salt = "-hook-" + os.urandom(6).hex()
        top = run(["nix-build", "--no-out-link", "-E", CLOSURE_EXPR, "--argstr", "salt", salt,
                   "--option", "post-build-hook", str(hook)], env=nix.env).stdout.strip()
        hashes = nar_hashes(nix, None, top)
        # One entry per build, naming its output (or, as Nix 2.8.0 leaves OUT_PATHS
        # empty, its derivation); nothing was sent anywhere.
        queued = [p.read_text().split() for p in entries(queue)]
        assert len(queued) == 3 and all(len(entry) == 1 for entry in queued), queued
        named = [entry[0] for entry in queued]
        outputs = [nix.store("--query", "--outputs", p).stdout.strip() if p.endswith(".drv") else p
                   for p in named]
        assert sorted(outputs) == sorted(hashes), queued
        assert proxy.log == [] and proxy.refused == 0

        env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint())
        watcher = Background([str(CLI), "watch", "--cache", proxy.url, "--key", str(keys.secret_file),
                              "--queue", str(queue), "--spool-dir", str(tmp_path / "spool"),
                              "--attempts", "1"], env)
        # The cache is down: the watcher says so and keeps every entry.
        watcher.wait_for("retrying in")
        assert len(entries(queue)) == 3 and proxy.refused > 0
        proxy.down = False
        wait_until(lambda: not entries(queue), 120, "the queue did not empty", watcher.text)
        assert watcher.proc.poll() is None, "the watcher stopped"
        watcher.wait_for("3 sent")

        assert substitutes(nix, worker, keys, top, tmp_path / "store") == hashes
        # No NAR or narinfo went up twice (a NAR the cache had, such as the leaf's
        # bytes under another name, not at all).
        puts = [path for path, status in proxy.puts() if 200 <= status < 300]
        assert len(puts) == len(set(puts)), puts
        # The narinfos went in a batch, once.
        batches = [status for method, path, status in proxy.log if path == "/_nixflare/narinfos"]
        assert batches == [200], proxy.log
    finally:
        if watcher:
            watcher.kill()
        proxy.close()


# The kill points, in the order a serial, slowed push reaches them: between the parts
# of the 40 MiB NAR, after it was completed, after the narinfos were published.
KILL_POINTS = ["part 1/3 sent", "part 2/3 sent", "NAR sent in 3 parts", ": published"]


def test_watch_killed_at_any_point_loses_nothing_and_resends_nothing(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    top = run(["nix-build", "--no-out-link", "-E", PUSH_EXPR, "--argstr", "salt", os.urandom(6).hex()],
              env=nix.env).stdout.strip()
    hashes = nar_hashes(nix, None, top)
    queue = tmp_path / "queue"
    env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint(), OUT_PATHS=top)
    hook = run([str(CLI), "hook", "--queue", str(queue)], env=env)
    assert "not queued" in hook.stderr and not queue.exists(), "the hook made the queue"
    queue.mkdir(mode=0o700)
    run([str(CLI), "hook", "--queue", str(queue)], env=env)
    assert len(entries(queue)) == 1
    proxy = RecordingProxy(worker)
    cmd = [str(CLI), "watch", "--cache", proxy.url, "--key", str(keys.secret_file), "--queue", str(queue),
           "--spool-dir", str(tmp_path / "spool"), "--limit-rate", "12M", "--jobs", "1"]
    try:
        said = []
        for point in KILL_POINTS:
            watcher = Background(cmd, env, kill_on=point)
            try:
                watcher.wait_for(point)
            finally:
                watcher.kill()
            said.append(watcher.text())
            assert len(entries(queue)) == 1, f"the entry went before its closure was pushed ({point})"
        # Each run went on from where the last one was killed.
        assert "resuming, 1 of 3 parts already sent" in said[1], said[1]
        assert "sent in 3 parts (2 from an earlier run)" in said[2], said[2]
        last = run(cmd + ["--exit-when-empty", "--timeout", "300"], env=env)
        assert "resuming" not in last.stderr or "already sent" in last.stderr
        assert entries(queue) == []
        assert "the queue is empty" in last.stderr, last.stderr

        assert substitutes(nix, worker, keys, top, tmp_path / "store") == hashes
        # Once the cache accepted a NAR, a part or a narinfo, it was never sent again.
        accepted: set[str] = set()
        for path, status in proxy.puts():
            target = path.split("&uploadId=")[0] if "partNumber=" in path else path.split("?")[0]
            assert target not in accepted, f"{target} sent again after the cache accepted it"
            if 200 <= status < 300:
                accepted.add(target)
        # The narinfos went in batches, each accepted whole. (A batch a killed watcher
        # had sent may reach the cache after the next run asked what it lacks: that run
        # sends it again, and hears "unchanged".)
        batches = [status for method, path, status in proxy.log if path == "/_nixflare/narinfos"]
        assert batches and set(batches) == {200}, proxy.log
    finally:
        proxy.close()


def test_watch_store_pushes_new_paths_but_not_what_an_upstream_signed(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    upstream_key = tmp_path / "upstream.sec"
    upstream_public = run([str(CLI), "keygen", "e2e-upstream-1", "--out", str(upstream_key)]).stdout.strip()
    # A path another cache signed: made in a store of its own, put in a file:// cache
    # with the upstream's signature, to be substituted into ours while watch-store runs.
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "from-upstream").write_text(os.urandom(16).hex())
    upstream_path = nix("store", "add-file", "--store", str(elsewhere),
                        str(tmp_path / "from-upstream")).stdout.strip()
    upstream_cache = tmp_path / "upstream-cache"
    nix("copy", "--from", str(elsewhere), "--to", f"file://{upstream_cache}?secret-key={upstream_key}",
        upstream_path)

    queue = tmp_path / "queue"
    # The upstream keys come from Nix's own configuration, as they would on a user's machine.
    env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint(), NIX_CONFIG=f"trusted-public-keys = {upstream_public}")
    watcher = Background([str(CLI), "watch-store", "--cache", worker.url, "--key", str(keys.secret_file),
                          "--queue", str(queue), "--spool-dir", str(tmp_path / "spool")], env)
    try:
        watcher.wait_for("watching /nix/store")
        assert "skipping those signed by: e2e-upstream-1" in watcher.text()
        nix("copy", "--from", f"file://{upstream_cache}", "--option", "trusted-public-keys", upstream_public,
            upstream_path)
        added_file = tmp_path / "added"
        added_file.write_text(os.urandom(16).hex())
        added = nix.store("--add", str(added_file)).stdout.strip()
        built = build_closure(nix, salt="-watch-store-" + os.urandom(6).hex())

        for path in [added, *built.paths]:
            wait_until(lambda: narinfo_of(worker, path) is not None, 120, f"{path} not pushed", watcher.text)
        assert substitutes(nix, worker, keys, built.top, tmp_path / "store") == built.nar_hashes
        watcher.wait_for(f"{upstream_path}: signed by an upstream cache, not pushed")
        assert narinfo_of(worker, upstream_path) is None
        # The recipes are not pushed, only what they built.
        assert ".drv" not in "".join(line for line in watcher.lines if "closure of" in line)
        wait_until(lambda: not entries(queue), 30, "the queue did not empty", watcher.text)
    finally:
        watcher.kill()


def test_login_saves_a_cache_that_commands_then_use_without_flags(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    config = tmp_path / "config" / "config.toml"
    env = dict(nix.env, NIXFLARE_CONFIG=str(config))
    token = tokens.mint("read,write,pin,delete", subject="e2e-login")
    login = run([str(CLI), "login", "e2e", worker.url, "--signing-key", str(keys.secret_file)],
                env=env, input=token)
    assert "the token is \"e2e-login\"'s" in login.stderr and "it is the default" in login.stderr
    assert token not in login.stderr + login.stdout
    assert config.stat().st_mode & 0o777 == 0o600
    assert token in config.read_text() and str(keys.secret_file) in config.read_text()

    built = build_closure(nix, salt="-login-" + os.urandom(6).hex())
    push = run([str(CLI), "push", built.top, "--spool-dir", str(tmp_path / "spool")], env=env)
    assert f"pushed {len(built.paths)} paths" in push.stderr, push.stderr
    run([str(CLI), "pin", "add", "e2e-login", built.top], env=env)
    assert "e2e-login" in run([str(CLI), "pin", "list"], env=env).stdout
    run([str(CLI), "gc", "--dry-run"], env=env)
    assert "paths" in run([str(CLI), "info"], env=env).stdout
    # By name too, and `use` prints the Nix lines for it.
    used = run([str(CLI), "use", "e2e"], env=env).stdout
    assert f"extra-substituters = {worker.url}" in used and keys.public in used
    assert token not in used
    # The environment overrides what was saved.
    refused = run([str(CLI), "push", built.top], env=dict(env, NIXFLARE_TOKEN="garbage"), check=False)
    assert refused.returncode != 0 and "refused the upload token" in refused.stderr

    # A wrong key is caught at login, and nothing is saved.
    other = tmp_path / "other.sec"
    run([str(CLI), "keygen", "other-1", "--out", str(other)])
    wrong = run([str(CLI), "login", "x", worker.url, "--signing-key", str(other)], env=env, input=token,
                check=False)
    assert wrong.returncode != 0 and "does not trust the signing key" in wrong.stderr
    assert "[cache.x]" not in config.read_text()

    config.chmod(0o644)
    for cmd in (["push", built.top], ["info"], ["use"]):
        opened = run([str(CLI), *cmd], env=env, check=False)
        assert opened.returncode != 0 and "chmod 600" in opened.stderr, opened.stderr
        assert token not in opened.stderr
    config.chmod(0o600)
    run([str(CLI), "logout", "e2e"], env=env)
    none = run([str(CLI), "info"], env=env, check=False)
    assert none.returncode != 0 and "which cache?" in none.stderr


def test_a_queue_others_may_write_is_refused(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """What is queued gets signed: only the queue's owner (and root) may add to it."""
    queue = tmp_path / "queue"
    queue.mkdir()
    queue.chmod(0o777)
    env = dict(nix.env, NIXFLARE_TOKEN=tokens.mint(), OUT_PATHS="/nix/store/00000000000000000000000000000000-x")
    watch = run([str(CLI), "watch", "--cache", worker.url, "--key", str(keys.secret_file), "--queue", str(queue),
                 "--exit-when-empty"], env=env, check=False)
    assert watch.returncode != 0 and "may be written by other users" in watch.stderr, watch.stderr
    # The hook never fails a build: it warns, queues nothing, exits 0.
    hook = run([str(CLI), "hook", "--queue", str(queue)], env=env)
    assert "warning: the outputs were not queued" in hook.stderr
    assert list(queue.iterdir()) == []


def test_roots_hook_writes_only_into_a_real_queue_and_gives_entries_to_its_owner(nix: Nix, tmp_path):
    """On a multi-user install the hook runs as root, the watcher as a user."""
    assert os.geteuid() == 0, "the e2e tests run as root (scripts/setup.sh installs with apt-get)"
    nobody = 65534
    queue = tmp_path / "queue"
    queue.mkdir(mode=0o700)
    os.chown(queue, nobody, nobody)
    env = dict(nix.env, OUT_PATHS="/nix/store/00000000000000000000000000000000-x")
    run([str(CLI), "hook", "--queue", str(queue)], env=env)
    [entry] = entries(queue)
    assert (entry.stat().st_uid, entry.stat().st_gid, entry.stat().st_mode & 0o777) == (nobody, nobody, 0o644)
    # A link where the queue should be is not followed (its owner could point it anywhere).
    link = tmp_path / "link"
    link.symlink_to(queue)
    refused = run([str(CLI), "hook", "--queue", str(link)], env=env)
    assert "not a link" in refused.stderr and len(entries(queue)) == 1


def test_the_readmes_shell_snippet_pushes_what_the_job_builds(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """The README's "any other shell" steps, run as written: only the URL, the key's path
    and the build command are this test's."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("Any other shell, the same steps", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    salt = "-snippet-" + os.urandom(6).hex()
    build = f"nix-build --no-out-link -E {shlex.quote(CLOSURE_EXPR)} --argstr salt {salt}"
    script = (snippet.replace("https://cache.example.org", worker.url)
              .replace("./signing-key.sec", str(keys.secret_file))
              .replace("nix build .#default", build))
    assert script != snippet and build in script
    env = dict(nix.env, TOKEN=tokens.mint(), NIXFLARE_CONFIG=str(tmp_path / "config.toml"),
               NIXFLARE_QUEUE=str(tmp_path / "queue"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PATH=f"{CLI.parent}:{os.environ['PATH']}")
    done = run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path)
    assert "the queue is empty" in done.stderr, done.stderr
    top = next(line for line in done.stdout.splitlines() if line.startswith("/nix/store/"))
    hashes = nar_hashes(nix, None, top)
    assert len(hashes) == 3
    for path in hashes:
        assert narinfo_of(worker, path) is not None, f"{path} not pushed:\n{done.stderr}"
