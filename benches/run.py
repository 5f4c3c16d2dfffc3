#!/usr/bin/env python3
"""`make bench`: every benchmark, each against its baseline in the same invocation.
Prints ratios as it goes and writes benches/RESULTS.md (date and machine included).
Timings are never asserted: a slow machine gets a report, not a red build."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import retention
import index
import oidc
import page
import private
import push
import wan
import watch
import worker_vs_baseline
from common import REPO


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    nix = subprocess.run(["nix", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Linux {platform.release()}, {nix}"


BENCHES = {"worker": worker_vs_baseline.bench, "push": push.bench, "index": index.bench, "gc": retention.bench,
           "watch": watch.bench, "wan": wan.bench, "private": private.bench,
           "page": page.bench, "oidc": oidc.bench}


def earlier_sections(path: Path, titles: set[str]) -> list[str]:
    """The lines of `path`'s sections other than `titles` (a heading's title is what
    precedes its first " (run of" or " (from")."""
    if not path.exists():
        return []
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].split(" (run of")[0].split(" (from")[0]
            keep = title not in titles
        if keep:
            kept.append(line)
    return kept


def main() -> int:
    # `run.py worker index` runs only those; RESULTS.md keeps the other sections of
    # earlier runs, each saying when it ran.
    chosen = sys.argv[1:] or list(BENCHES)
    sections = [BENCHES[name]() for name in chosen]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = REPO / "benches" / "RESULTS.md"
    earlier = earlier_sections(out, {section.title for section in sections})
    text = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {date}. Machine: {machine()}.",
        "All absolute figures are this machine's; ratios compare runs of the same invocation.",
        "",
    ]
    partial = "" if len(chosen) == len(BENCHES) else f", `make bench BENCHES={' '.join(chosen)}`"
    for section in sections:
        text += [f"## {section.title} (run of {date}{partial})", "", section.body, ""]
    text += earlier
    out.write_text("\n".join(text))
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
