"""`nixflare init`, `deploy` and `rotate` from nothing to a cache Nix uses.

wrangler's account-touching commands (whoami, R2 bucket info/create, deploy) are a
recording stand-in on PATH (wrangler_standin.py); its `deploy` starts the real `wrangler
dev` on the configuration `init` generated, so every check `init` makes, and every push
and substitution here, runs against the real worker in workerd. The generated
configuration also goes through the real `wrangler deploy --dry-run`."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import signal
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CLI, REPO, WRANGLER, Nix, build_closure, nix_env, run, wrangler_env
from test_push import nar_hashes

STANDIN = Path(__file__).with_name("wrangler_standin.py")
WORKER = "my-cache"
CACHE_NAME = "cache.example.org"
ANSWERS = ["--worker", WORKER, "--cache-name", CACHE_NAME, "--bucket", "my-bucket", "--access", "public",
           "--retain-days", "30", "--max-cache-size", "50G", "--upstream", "none", "--yes", "--wait", "60"]


@dataclass
class Site:
    """A user's machine: its own HOME (nixflare's settings and deployments under it) and
    a PATH whose `wrangler` is the stand-in."""

    home: Path
    env: dict
    state: Path

    @property
    def dir(self) -> Path:
        return self.home / ".config" / "nixflare" / "deployments" / WORKER

    def cli(self, *args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
        return run([str(CLI), *args], env={**self.env, **env}, check=check, cwd=REPO)

    def calls(self) -> list[list[str]]:
        log = self.state / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def url(self, worker: str = WORKER) -> str:
        return f"http://127.0.0.1:{(self.state / f'{worker}.port').read_text()}"

    def snapshot(self) -> dict[str, str]:
        """Every file of the deployment and the saved settings, by content."""
        files = [*sorted(self.dir.rglob("*")), self.home / ".config" / "nixflare" / "config.toml"]
        return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in files if f.is_file() and ".wrangler" not in f.parts}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    wrangler = bin_dir / "wrangler"
    wrangler.write_text(f"#!/bin/sh\nexec python3 {STANDIN} \"$@\"\n")
    wrangler.chmod(0o755)
    env = nix_env(root / "home")
    env.update(wrangler_env())
    env.update(HOME=str(root / "home"), PATH=f"{bin_dir}:{os.environ['PATH']}",
               STANDIN_STATE=str(root / "state"), REAL_WRANGLER=str(WRANGLER))
    # The worker's build (make worker, up to date here) finds cargo through the real HOME.
    env["STANDIN_HOME"] = os.environ["HOME"]
    site = Site(home=root / "home", env=env, state=root / "state")
    yield site
    for pid in site.state.glob("*.pid"):
        try:
            os.killpg(int(pid.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def initialised(site: Site, tmp_path_factory):
    marker = tmp_path_factory.mktemp("marker") / "before"
    marker.touch()
    proc = site.cli("init", *ANSWERS)
    # Nothing of the deployment lands in the checkout (the builds' target/ and build/ aside).
    written = run(["find", str(REPO), "(", "-path", str(REPO / "target"), "-o", "-path", str(REPO / "build"), ")",
                   "-prune", "-o", "-newer", str(marker), "-type", "f", "-print"]).stdout.split()
    assert written == [], f"init wrote into the checkout: {written}"
    return proc


def trusted_keys(printed: str) -> str:
    return re.search(r"^extra-trusted-public-keys = (.+)$", printed, re.M).group(1)


def test_init_stands_up_a_cache_nix_substitutes_from_and_push_needs_no_flags(site: Site, initialised, tmp_path):
    # What ran against the account, in order.
    assert [c[:3] for c in site.calls()] == [
        ["whoami", "--json"], ["r2", "bucket", "info"], ["r2", "bucket", "create"], ["deploy", "--config",
                                                                                     str(site.dir / "wrangler.toml")]]
    assert site.calls()[2] == ["r2", "bucket", "create", "my-bucket"]
    # Keys: 0600, never printed.
    for name in ["signing-key-1.sec", "token-key-1.sec", "push.token", "operator.token"]:
        assert stat.S_IMODE((site.dir / name).stat().st_mode) == 0o600, name
    secrets = [(site.dir / f).read_text().split(":", 1)[-1].strip()
               for f in ["signing-key-1.sec", "token-key-1.sec", "push.token", "operator.token"]]
    for secret in secrets:
        assert len(secret) > 40 and secret not in initialised.stdout + initialised.stderr
    assert stat.S_IMODE(site.dir.stat().st_mode) == 0o700
    public = (site.dir / "signing-key-1.sec.pub").read_text().strip()
    assert public.startswith(f"{CACHE_NAME}-1:")
    url = site.url()
    assert f"extra-substituters = {url}" in initialised.stdout
    assert trusted_keys(initialised.stdout) == public
    assert "nixflare push ./result" in initialised.stdout

    # The generated configuration: the answers, and the real wrangler accepts it.
    config = (site.dir / "wrangler.toml").read_text()
    for expected in ['name = "my-cache"', 'bucket_name = "my-bucket"', 'RETAIN_DAYS = "30"',
                     'MAX_CACHE_BYTES = "50000000000"', 'UPSTREAM_CACHES = ""', f'PUBLIC_KEYS = "{public}"']:
        assert expected in config, expected
    dry = run([str(WRANGLER), "deploy", "--dry-run", "--config", str(site.dir / "wrangler.toml"),
               "--outdir", str(tmp_path / "out")], env=wrangler_env(), cwd=REPO)
    assert "my-bucket" in dry.stdout + dry.stderr

    # A user pushes with the saved login alone, and stock Nix substitutes with the
    # printed key.
    nix = Nix(nix_env(site.home))
    closure = build_closure(nix, salt="-init-" + os.urandom(4).hex())
    site.cli("push", closure.top)
    store = tmp_path / "store"
    fresh = Nix(nix_env(tmp_path / "nix-home"))
    fresh("copy", "--from", url, "--to", str(store), "--option", "trusted-public-keys", public, closure.top)
    assert nar_hashes(fresh, str(store), closure.top) == closure.nar_hashes


def test_a_second_init_changes_nothing(site: Site, initialised):
    before, calls = site.snapshot(), len(site.calls())
    proc = site.cli("init", *ANSWERS)
    assert site.snapshot() == before
    # The cache answered as configured: no bucket or deploy command ran again.
    assert site.calls()[calls:] == []
    assert "nothing to deploy" in proc.stderr
    assert trusted_keys(proc.stdout) == trusted_keys(initialised.stdout)


def test_a_changed_answer_is_refused_until_update(site: Site, initialised):
    before = site.snapshot()
    answers = [a if a != "30" else "60" for a in ANSWERS]
    proc = site.cli("init", *answers, check=False)
    assert proc.returncode != 0 and "RETAIN_DAYS" in proc.stderr and "--update" in proc.stderr
    assert site.snapshot() == before


@pytest.mark.parametrize("flag,value", [("--cache-name", "my cache"), ("--max-cache-size", "lots"),
                                        ("--worker", "My_Cache"), ("--retain-days", "soon"),
                                        ("--access", "secret")])
def test_bad_answers_are_refused_with_the_field_named(site: Site, flag, value):
    answers = ["--worker", "other-cache", *ANSWERS[2:]]
    i = answers.index(flag)
    answers[i + 1] = value
    calls = len(site.calls())
    proc = site.cli("init", *answers, check=False)
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"error: {flag}: "), proc.stderr
    assert not (site.dir.parent / "other-cache").exists()
    assert site.calls()[calls:] == []


def test_a_ci_rule_that_would_admit_other_owners_is_refused(site: Site):
    calls = len(site.calls())
    proc = site.cli("init", "--worker", "ci-cache", "--ci", "github:owner/*", "--yes", check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("error: --ci: "), proc.stderr
    assert not (site.dir.parent / "ci-cache").exists() and site.calls()[calls:] == []


def test_a_deployment_directory_inside_the_checkout_is_refused(site: Site):
    for inside in [REPO / "keys", REPO / "target" / ".." / "keys"]:
        proc = site.cli("init", "--worker", "inside", *ANSWERS[2:], "--dir", str(inside), check=False)
        assert proc.returncode != 0 and proc.stderr.startswith("error: --dir: "), proc.stderr
        assert not (REPO / "keys").exists()


def test_a_failed_deploy_is_finished_by_running_init_again(site: Site):
    answers = ["--worker", "flaky-cache", *ANSWERS[2:]]
    d = site.dir.parent / "flaky-cache"
    proc = site.cli("init", *answers, check=False, STANDIN_DEPLOY_FAILS="1")
    assert proc.returncode != 0 and "step: wrangler deploy" in proc.stderr
    # Its keys are kept for the next run; the deployment is not recorded as deployed.
    public = (d / "signing-key-1.sec.pub").read_text()
    assert not (d / "deployment.toml").exists()
    proc = site.cli("init", *answers)
    assert (d / "signing-key-1.sec.pub").read_text() == public
    assert public.strip() in proc.stdout and (d / "deployment.toml").exists()
    os.killpg(int((site.state / "flaky-cache.pid").read_text()), signal.SIGTERM)
    (site.state / "flaky-cache.pid").unlink()


def test_dry_run_and_missing_login(site: Site):
    answers = ["--worker", "dry-cache", *ANSWERS[2:]]
    calls = len(site.calls())
    proc = site.cli("init", *answers, "--dry-run")
    assert "would run: wrangler r2 bucket create my-bucket" in proc.stderr
    assert "would run: wrangler deploy --config" in proc.stderr
    assert not (site.dir.parent / "dry-cache").exists() and site.calls()[calls:] == []
    proc = site.cli("init", *answers, check=False, STANDIN_LOGGED_OUT="1")
    assert proc.returncode != 0 and "not logged in to Cloudflare: run `npx wrangler login`" in proc.stderr
    assert not (site.dir.parent / "dry-cache").exists(), "a failed login left a half-made deployment"


def narinfo_sigs(url: str, path: str) -> list[str]:
    import urllib.request
    with urllib.request.urlopen(f"{url}/{Path(path).name[:32]}.narinfo") as r:
        return [line[5:] for line in r.read().decode().splitlines() if line.startswith("Sig: ")]


def test_signing_key_rotation(site: Site, initialised, tmp_path):
    url = site.url()
    nix = Nix(nix_env(site.home))
    kept, dropped = (build_closure(nix, salt=f"-rot-{n}-" + os.urandom(4).hex()) for n in "ab")
    site.cli("push", kept.top, dropped.top)
    key1 = (site.dir / "signing-key-1.sec.pub").read_text().strip()

    # A rotation whose deploy fails records nothing and is finished by running it again.
    settings = (site.dir / "deployment.toml").read_text()
    assert site.cli("rotate", "signing", WORKER, check=False, STANDIN_DEPLOY_FAILS="1").returncode != 0
    assert (site.dir / "deployment.toml").read_text() == settings
    proc = site.cli("rotate", "signing", WORKER, "--wait", "60")
    key2 = (site.dir / "signing-key-2.sec.pub").read_text().strip()
    assert key2.startswith(f"{CACHE_NAME}-2:")
    assert trusted_keys(proc.stdout) == f"{key1} {key2}"
    assert site.calls()[-1][:1] == ["deploy"]
    newer = build_closure(nix, salt="-rot-c-" + os.urandom(4).hex())
    site.cli("push", newer.top)
    assert [s.split(":")[0] for s in narinfo_sigs(url, newer.top)] == [f"{CACHE_NAME}-2"]

    def substitutes(closure, keys: str) -> bool:
        home = tmp_path / os.urandom(4).hex()  # a fresh narinfo disk cache
        n = Nix(nix_env(home))
        return n("copy", "--from", url, "--to", str(home / "store"), "--option", "trusted-public-keys",
                 keys, closure.top, check=False).returncode == 0

    assert substitutes(kept, f"{key1} {key2}") and substitutes(newer, f"{key1} {key2}")

    # What the README says to do before --finish: re-sign what must stay, with stock Nix
    # and the operator token (overwrite).
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 password {(site.dir / 'operator.token').read_text().strip()}\n")
    nix("store", "sign", "--store", url, "--key-file", str(site.dir / "signing-key-2.sec"), "--recursive",
        kept.top, "--option", "netrc-file", str(netrc))
    assert len(narinfo_sigs(url, kept.top)) == 2

    site.cli("rotate", "signing", WORKER, "--finish", "--wait", "60")
    assert f'PUBLIC_KEYS = "{key2}"' in (site.dir / "wrangler.toml").read_text()
    assert substitutes(newer, key2) and substitutes(kept, key2)
    # Signed by key 1 alone: a client trusting only key 2 refuses it, as it must.
    assert not substitutes(dropped, key2)


def test_token_key_rotation(site: Site, initialised):
    old_push = (site.dir / "push.token").read_text().strip()

    def whoami(token: str) -> int:
        return run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {token}",
                    f"{site.url()}/_nixflare/whoami"]).stdout == "200"

    site.cli("rotate", "token", WORKER, "--wait", "60")
    new_push = (site.dir / "push.token").read_text().strip()
    assert new_push != old_push and whoami(old_push) and whoami(new_push)
    assert site.cli("info").returncode == 0  # the saved login holds the new token
    site.cli("rotate", "token", WORKER, "--finish", "--wait", "60")
    assert not whoami(old_push) and whoami(new_push)


def test_init_asks_on_a_terminal_until_an_answer_parses(site: Site):
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(CLI), "init", "--worker", "term-cache", "--dry-run"], stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=site.env, cwd=REPO, text=True)
    os.close(slave)
    # Cache name, bucket (the default), access, days, size, upstreams; two refused first.
    os.write(master, b"bad name\nterm.example.org\n\nprivate\n30\nlots\n10G\nnone\n")
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert err.count("Cache name") == 2 and err.count("Most bytes of NARs") == 2
    for expected in ['cache-name = "term.example.org"', 'bucket = "term-cache"', 'READ_ACCESS = "token"',
                     'RETAIN_DAYS = "30"', 'MAX_CACHE_BYTES = "10000000000"', 'UPSTREAM_CACHES = ""']:
        assert expected in err, expected
    assert not (site.dir.parent / "term-cache").exists()


def test_a_private_cache_and_a_settings_change_through_deploy(site: Site, tmp_path):
    worker = "priv-cache"
    proc = site.cli("init", "--worker", worker, "--cache-name", "priv.example.org", "--bucket", "priv-bucket",
                    "--access", "private", "--upstream", "none", "--ci", "github:owner/repo", "--yes", "--wait", "60")
    d = site.dir.parent / worker
    # The CI's own identity: a rule for the repository (read too: the cache is private),
    # its audience the cache's own URL; the worker took it (the check passed).
    rules = json.loads(tomllib.loads((d / "deployment.toml").read_text())["vars"]["OIDC_RULES"])
    assert rules == [{"issuer": "https://token.actions.githubusercontent.com",
                      "claims": {"repository": "owner/repo"}, "permissions": "read,write"}]
    assert "id-token: write" in proc.stdout
    url = site.url(worker)
    read_token = (d / "read.token").read_text().strip()
    # The netrc line names the token's file: the output may land in a CI log.
    assert f"machine 127.0.0.1 login nixflare password <the token in {d / 'read.token'}>" in proc.stdout
    assert read_token not in proc.stdout + proc.stderr
    assert "netrc-file = /etc/nix/netrc" in proc.stdout

    def anonymous_status() -> str:
        return run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/nix-cache-info"]).stdout

    assert anonymous_status() == "401"
    # Not the default login (the first cache is): named.
    nix = Nix(nix_env(site.home))
    closure = build_closure(nix, salt="-priv-" + os.urandom(4).hex())
    site.cli("push", "--cache", worker, closure.top)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login nixflare password {read_token}\n")
    fresh = Nix(nix_env(tmp_path / "nix-home"))
    fresh("copy", "--from", url, "--to", str(tmp_path / "store"), "--option", "trusted-public-keys",
          trusted_keys(proc.stdout), "--option", "netrc-file", str(netrc), closure.top)
    assert nar_hashes(fresh, str(tmp_path / "store"), closure.top) == closure.nar_hashes

    # A variable the worker does not read is refused before anything runs.
    settings = d / "deployment.toml"
    text = settings.read_text()
    calls = len(site.calls())
    settings.write_text(text.replace("[vars]\n", '[vars]\nREAD_ACESS = "public"\n'))
    proc = site.cli("deploy", worker, check=False)
    assert proc.returncode != 0 and "READ_ACESS" in proc.stderr and site.calls()[calls:] == []
    # The operator edits the setting and deploys: the cache turns public.
    settings.write_text(text.replace('READ_ACCESS = "token"', 'READ_ACCESS = "public"'))
    site.cli("deploy", worker, "--wait", "60")
    assert site.calls()[-1][:1] == ["deploy"] and anonymous_status() == "200"


def test_init_takes_existing_nix_key_files(site: Site, tmp_path):
    nix = Nix(nix_env(site.home))
    secret = tmp_path / "own.sec"
    secret.write_text(nix("key", "generate-secret", "--key-name", "own.example.org-7").stdout)
    public = run(["nix", "key", "convert-secret-to-public"], env=nix.env, input=secret.read_text()).stdout.strip()
    proc = site.cli("init", "--worker", "own-keys", *ANSWERS[2:], "--signing-key", str(secret), "--dry-run")
    assert f'PUBLIC_KEYS = "{public}"' in proc.stderr
    assert f'signing-key = "{secret}"' in proc.stderr
    assert "would make the key own.example.org-7" not in proc.stderr
    assert "would make the key cache.example.org-token-1" in proc.stderr
