"""The GitHub Action (action.yml, scripts/action/), run as GitHub's runner would run it,
its environment simulated: inputs as INPUT_* variables, GITHUB_ENV/GITHUB_STATE files,
RUNNER_TEMP; main.js at the start of the job, post.js (with STATE_*) at its end.

Not covered here (no GitHub runner on this machine): the runner's own node24 and its
orphan-process cleanup, `cargo install` of nixflare on a fresh runner, and restarting a
real multi-user nix-daemon in hook mode (the test's Nix is single-user)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import CLI, NIX_CONF_DIR, REPO, Keys, Nix, Tokens, Worker, build_closure, run
from test_push import narinfo_of


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped: its parent was the action's shell) has stopped too.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def runner_env(nix: Nix, tmp_path: Path, inputs: dict[str, str]) -> dict[str, str]:
    files = {name: tmp_path / name.lower() for name in
             ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_STATE", "GITHUB_STEP_SUMMARY")}
    for file in files.values():
        file.touch()
    (tmp_path / "runner-temp").mkdir()
    env = dict(nix.env, RUNNER_TEMP=str(tmp_path / "runner-temp"), GITHUB_ACTIONS="true",
               PATH=f"{CLI.parent}:{os.environ['PATH']}", **{k: str(v) for k, v in files.items()})
    env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
    return env


def lines_of(file: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in file.read_text().splitlines() if "=" in line)


@pytest.mark.parametrize("mode", ["watch-store", "hook"])
def test_the_action_pushes_what_the_job_builds(
        nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path, mode):
    token = tokens.mint(subject="github-action")
    env = runner_env(nix, tmp_path, {"cache-url": worker.url, "token": token,
                                     "signing-key": keys.secret_file.read_text(), "mode": mode,
                                     "wait-timeout": "120", "upstream": ""})
    job_nix = nix
    if mode == "hook":
        # The action adds its hook to this nix.conf instead of /etc/nix/nix.conf.
        conf_dir = tmp_path / "nix-conf"
        conf_dir.mkdir()
        shutil.copy(NIX_CONF_DIR / "nix.conf", conf_dir / "nix.conf")
        (conf_dir / "nix.conf").chmod(0o644)
        env["NIXFLARE_ACTION_NIX_CONF"] = str(conf_dir / "nix.conf")
        job_nix = Nix(dict(nix.env, NIX_CONF_DIR=str(conf_dir), NIX_USER_CONF_FILES=str(conf_dir / "nix.conf")))
    pid = None
    try:
        main = run(["node", "scripts/action/main.js"], env=env, cwd=REPO)
        pid = int(lines_of(tmp_path / "github_state")["pid"])
        assert alive(pid)
        exported = lines_of(tmp_path / "github_env")
        assert set(exported) == {"NIXFLARE_CONFIG", "NIXFLARE_QUEUE"}
        key_file = tmp_path / "runner-temp" / "nixflare" / "signing-key.sec"
        assert key_file.stat().st_mode & 0o777 == 0o600
        if mode == "hook":
            assert "post-build-hook = " in (conf_dir / "nix.conf").read_text()

        # The job's build steps.
        built = build_closure(Nix(dict(job_nix.env, **exported)), salt=f"-action-{mode}-{os.urandom(4).hex()}")

        # The runner hands the post step every GITHUB_STATE line as STATE_<name>.
        saved = {f"STATE_{k}": v for k, v in lines_of(tmp_path / "github_state").items()}
        post = run(["node", "scripts/action/post.js"], env=dict(env, **saved), cwd=REPO)
        assert "the queue is empty" in post.stdout, post.stdout
        assert "what this job pushed:" in post.stdout and "closure of" in post.stdout, post.stdout
        for path in built.paths:
            assert narinfo_of(worker, path) is not None, f"{path} not pushed:\n{post.stdout}"
        assert not alive(pid)
        assert not key_file.exists() and not Path(exported["NIXFLARE_CONFIG"]).exists()
        if mode == "hook":
            # Put back: a hook left in nix.conf would outlive RUNNER_TEMP.
            assert (conf_dir / "nix.conf").read_text() == (NIX_CONF_DIR / "nix.conf").read_text()
        assert "### nixflare" in (tmp_path / "github_step_summary").read_text()
        secret = keys.secret_file.read_text().split(":", 1)[1]
        for output in (main.stdout, main.stderr, post.stdout, post.stderr):
            assert token not in output and secret not in output
    finally:
        if pid and alive(pid):
            os.kill(pid, 9)


def test_the_action_fails_at_once_without_a_token_or_an_id_token(nix: Nix, worker: Worker, keys: Keys, tmp_path):
    env = runner_env(nix, tmp_path, {"cache-url": worker.url, "token": "",
                                     "signing-key": keys.secret_file.read_text()})
    main = run(["node", "scripts/action/main.js"], env=env, cwd=REPO, check=False)
    assert main.returncode != 0
    assert "::error::no credential: give the job 'permissions: id-token: write'" in main.stdout
    assert (tmp_path / "github_state").read_text() == ""


def test_the_action_will_not_replace_a_post_build_hook(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens,
                                                       tmp_path):
    conf = tmp_path / "nix.conf"
    conf.write_text("post-build-hook = /usr/local/bin/upload-to-cachix\n")
    env = runner_env(nix, tmp_path, {"cache-url": worker.url, "token": tokens.mint(),
                                     "signing-key": keys.secret_file.read_text(), "mode": "hook"})
    env["NIXFLARE_ACTION_NIX_CONF"] = str(conf)
    main = run(["node", "scripts/action/main.js"], env=env, cwd=REPO, check=False)
    assert main.returncode != 0 and "already sets a post-build-hook" in main.stdout, main.stdout
    assert conf.read_text() == "post-build-hook = /usr/local/bin/upload-to-cachix\n"
    assert "pid=" not in (tmp_path / "github_state").read_text()
