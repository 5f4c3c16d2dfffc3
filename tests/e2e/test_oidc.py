"""CI identities as credentials (issue 24): a local OIDC issuer (oidc_issuer.py: discovery
and JWKS over https with its own CA, GitHub's ID-token endpoint) stands in for GitHub
Actions; the worker runs in workerd with OIDC_RULES naming it, trusting its CA through
SSL_CERT_FILE. ID tokens push with stock Nix (netrc password) and with `nixflare push`
(which asks the endpoint itself and renews); every token the specs say to refuse is
refused with 401 or 403 and stores nothing."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from conftest import (CLI, REPO, Keys, Nix, Tokens, Worker, bearer, build_closure, free_port, host_env,
                      list_keys, nix32_sha256, request, run, running_worker)
from oidc_issuer import Issuer, start_issuer
from test_action import alive, lines_of, runner_env
from test_push import nar_hashes, narinfo_of, push_cmd
from test_upload import basic


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> Issuer:
    issuer = start_issuer(tmp_path_factory.mktemp("issuer"))
    yield issuer
    issuer.stop()


def rules(issuer: Issuer, audience: str) -> str:
    return json.dumps([
        {"issuer": issuer.url, "audience": audience,
         "claims": {"repository": "owner/repo", "ref": "refs/heads/*"}, "permissions": "read,write"},
        # No audience: the cache's own URL (what nixflare asks for).
        {"issuer": issuer.url, "claims": {"repository": "owner/readonly"}, "permissions": "read"},
    ])


@contextlib.contextmanager
def oidc_worker(issuer: Issuer, persist: Path, variables: dict[str, str]):
    """A worker whose OIDC_RULES are `rules(issuer, its URL)`, trusting the issuer's CA."""
    persist.mkdir(parents=True, exist_ok=True)
    port = free_port()
    variables = {**variables, "OIDC_RULES": rules(issuer, f"http://127.0.0.1:{port}")}
    with running_worker(persist, variables, port=port,
                        extra_env={"SSL_CERT_FILE": str(issuer.trust_bundle)}) as worker:
        yield worker


@pytest.fixture(scope="module")
def ci_worker(issuer: Issuer, keys: Keys, tokens: Tokens, tmp_path_factory) -> Worker:
    """A public cache whose rules admit owner/repo's branches to push, owner/readonly to read."""
    variables = {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public}
    with oidc_worker(issuer, tmp_path_factory.mktemp("r2-oidc"), variables) as worker:
        yield worker


def subject_of(issuer: Issuer, repository: str = "owner/repo", ref: str = "refs/heads/main") -> str:
    """What the index records for a token of this issuer (not GitHub's, so host:sub)."""
    return f"{issuer.url.removeprefix('https://')}:repo:{repository}:ref:{ref}"


def test_stock_nix_copy_pushes_with_an_id_token_as_netrc_password(
        nix: Nix, ci_worker: Worker, issuer: Issuer, keys: Keys, tmp_path):
    closure = build_closure(nix, salt="oidc-netrc")
    jwt = issuer.mint(issuer.claims(ci_worker.url))
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {ci_worker.host} login ci password {jwt}\n")
    to = f"{ci_worker.url}?secret-key={keys.secret_file}&compression=zstd"
    nix("copy", "--option", "netrc-file", str(netrc), "--to", to, closure.top)

    store = tmp_path / "store"
    nix("copy", "--from", ci_worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public,
        closure.top)
    assert nar_hashes(nix, str(store), closure.top) == closure.nar_hashes

    # Who published: the CI identity, as `nixflare info` shows it (the ID token passed as
    # NIXFLARE_TOKEN, as a GitLab job's id_tokens would).
    info = run([str(CLI), "info", "--cache", ci_worker.url], env=dict(host_env(), NIXFLARE_TOKEN=jwt))
    assert f"by {subject_of(issuer)}" in info.stdout, info.stdout
    # What a rule would match, and the subject, read off the token itself.
    inspected = run([str(CLI), "token", "inspect", "-"], input=jwt).stdout
    assert f"subject (the cache records): {subject_of(issuer)}" in inspected, inspected
    assert "  repository: owner/repo\n" in inspected
    status, _, body = request(ci_worker, "GET", "/_nixflare/whoami", bearer(jwt))
    assert status == 200, body
    whoami = json.loads(body)
    assert (whoami["subject"], whoami["tokenId"], whoami["permissions"]) == (subject_of(issuer), None, "read,write")


