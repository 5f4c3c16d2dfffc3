"""Push benchmark: `nixflare push` against stock `nix copy --to` (xz, Nix's default, and
zstd), each into a fresh local cache, same closure, same machine, same invocation.

The closure: 20 paths chained by references, ~240 MiB of NARs in mixed sizes and
kinds (machine code, text, base64, random bytes), built by Nix with a fresh salt.

Local workerd never answers `Expect: 100-continue`, so Nix's curl stalls 1 s before
every PUT body (docs/platform.md §2); Cloudflare does answer it. Ratios are printed both as
measured and with nix copy's stall (1 s per PUT, counted in the worker log) removed:
the second is the fair comparison."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import CLI_RELEASE, MK, Section, bench_keys, nix_env, run, start_worker, stop_worker

BENCH_EXPR = r"""
{ salt }:
let
""" + MK + r"""
  # kind: what the bytes look like; mib: NAR size; prev: the path this one references.
  blob = i: kind: kib: prev: mk "nixflare-bench-${toString i}-${kind}-${salt}" ''
    mkdir -p $out
    echo ${prev} > $out/prev
    n=$((${toString kib} * 1024))
    case ${kind} in
      exec) find /usr/bin /usr/lib -type f -size +64k 2>/dev/null | sort | xargs cat 2>/dev/null | head -c $n > $out/data ;;
      text) find /usr/share -type f \( -name '*.txt' -o -name '*.html' -o -name '*.py' -o -name '*.pm' \) 2>/dev/null | sort | xargs cat 2>/dev/null | head -c $n > $out/data ;;
      b64) head -c $n /dev/urandom | base64 | head -c $n > $out/data ;;
      random) head -c $n /dev/urandom > $out/data ;;
    esac
  '';
  specs = [
    { kind = "exec"; kib = 81920; } { kind = "random"; kib = 61440; }
    { kind = "text"; kib = 30720; } { kind = "b64"; kib = 30720; }
    { kind = "exec"; kib = 8192; } { kind = "text"; kib = 8192; }
    { kind = "b64"; kib = 8192; } { kind = "random"; kib = 8192; }
  ] ++ builtins.genList (i: { kind = builtins.elemAt [ "exec" "text" "b64" "random" ] (i - 4 * (i / 4)); kib = 64 + i * 150; }) 12;
  chain = builtins.foldl' (acc: spec: {
    i = acc.i + 1;
    top = blob acc.i spec.kind spec.kib acc.top;
  }) { i = 0; top = "none"; } specs;
in chain.top
"""


@dataclass
class Run:
    name: str
    seconds: float
    puts: int
    stalls: bool  # sends Expect: 100-continue (curl, so Nix); nixflare does not

    @property
    def without_stall(self) -> float:
        return self.seconds - (self.puts if self.stalls else 0)


def build_closure(env: dict) -> tuple[str, int, int]:
    top = run(["nix-build", "--no-out-link", "-E", BENCH_EXPR, "--argstr", "salt", os.urandom(6).hex()],
              env=env).stdout.strip()
    out = run(["nix", "path-info", "--recursive", "--size", top], env=env).stdout
    sizes = [int(line.split()[-1]) for line in out.splitlines() if line.strip()]
    return top, len(sizes), sum(sizes)


def timed_push(name: str, work: Path, keys: dict, command, *, stalls: bool) -> Run:
    """Runs `command(url, home)` against a fresh worker; counts the PUTs it made."""
    persist = work / f"r2-{name}"
    persist.mkdir()
    variables = {"PUBLIC_KEYS": keys["public"], "TOKEN_PUBLIC_KEYS": keys["token_public"]}
    proc, url = start_worker(persist, variables)
    try:
        home = work / f"home-{name}"
        home.mkdir()
        started = time.monotonic()
        command(url, home)
        seconds = time.monotonic() - started
    finally:
        stop_worker(proc)
    log = (persist / "wrangler.log").read_text(errors="replace")
    puts = len(re.findall(r"\[wrangler:info\] PUT /", log))
    return Run(name, seconds, puts, stalls)


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-push-"))
    try:
        env = nix_env(work / "home-build")
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"])
        keys = bench_keys(work)
        sk, token = keys["secret_file"], keys["token"]
        top, count, nar_bytes = build_closure(env)
        print(f"push: closure of {count} paths, {nar_bytes / 2**20:.0f} MiB of NARs")

        def netrc(url: str, home: Path) -> Path:
            path = home / "netrc"
            path.write_text(f"machine 127.0.0.1 password {token}\n")
            return path

        def nixflare(url: str, home: Path) -> None:
            run([str(CLI_RELEASE), "push", "--quiet", "--cache", url, "--key", str(sk),
                 "--netrc-file", str(netrc(url, home)), "--spool-dir", str(home / "spool"), top],
                env=dict(env, HOME=str(home)))

        def nix_copy(compression: str | None):
            def go(url: str, home: Path) -> None:
                query = f"secret-key={sk}" + (f"&compression={compression}" if compression else "")
                run(["nix", "copy", "--option", "netrc-file", str(netrc(url, home)),
                     "--to", f"{url}?{query}", top],
                    env=dict(env, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")))
            return go

        runs = [
            timed_push("nixflare push", work, keys, nixflare, stalls=False),
            timed_push("nix copy (xz)", work, keys, nix_copy(None), stalls=True),
            timed_push("nix copy (zstd)", work, keys, nix_copy("zstd"), stalls=True),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours = runs[0]
    lines = [
        f"Closure: {count} paths, {nar_bytes / 2**20:.0f} MiB of NARs (machine code, text, base64, random).",
        "",
        "| tool | wall s | PUTs | wall s without the local 1 s/PUT stall | nixflare / tool | same, stall removed |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        ratio = ours.seconds / r.seconds
        fair = ours.without_stall / r.without_stall if r.without_stall > 0 else float("nan")
        lines.append(f"| {r.name} | {r.seconds:.1f} | {r.puts} | {r.without_stall:.1f} | {ratio:.2f} | {fair:.2f} |")
        print(f"push: {r.name:16} {r.seconds:6.1f} s  ({r.puts} PUTs)  nixflare/this = {ratio:.2f}"
              f"  (stall removed: {fair:.2f})")
    def verdict(ratio: float) -> str:
        return "met" if ratio <= 0.5 else "missed"

    lines += [""]
    for r in runs[1:]:
        lines.append(
            f"Target (nixflare at most 0.5x of {r.name}): {verdict(ours.seconds / r.seconds)} as measured "
            f"({ours.seconds / r.seconds:.2f}), {verdict(ours.without_stall / r.without_stall)} with the local "
            f"stall removed ({ours.without_stall / r.without_stall:.2f})."
        )
    lines += [
        "",
        "Why the stall-free zstd ratio sits near 1 here: on loopback both tools are bound by the",
        "same two cores, which also run workerd's simulated R2 (it hashes and writes every byte).",
        "Both dump, hash and zstd-compress the same bytes. What nixflare saves is per request",
        "(no Expect round trip, parallel uploads) and per byte of network, which loopback does",
        "not charge for. xz is slower than the upload itself, whichever way it is counted.",
    ]
    return Section("Push: `nixflare push` vs `nix copy --to`", "\n".join(lines))
