"""What the benchmarks share with the e2e tests (worker start/stop, Nix isolation)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from conftest import MK, nix32_of_digest, nix_env, run, start_worker, stop_worker  # noqa: E402  (one place for these)

CLI_RELEASE = REPO / "target" / "release" / "nixflare"

__all__ = ["CLI_RELEASE", "MK", "REPO", "Section", "bench_keys", "nix32_of_digest", "nix_env", "run", "start_worker",
           "stop_worker", "verdict"]


def verdict(ratio: float, higher_is_better: bool, target: float | None) -> tuple[str, bool]:
    """A ratio against its target, as the results tables write it, and whether it is met."""
    if target is None:
        return "—", True
    ok = ratio >= target if higher_is_better else ratio <= target
    return f"{'≥' if higher_is_better else '≤'} {target}: {'met' if ok else 'MISSED'}", ok


def bench_keys(work: Path, permissions: str = "read,write") -> dict:
    """A signing key, a token key and a day's token with `permissions`, made with the
    release CLI."""
    sk = work / "sign.sec"
    public = run([str(CLI_RELEASE), "keygen", "bench-1", "--out", str(sk)]).stdout.strip()
    admin = work / "admin.sec"
    token_public = run([str(CLI_RELEASE), "keygen", "bench-tokens-1", "--out", str(admin)]).stdout.strip()
    token = run([str(CLI_RELEASE), "token", "mint", "--key", str(admin), "--subject", "bench",
                 "--permissions", permissions, "--expires-in", "1d"]).stdout.strip()
    return {"secret_file": sk, "public": public, "token_public": token_public, "token": token, "admin": admin}


@dataclass
class Section:
    """One benchmark's part of benches/RESULTS.md."""

    title: str
    body: str
