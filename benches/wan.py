"""Push over a WAN-shaped link: closures of many small paths, through a userspace proxy
that adds round-trip time and a shared rate each way (this kernel has no `tc netem`).

The proxy plays Cloudflare's edge in one respect too: it answers `Expect: 100-continue`
itself, one round trip after the client sent the headers (local workerd never answers
it, which costs curl, so Nix, a 1 s stall per PUT; the edge does answer). Everything else
passes through byte for byte.

Per link profile: `nixflare push` and stock `nix copy --to` (zstd), each into a fresh
local cache, and the link floor (NAR bytes ÷ rate: the closures are incompressible).
Ratios are against the floor. Timings are reported, never asserted."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import CLI_RELEASE, MK, Section, bench_keys, nix_env, run, start_worker, stop_worker


@dataclass
class Profile:
    name: str
    rtt: float  # seconds
    rate: float  # bytes per second, each direction, shared by all connections


PROFILES = [Profile("40 ms / 100 Mbit/s", 0.040, 100e6 / 8), Profile("150 ms / 20 Mbit/s", 0.150, 20e6 / 8),
            # Through the proxy all the same: it answers `Expect: 100-continue` (without it
            # curl, so `nix copy`, stalls a second per PUT against local workerd).
            Profile("no added latency", 0.0, 10e9)]
# Stock nix copy of the 2,000-path closure takes minutes per profile: only with WAN_FULL=1.
FULL = os.environ.get("WAN_FULL") == "1"
CHUNK = 16 * 1024


class Link:
    """One direction's shared rate: bytes leave in order, at most `rate` per second."""

    def __init__(self, rate: float):
        self.rate = rate
        self.free_at = 0.0

    def occupy(self, n: int, now: float) -> float:
        start = max(now, self.free_at)
        self.free_at = start + n / self.rate
        return self.free_at


