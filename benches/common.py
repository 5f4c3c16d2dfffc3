"""What the benchmarks share with the e2e tests (worker start/stop, Nix isolation)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from conftest import MK, nix32_of_digest, nix_env, run, start_worker, stop_worker  # noqa: E402  (one place for these)

CLI_RELEASE = REPO / "target" / "release" / "nixflare"

__all__ = ["CLI_RELEASE", "MK", "REPO", "Section", "nix32_of_digest", "nix_env", "run", "start_worker",
           "stop_worker"]


@dataclass
class Section:
    """One benchmark's part of benches/RESULTS.md."""

    title: str
    body: str