def test_nixflare_push_asks_the_ci_for_id_tokens_and_renews_them(
        nix: Nix, ci_worker: Worker, issuer: Issuer, keys: Keys, tmp_path):
    closure = build_closure(nix, salt="oidc-push")
    # Tokens with less life than the CLI's renewal margin: every request needs a new one,
    # so a push renews as a long push would when its token ages.
    issuer.ci_lifetime = 100
    issuer.ci_claims = {"ref": "refs/heads/feature", "sub": "repo:owner/repo:ref:refs/heads/feature"}
    before = len(issuer.token_requests)
    env = dict(host_env(), ACTIONS_ID_TOKEN_REQUEST_URL=issuer.request_url,
               ACTIONS_ID_TOKEN_REQUEST_TOKEN=issuer.request_token)
    try:
        run(push_cmd(ci_worker, keys, tmp_path / "spool", closure.top), env=env)
    finally:
        issuer.ci_lifetime, issuer.ci_claims = 300, {}
    requests = issuer.token_requests[before:]
    assert len(requests) > 1, "renewed"
    assert set(requests) == {ci_worker.url}, "the cache's URL is the audience"
    for path in closure.paths:
        assert narinfo_of(ci_worker, path) is not None, path
    info = run([str(CLI), "info", "--cache", ci_worker.url], env=env)
    assert f"by {subject_of(issuer, ref='refs/heads/feature')}" in info.stdout, info.stdout

    # A job that may not ask for a token (no id-token permission) gets no credential.
    bare = run(push_cmd(ci_worker, keys, tmp_path / "spool", closure.top), check=False)
    assert bare.returncode != 0 and "no upload token" in bare.stderr


def test_the_action_pushes_with_the_jobs_id_token_when_given_no_token(
        nix: Nix, ci_worker: Worker, issuer: Issuer, keys: Keys, tmp_path):
    env = runner_env(nix, tmp_path, {"cache-url": ci_worker.url, "token": "",
                                     "signing-key": keys.secret_file.read_text(), "mode": "watch-store",
                                     "wait-timeout": "120", "upstream": ""})
    env.update(ACTIONS_ID_TOKEN_REQUEST_URL=issuer.request_url, ACTIONS_ID_TOKEN_REQUEST_TOKEN=issuer.request_token)
    before = len(issuer.token_requests)
    pid = None
    try:
        main = run(["node", "scripts/action/main.js"], env=env, cwd=REPO)
        pid = int(lines_of(tmp_path / "github_state")["pid"])
        exported = lines_of(tmp_path / "github_env")
        built = build_closure(Nix(dict(nix.env, **exported)), salt=f"-action-oidc-{os.urandom(4).hex()}")
        saved = {f"STATE_{k}": v for k, v in lines_of(tmp_path / "github_state").items()}
        post = run(["node", "scripts/action/post.js"], env=dict(env, **saved), cwd=REPO)
        assert "the queue is empty" in post.stdout, post.stdout
        for path in built.paths:
            assert narinfo_of(ci_worker, path) is not None, f"{path} not pushed:\n{post.stdout}"
        assert len(issuer.token_requests) > before
        assert issuer.request_token not in main.stdout + main.stderr + post.stdout + post.stderr
    finally:
        if pid and alive(pid):
            os.kill(pid, 9)


def refused_token(issuer: Issuer, audience: str, case: str) -> str:
    now = int(time.time())
    claims = issuer.claims(audience)
    match case:
        case "wrong audience":
            return issuer.mint(issuer.claims("https://other-cache.example.org"))
        case "an audience list naming another service":
            return issuer.mint(issuer.claims([audience, "https://other-service.example.org"]))
        case "lives longer than a day":
            return issuer.mint(issuer.claims(audience, exp=now + 2 * 86400))
        case "wrong issuer":
            return issuer.mint(issuer.claims(audience, iss="https://issuer.invalid"))
        case "expired":
            return issuer.mint(issuer.claims(audience, iat=now - 900, nbf=now - 900, exp=now - 300))
        case "not yet valid":
            return issuer.mint(issuer.claims(audience, nbf=now + 600, exp=now + 900))
        case "alg none":
            return issuer.mint(claims, alg="none")
        case "HS256 with the RSA public key":
            return issuer.mint(claims, alg="HS256")
        case "unknown kid":
            return issuer.mint(claims, kid="rsa-unknown")
        case "RSA key named for ES256":
            return issuer.mint(claims, alg="ES256", kid=issuer.RSA_KID)
        case "signature of other claims":
            other = issuer.mint(issuer.claims(audience, repository="owner/other"))
            head, _, sig = other.split(".")
            return ".".join([head, issuer.mint(claims).split(".")[1], sig])
        case "claims match no rule":
            return issuer.mint(issuer.claims(audience, repository="someone/else"))
        case "a rule without write":
            return issuer.mint(issuer.claims(audience, repository="owner/readonly"))
        case "tag outside the rule's ref pattern":
            return issuer.mint(issuer.claims(audience, ref="refs/tags/v1"))
    raise AssertionError(case)


REFUSALS = [
    ("wrong audience", 401, "audience"),
    ("an audience list naming another service", 401, "audience"),
    ("lives longer than a day", 401, "lives longer"),
    ("wrong issuer", 401, "issuer"),
    ("expired", 401, "expired"),
    ("not yet valid", 401, "not valid yet"),
    ("alg none", 401, "algorithm"),
    ("HS256 with the RSA public key", 401, "algorithm"),
    ("unknown kid", 401, "rsa-unknown"),
    ("RSA key named for ES256", 401, "not for its algorithm"),
    ("signature of other claims", 401, "signature does not verify"),
    ("claims match no rule", 403, "no OIDC rule admits"),
    ("a rule without write", 403, "lacks write"),
    ("tag outside the rule's ref pattern", 403, "no OIDC rule admits"),
]