class WanProxy:
    """A TCP proxy on 127.0.0.1 to `target_port`, in a thread of its own."""

    def __init__(self, target_port: int, profile: Profile):
        self.target_port = target_port
        self.one_way = profile.rtt / 2
        self.up = Link(profile.rate)
        self.down = Link(profile.rate)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._relay(client_r, client_w)
        except asyncio.CancelledError:
            pass  # the proxy is closing

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Connecting costs a round trip, as TCP's handshake does.
        await asyncio.sleep(2 * self.one_way)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        to_server: asyncio.Queue = asyncio.Queue()
        to_client: asyncio.Queue = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._requests(client_r, to_server, to_client)),
            asyncio.create_task(self._pump(server_r, self.down, to_client)),
            asyncio.create_task(self._deliver(to_server, server_w)),
            asyncio.create_task(self._deliver(to_client, client_w)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(self.one_way + 0.05)
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()

    async def _send(self, link: Link, queue: asyncio.Queue, data: bytes) -> None:
        """Puts `data` on the wire: waits for the link (the sender's backpressure), then
        it arrives one way later."""
        now = time.monotonic()
        done = link.occupy(len(data), now)
        await asyncio.sleep(max(0.0, done - len(data) / link.rate - now))
        queue.put_nowait((done + self.one_way, data))

    async def _pump(self, reader: asyncio.StreamReader, link: Link, queue: asyncio.Queue) -> None:
        while data := await reader.read(CHUNK):
            await self._send(link, queue, data)
        queue.put_nowait((0.0, None))

    async def _requests(self, reader: asyncio.StreamReader, to_server: asyncio.Queue,
                        to_client: asyncio.Queue) -> None:
        """Client to server, request by request: `Expect: 100-continue` is answered here
        (the edge's answer reaches the client one round trip after its headers left) and
        not passed on."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                break
            lines = head.split(b"\r\n")
            expect = any(re.match(rb"(?i)expect:\s*100-continue", line) for line in lines)
            if expect:
                head = b"\r\n".join(line for line in lines if not re.match(rb"(?i)expect:", line))
            length = 0
            chunked = False
            for line in lines:
                if m := re.match(rb"(?i)content-length:\s*(\d+)", line):
                    length = int(m.group(1))
                if re.match(rb"(?i)transfer-encoding:\s*chunked", line):
                    chunked = True
            await self._send(self.up, to_server, head)
            if expect:
                # At the edge when the headers arrive; back at the client one way later.
                arrives = self.up.free_at + self.one_way
                to_client.put_nowait((arrives + self.one_way, b"HTTP/1.1 100 Continue\r\n\r\n"))
            if chunked:
                # Not what the tools here send; pass the rest through unparsed.
                while data := await reader.read(CHUNK):
                    await self._send(self.up, to_server, data)
                break
            while length > 0:
                data = await reader.read(min(CHUNK, length))
                if not data:
                    return
                length -= len(data)
                await self._send(self.up, to_server, data)
        to_server.put_nowait((0.0, None))

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        """Writes what arrives, in order, no earlier than its arrival time."""
        while True:
            due, data = await queue.get()
            if data is None:
                await asyncio.sleep(max(0.0, self.one_way))
                if writer.can_write_eof():
                    writer.write_eof()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()


def closure_expr(small: int, large: int, salt: str) -> str:
    """`small` paths of 40–200 KiB and `large` of 4 MiB, random bytes; path i refers to
    paths i-1 and i/2, and a top refers to them all through groups of 100."""
    lines = ["let", MK]
    total = small + large
    for i in range(total):
        kib = 4096 if i < large else 40 + (i * 37) % 160
        refs = sorted({f"${{p{j}}}" for j in (i - 1, i // 2) if 0 <= j < i})
        script = f"mkdir -p $out; echo {' '.join(refs) or 'none'} > $out/refs; head -c {kib * 1024} /dev/urandom > $out/data"
        lines.append(f'  p{i} = mk "nixflare-wan-{i}-{salt}" "{script}";')
    # The top refers to groups of 100 (one argument of 2,000 paths is too long for exec).
    groups = []
    for g, first in enumerate(range(0, total, 100)):
        members = " ".join(f"${{p{i}}}" for i in range(first, min(total, first + 100)))
        lines.append(f'  g{g} = mk "nixflare-wan-group-{g}-{salt}" "echo {members} > $out";')
        groups.append(f"${{g{g}}}")
    lines.append(f'  top = mk "nixflare-wan-top-{salt}" "echo {" ".join(groups)} > $out";')
    lines.append("in top")
    return "\n".join(lines)


def build(env: dict, small: int, large: int, work: Path) -> tuple[str, int, int]:
    expr = work / f"closure-{small}.nix"
    expr.write_text(closure_expr(small, large, os.urandom(6).hex()))
    top = run(["nix-build", "--no-out-link", "--option", "max-jobs", "2", str(expr)], env=env).stdout.strip()
    out = run(["nix", "path-info", "--recursive", "--size", top], env=env).stdout
    sizes = [int(line.split()[-1]) for line in out.splitlines() if line.strip()]
    return top, len(sizes), sum(sizes)


def timed(work: Path, keys: dict, profile: Profile, command, variables: dict) -> tuple[float, int, int]:
    """Runs `command(url, home)` against a fresh worker behind the proxy: seconds,
    requests the worker served, and the requests it made to the index."""
    persist = Path(tempfile.mkdtemp(dir=work, prefix="r2-"))
    proc, url = start_worker(persist, {"PUBLIC_KEYS": keys["public"], "TOKEN_PUBLIC_KEYS": keys["token_public"],
                                       **variables})
    proxy = WanProxy(int(url.rsplit(":", 1)[1]), profile)
    try:
        home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
        started = time.monotonic()
        command(f"http://127.0.0.1:{proxy.port}", home)
        seconds = time.monotonic() - started
    finally:
        proxy.close()
        stop_worker(proc)
    log = (persist / "wrangler.log").read_text(errors="replace")
    requests = len(re.findall(r"\[wrangler:info\] (?:GET|HEAD|PUT|POST|DELETE) /", log))
    # A narinfo PUT makes two (begin, commit); a batch logs its own count.
    index_calls = 2 * len(re.findall(r"\[wrangler:info\] PUT /[^/ ]+\.narinfo 20", log))
    index_calls += sum(int(n) for n in re.findall(r"; (\d+) index calls", log))
    return seconds, requests, index_calls


def bench() -> Section:
    work = Path(tempfile.mkdtemp(prefix="nixflare-bench-wan-"))
    rows = []
    try:
        run(["cargo", "build", "--quiet", "--release", "--bin", "nixflare"])
        env = nix_env(work / "home-build")
        keys = bench_keys(work)
        sk, token = keys["secret_file"], keys["token"]
        closures = [build(env, 300, 4, work), build(env, 2000, 0, work)]

        def netrc(home: Path) -> Path:
            path = home / "netrc"
            path.write_text(f"machine 127.0.0.1 password {token}\n")
            return path

        def nixflare(top: str):
            def go(url: str, home: Path) -> None:
                run([str(CLI_RELEASE), "push", "--quiet", "--cache", url, "--key", str(sk),
                     "--netrc-file", str(netrc(home)), "--spool-dir", str(home / "spool"), top],
                    env=dict(env, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config")))
            return go

        def nix_copy(top: str):
            def go(url: str, home: Path) -> None:
                run(["nix", "copy", "--option", "netrc-file", str(netrc(home)),
                     "--to", f"{url}?secret-key={sk}&compression=zstd", top],
                    env=dict(env, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")))
            return go

        for top, count, nar_bytes in closures:
            for profile in PROFILES:
                floor = nar_bytes / profile.rate if profile.rtt else None
                # The baseline in the same run: stock Nix, and nixflare before batches.
                tools = [("nix copy (zstd)", nix_copy(top), {})] if count < 1000 or FULL else []
                if count < 1000:
                    tools.append(("nixflare push, a PUT per narinfo", nixflare(top), {"MAX_BATCH_NARINFOS": "0"}))
                tools.append(("nixflare push", nixflare(top), {}))
                stock = None
                for name, command, variables in tools:
                    seconds, requests, index_calls = timed(work, keys, profile, command, variables)
                    stock = seconds if name.startswith("nix copy") else stock
                    row = (f"| {count} paths, {nar_bytes / 2**20:.0f} MiB | {profile.name} | {name} | {seconds:.1f} | "
                           f"{f'{floor:.1f}' if floor else '—'} | {f'{seconds / floor:.1f}×' if floor else '—'} | "
                           f"{f'{seconds / stock:.2f}×' if stock else '—'} | {requests / count:.2f} | "
                           f"{index_calls / count:.3f} |")
                    print("wan:", row, flush=True)
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = "\n".join([
        "Closures of random (incompressible) bytes: 300 paths of 40–200 KiB plus 4 of 4 MiB, and 2,000 "
        "paths of 40–200 KiB, path i referring to paths i-1 and i/2 (a chain as deep as the closure: publishing one narinfo at a time, each only after its references, is then serial, the case batch publishing is for); pushed into an empty cache (local "
        "`wrangler dev`) through a userspace proxy adding the round-trip time and a shared rate each "
        "way, and answering `Expect: 100-continue` one round trip away as Cloudflare's edge does.",
        "",
        "| closure | link | tool | wall s | link floor s | / floor | / nix copy | requests per path | index calls per path |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Link floor: NAR bytes ÷ rate. \"A PUT per narinfo\": the same `nixflare push` against a worker "
        "with `MAX_BATCH_NARINFOS=0` (how it published before batches). Requests: all the worker served "
        "(queries, NARs, narinfos). Index calls: the worker's requests to the index's Durable Object "
        "(two per narinfo PUT; a batch logs its own). Stock `nix copy` of the 2,000-path closure runs only "
        "with `WAN_FULL=1` (minutes per profile).",
    ])
    return Section("Push over a WAN-shaped link (many small paths)", body)
