"""CI identities against nixflare tokens: the same requests with a read token and with
ID tokens (RS256, ES256) of a local OIDC issuer (tests/e2e/oidc_issuer.py), on one private
worker (READ_ACCESS=token, OIDC_RULES for the issuer), loaded alternately, loopback only.
Each figure keeps the best of its rounds per variant.

A nixflare read token is remembered per isolate (no signature check after the first);
an ID token is checked whole on every request: screened, its key taken from the
isolate's key cache, its signature verified by the runtime's WebCrypto. `whoami` is a
guarded operation: every credential is checked whole there (a token's revocation is one
R2 HEAD). Load: wrk. CPU is the workerd process's (which also runs the simulated R2)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from common import Section, start_worker, stop_worker
from conftest import free_port
from oidc_issuer import start_issuer
from private import read_token_and_data
from worker_vs_baseline import Figures, cpu_seconds, curl, workerd_pid, wrk

ROUNDS = 3
VARIANTS = ("nixflare token", "ID token RS256", "ID token ES256")
# (name, unit, higher is better)
FIGURES = [
    ("private narinfo hit", "req/s", True),
    ("CPU per 10k narinfo hits", "s", False),
    ("whoami", "req/s", True),
    ("CPU per 10k whoami", "s", False),
]


def measure(proc, url: str, data: dict, header: str, figures: Figures) -> None:
    pid = workerd_pid(proc)
    for name, path in (("private narinfo hit", data["narinfo"]), ("whoami", "_nixflare/whoami")):
        wrk(f"{url}/{path}", 1, 8, (header,))  # warm: the isolate, the keys, the kept copy
        before = cpu_seconds(pid)
        rate, _, total = wrk(f"{url}/{path}", 5, 16, (header,))
        cpu = cpu_seconds(pid) - before
        figures.keep(name, rate)
        cpu_name = "CPU per 10k narinfo hits" if name != "whoami" else "CPU per 10k whoami"
        figures.keep(cpu_name, cpu / total * 10_000, higher_is_better=False)


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-oidc-"))
    persist = work / "r2"
    persist.mkdir()
    issuer = start_issuer(work)
    results = {name: Figures() for name in VARIANTS}
    try:
        token_public, token, data = read_token_and_data(work, persist, ())
        rules = json.dumps([{"issuer": issuer.url, "claims": {"repository": "owner/repo"},
                             "permissions": "read"}])
        variables = {"TOKEN_PUBLIC_KEYS": token_public, "READ_ACCESS": "token", "OIDC_RULES": rules}
        for round_no in range(1, ROUNDS + 1):
            port = free_port()
            proc, url = start_worker(persist, variables, port=port,
                                     extra_env={"SSL_CERT_FILE": str(issuer.trust_bundle)})
            try:
                credentials = {
                    "nixflare token": token,
                    "ID token RS256": issuer.mint(issuer.claims(url), alg="RS256"),
                    "ID token ES256": issuer.mint(issuer.claims(url), alg="ES256"),
                }
                for name in VARIANTS:
                    header = f"Authorization: Bearer {credentials[name]}"
                    # Admitted, checked rather than assumed (a refusal rate measures nothing).
                    _, _, status = curl(["-H", header, f"{url}/_nixflare/whoami"])
                    assert status == 200, (name, status)
                    measure(proc, url, data, header, results[name])
            finally:
                stop_worker(proc)
            print(f"oidc: round {round_no}: done")
    finally:
        issuer.stop()
        shutil.rmtree(work, ignore_errors=True)

    token_figures, rs, es = (results[name].values for name in VARIANTS)
    lines = [
        "| figure | nixflare token | ID token RS256 | ID token ES256 | RS256 / token | ES256 / token |",
        "|---|---|---|---|---|---|",
    ]
    for name, unit, _ in FIGURES:
        t, r, e = token_figures[name], rs[name], es[name]
        lines.append(f"| {name} ({unit}) | {t:.4g} | {r:.4g} | {e:.4g} | {r / t:.2f} | {e / t:.2f} |")
        print(f"oidc: {name:28} token {t:10.4g} RS256 {r:10.4g} ES256 {e:10.4g} {unit:6}"
              f" RS256/token {r / t:.2f} ES256/token {e / t:.2f}")
    lines.append(
        "\nNo target: CI identities are for pushes and CI reads, where a request's cost is the upload's. "
        "Read tokens are remembered per isolate; ID tokens are verified (WebCrypto) on every request, "
        "the issuer's keys fetched once per isolate and hour. Locally the Cache API and R2 run in the same "
        "process as the worker: the absolute figures are this machine's, the ratios the point."
    )
    return Section("CI identities (OIDC) vs tokens", "\n".join(lines))