@pytest.mark.parametrize("case, status, reason", REFUSALS,
                         ids=[case.replace(" ", "-").replace("'", "") for case, _, _ in REFUSALS])
def test_id_tokens_the_specs_refuse_are_refused_and_store_nothing(
        ci_worker: Worker, issuer: Issuer, case, status, reason):
    jwt = refused_token(issuer, ci_worker.url, case)
    nar = os.urandom(1000)
    path = f"/nar/{nix32_sha256(nar)}.nar"
    before = list_keys(ci_worker.persist)
    for headers in (bearer(jwt), basic(jwt)):
        got, _, body = request(ci_worker, "PUT", path, headers, nar)
        assert (got, reason in body.decode()) == (status, True), body
    assert list_keys(ci_worker.persist) == before
    # The same bytes with a token the rules admit: stored (the refusal was the token's).
    assert request(ci_worker, "PUT", path, bearer(issuer.mint(issuer.claims(ci_worker.url), alg="ES256")), nar)[0] == 201


def test_unknown_key_ids_fetch_the_jwks_at_most_once_a_minute(issuer: Issuer, keys: Keys, tmp_path):
    """On a worker of its own, so the isolate has fetched nothing yet and the whole test
    runs within one refresh interval (a minute)."""
    with oidc_worker(issuer, tmp_path / "r2", {"PUBLIC_KEYS": keys.public}) as worker:
        url = worker.url

        def whoami(token: str) -> int:
            return request(worker, "GET", "/_nixflare/whoami", bearer(token))[0]

        jwks = issuer.fetches.count("/jwks")
        # A kid the isolate has not seen: the keys are fetched, and it is still unknown.
        assert whoami(issuer.mint(issuer.claims(url), kid="made-up-0")) == 401
        assert issuer.fetches.count("/jwks") == jwks + 1
        # Known keys: a valid token costs no fetch; more made-up kids within the minute
        # cost none either, however many.
        assert whoami(issuer.mint(issuer.claims(url))) == 200
        for n in range(1, 6):
            assert whoami(issuer.mint(issuer.claims(url), kid=f"made-up-{n}")) == 401
        assert issuer.fetches.count("/jwks") == jwks + 1
        # A token from an issuer no rule names (here a path of the real one's host, where
        # a fetch would be seen) makes the worker fetch nothing at all.
        fetches = len(issuer.fetches)
        assert whoami(issuer.mint(issuer.claims(url, iss=f"{issuer.url}/other"))) == 401
        assert len(issuer.fetches) == fetches


def test_a_private_cache_admits_readers_by_their_ci_identity(issuer: Issuer, keys: Keys, tmp_path):
    with oidc_worker(issuer, tmp_path / "r2", {"PUBLIC_KEYS": keys.public, "READ_ACCESS": "token"}) as worker:
        url = worker.url
        missing = "/" + "0" * 32 + ".narinfo"
        reader = issuer.mint(issuer.claims(url, repository="owner/readonly"))
        assert request(worker, "GET", "/nix-cache-info", bearer(reader))[0] == 200
        assert request(worker, "GET", missing, basic(reader))[0] == 404
        assert request(worker, "GET", "/nix-cache-info")[0] == 401
        stranger = issuer.mint(issuer.claims(url, repository="someone/else"))
        assert request(worker, "GET", "/nix-cache-info", bearer(stranger))[0] == 403
        expired = issuer.mint(issuer.claims(url, exp=int(time.time()) - 120))
        assert request(worker, "GET", "/nix-cache-info", bearer(expired))[0] == 401


def test_a_slow_issuer_gets_a_retryable_503_not_a_hang(issuer: Issuer, keys: Keys, tmp_path):
    """The issuer's JWKS answers after 8 s: the worker gives up on it at 5 s and answers
    503 with Retry-After (clients retry), not 200 after the wait; within the minute that
    follows it answers 503 at once, fetching nothing."""
    with oidc_worker(issuer, tmp_path / "r2", {"PUBLIC_KEYS": keys.public}) as worker:
        token = issuer.mint(issuer.claims(worker.url))
        issuer.jwks_delay = 8
        try:
            started = time.monotonic()
            status, headers, body = request(worker, "GET", "/_nixflare/whoami", bearer(token))
            waited = time.monotonic() - started
        finally:
            issuer.jwks_delay = 0
        assert (status, "try again" in body.decode()) == (503, True), body
        assert "retry-after" in headers
        assert waited < 7.5, f"waited {waited:.1f} s for the issuer"
        fetches = len(issuer.fetches)
        started = time.monotonic()
        assert request(worker, "GET", "/_nixflare/whoami", bearer(token))[0] == 503
        assert time.monotonic() - started < 2 and len(issuer.fetches) == fetches
