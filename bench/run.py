#!/usr/bin/env python3
"""clasp benchmarks: one command, standard library only.

    python3 bench/run.py                  # everything (a few minutes)
    python3 bench/run.py --quick          # smaller counts (about half a minute)
    python3 bench/run.py --scenarios whole,stream --json

Starts bench/fake_upstream.py and the proxy (``python -m clasp -provider custom``) as
subprocesses, pinned to different cores with taskset when it exists (the proxy on one core, the
fake upstream and this load generator on the other), and drives both with an asyncio load
generator over keep-alive connections. Every latency figure is measured against the fake
upstream directly in the same run, so the ratios hold on a noisy machine. Proxy CPU comes from
/proc/PID/stat (utime+stime), memory from /proc/PID/status (VmRSS, VmHWM).

Scenarios: whole (non-streaming 50 KB Claude Code request at concurrency 1/16/64), stream
(relayed events), ttfb, big (1 MB request), slow (500 concurrent slow streams, peak RSS),
long (one 10,000-chunk stream, RSS flat), startup (zipapp start-up to listening), workers
(-workers 2 vs 1 throughput; not in the default set).
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = Path(os.environ.get("CLASP_FIXTURES", "/work/shared/fixtures/claude-code"))
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
TRIM_AFTER_S = 1.0  # -memory-trim-after of the measured proxies (default 5 s), to keep runs short
ALL = ["whole", "stream", "ttfb", "big", "idle", "slow", "long", "startup"]
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- processes

def cores() -> tuple[str | None, str | None]:
    """(proxy core, upstream core) for taskset, or (None, None) without taskset / one CPU."""
    if not shutil.which("taskset") or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), str(cpus[1])


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (and of its live worker children)."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def mem_kib(pid: int, field: str) -> int:
    """VmRSS / VmHWM in KiB (summed over worker children when there are any)."""
    total = 0
    for p in children(pid) or [pid]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def sample_rss(pid: int, peak: list, interval: float) -> None:
    """Keep peak[0] at the highest VmRSS seen (KiB) until cancelled."""
    while True:
        peak[0] = max(peak[0], mem_kib(pid, "VmRSS"))
        await asyncio.sleep(interval)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> float:
    """Seconds until a TCP connect to port succeeds (polled every 2 ms)."""
    start = time.perf_counter()
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return time.perf_counter() - start
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"nothing listening on {port} after {timeout}s")
            time.sleep(0.002)


def pinned(cmd: list[str], core: str | None) -> list[str]:
    return ["taskset", "-c", core, *cmd] if core is not None else cmd


class Proc:
    def __init__(self, cmd: list[str], env: dict | None = None) -> None:
        self.started = time.perf_counter()
        # cwd=ROOT: `python -m clasp` puts the working directory first on sys.path, so run from
        # elsewhere it could benchmark another checkout's clasp instead of this one
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True, cwd=ROOT)
        self.pid = self.p.pid  # taskset execs the program: same pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        for f in (self.p.stdout, self.p.stderr):
            if f:
                f.close()


def start_upstream(core: str | None) -> tuple[Proc, int]:
    proc = Proc(pinned([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", "0"], core))
    line = proc.p.stdout.readline().decode()
    if not line.startswith("LISTENING"):
        proc.stop()
        raise RuntimeError(f"fake upstream failed to start: {line!r}")
    return proc, int(line.split()[1])


def proxy_env(upstream_port: int) -> dict:
    env = dict(os.environ)
    env.update(CUSTOM_BASE_URL=f"http://{HOST}:{upstream_port}/v1", CLASP_ACCESS_LOG="false",
               PYTHONPATH=str(ROOT))
    for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env.pop(k, None)
    return env


def compile_package() -> str:
    """Write clasp's bytecode cache first, as an install or any earlier run leaves it: otherwise,
    with PYTHONDONTWRITEBYTECODE set, every start compiles every module (and its RSS shows it)."""
    import compileall
    try:
        ok = compileall.compile_dir(str(ROOT / "clasp"), quiet=1)
    except OSError as e:
        ok = False
        print(f"note: bytecode not cached ({e})", file=sys.stderr)
    return "cached" if ok else "compiled at each start"


def start_proxy(upstream_port: int, core: str | None, *, entry: list[str] | None = None,
                workers: int = 1, extra: tuple[str, ...] = ()) -> tuple[Proc, int, float]:
    port = free_port()
    entry = entry or [sys.executable, "-m", "clasp"]
    cmd = [*entry, "-provider", "custom", "-model", "gpt-test", "-port", str(port),
           "-memory-trim-after", str(TRIM_AFTER_S), *extra]
    if workers > 1:
        cmd += ["-workers", str(workers)]
    proc = Proc(pinned(cmd, core), env=proxy_env(upstream_port))
    took = wait_listening(port, proc.p)
    return proc, port, took


# --------------------------------------------------------------------------- requests

def load_request() -> dict:
    path = FIXTURES / "first_request.json"
    if path.is_file():
        return json.loads(path.read_text())
    # Stand-in of the same shape and size (set CLASP_FIXTURES to use the real capture).
    tool = {"name": "Tool", "description": "d" * 2000,
            "input_schema": {"type": "object", "properties": {"x": {"type": "string", "description": "x" * 200}},
                             "required": ["x"], "additionalProperties": False}}
    return {"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True,
            "system": [{"type": "text", "text": "s" * 15000}],
            "tools": [dict(tool, name=f"Tool{i}") for i in range(12)],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}


def with_marker(body: dict, stream: bool, chunks: int = 20, delay_ms: int = 0, pad: int = 0) -> dict:
    """A copy of the Claude Code request that asks the fake upstream for a given stream shape."""
    b = copy.deepcopy(body)
    b["stream"] = stream
    text = f"[[bench chunks={chunks} delay_ms={delay_ms}]]"
    if pad:
        text += " " + ("lorem ipsum dolor sit amet " * (pad // 27 + 1))[:pad]
    b["messages"].append({"role": "assistant", "content": "ok"})
    b["messages"].append({"role": "user", "content": [{"type": "text", "text": text}]})
    return b


def openai_body(body: dict) -> bytes:
    """The body the proxy sends upstream, for the direct baseline (same size, same marker)."""
    from clasp.translate.capabilities import capabilities_for
    from clasp.translate.request import translate_request
    out, _ = translate_request(body, "gpt-test", capabilities_for("custom", "gpt-test"))
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


def http_request(path: str, body: bytes, port: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
            f"x-api-key: bench\r\nanthropic-version: 2023-06-01\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body


class Target:
    """Pre-encoded requests for one server: the proxy (Anthropic API) or the fake upstream."""

    def __init__(self, name: str, port: int, raw: bytes) -> None:
        self.name = name
        self.port = port
        self.raw = raw


def targets(req: dict, proxy_port: int, up_port: int) -> tuple[Target, Target]:
    body = json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode()
    return (Target("proxy", proxy_port, http_request("/v1/messages", body, proxy_port)),
            Target("direct", up_port, http_request("/v1/chat/completions", openai_body(req), up_port)))


# --------------------------------------------------------------------------- load generator

class Result:
    __slots__ = ("status", "latency", "ttfb", "events", "nbytes")

    def __init__(self, status: int, latency: float, ttfb: float, events: int, nbytes: int) -> None:
        self.status, self.latency, self.ttfb, self.events, self.nbytes = status, latency, ttfb, events, nbytes


class Conn:
    """One keep-alive HTTP/1.1 client connection (Content-Length and chunked responses)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def call(self, raw: bytes) -> Result:
        reader = self.reader
        t0 = time.perf_counter()
        self.writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        ttfb = time.perf_counter() - t0
        lines = head.decode("latin-1").lower().split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k] = v.strip()
        events = nbytes = 0
        if hdrs.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(size + 2)
                nbytes += size
                events += data.count(b"\n\n")
        else:
            n = int(hdrs.get("content-length", "0"))
            if n:
                await reader.readexactly(n)
            nbytes = n
        if hdrs.get("connection") == "close":
            self.close()
        return Result(status, time.perf_counter() - t0, ttfb, events, nbytes)

    def close(self) -> None:
        self.writer.close()


async def load(target: Target, raw: bytes, concurrency: int, total: int) -> tuple[list[Result], float]:
    """`total` requests over `concurrency` keep-alive connections; returns results and wall time."""
    conns = [await Conn.open(target.port) for _ in range(concurrency)]
    left = [total]
    results: list[Result] = []

    async def worker(c: Conn) -> None:
        while left[0] > 0:
            left[0] -= 1
            results.append(await c.call(raw))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return results, wall


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def check(results: list[Result], what: str) -> None:
    bad = [r.status for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} non-200 responses (first {bad[0]})")


# --------------------------------------------------------------------------- scenarios

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.smoke = args.smoke
        self.core_proxy, self.core_up = cores()
        self.req = load_request()
        self.up: Proc | None = None
        self.proxy: Proc | None = None
        self.results: dict = {"machine": machine(), "pinned": self.core_proxy is not None}

    def n(self, full: int, quick: int, smoke: int | None = None) -> int:
        if self.smoke:
            return smoke if smoke is not None else max(1, quick // 5)
        return quick if self.quick else full

    def __enter__(self) -> "Bench":
        self.results["bytecode"] = compile_package()
        if self.core_up is not None:
            os.sched_setaffinity(0, {int(self.core_up)})  # load generator shares the upstream's core
        self.up, self.up_port = start_upstream(self.core_up)
        self.proxy, self.port, self.listen_s = start_proxy(self.up_port, self.core_proxy)
        time.sleep(0.2)
        self.results["idle_rss_start_mib"] = mem_kib(self.proxy.pid, "VmRSS") / 1024
        return self

    def __exit__(self, *exc) -> None:
        for p in (self.proxy, self.up):
            if p is not None:
                p.stop()

    def run(self, name: str) -> None:
        getattr(self, "s_" + name)()

    # -- non-streaming 50 KB requests at concurrency 1 / 16 / 64
    def s_whole(self) -> None:
        req = with_marker(self.req, stream=False)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 4, self.n(200, 50, 10)))  # warm-up (imports, caches, pool)
        rows = []
        for conc in ((1, 16, 64) if not self.smoke else (1, 16)):
            total = self.n({1: 1500, 16: 3000, 64: 3000}[conc], {1: 300, 16: 600, 64: 600}[conc], 40)
            row: dict = {"concurrency": conc, "requests": total}
            for t in (direct, proxy):
                cpu0 = cpu_seconds(self.proxy.pid)
                res, wall = asyncio.run(load(t, t.raw, conc, total))
                cpu = cpu_seconds(self.proxy.pid) - cpu0
                check(res, f"whole {t.name} c={conc}")
                lat = [r.latency for r in res]
                row[t.name] = {"rps": total / wall, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}
                if t is proxy:
                    row[t.name]["cpu_s_per_1000"] = cpu / total * 1000
            row["added_p50_ms"] = row["proxy"]["p50_ms"] - row["direct"]["p50_ms"]
            row["rps_ratio"] = row["proxy"]["rps"] / row["direct"]["rps"]
            rows.append(row)
        self.results["whole"] = rows

    # -- relayed stream events (one upstream write per event)
    def s_stream(self) -> None:
        chunks = self.n(1000, 500, 100)
        req = with_marker(self.req, stream=True, chunks=chunks)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 2, 4))
        out = {"chunks_per_stream": chunks}
        for conc in (1, 16):
            total = self.n(20 if conc == 1 else 64, 8 if conc == 1 else 32, 4)
            row: dict = {}
            for t in (direct, proxy):
                cpu0 = cpu_seconds(self.proxy.pid)
                res, wall = asyncio.run(load(t, t.raw, conc, total))
                cpu = cpu_seconds(self.proxy.pid) - cpu0
                check(res, f"stream {t.name}")
                events = sum(r.events for r in res)
                row[t.name] = {"events": events, "events_per_s": events / wall}
                if t is proxy:
                    relayed = chunks * total  # upstream content chunks, each relayed as one event
                    row[t.name]["cpu_us_per_event"] = cpu / relayed * 1e6
            out[f"c{conc}"] = row
        self.results["stream"] = out

    # -- time to first byte, concurrency 1
    def s_ttfb(self) -> None:
        req = with_marker(self.req, stream=True, chunks=5)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 1, 10))
        total = self.n(500, 150, 20)
        out = {}
        for t in (direct, proxy):
            res, _ = asyncio.run(load(t, t.raw, 1, total))
            check(res, f"ttfb {t.name}")
            out[t.name] = {"ttfb_p50_ms": pct([r.ttfb for r in res], 50) * 1e3,
                           "ttfb_p99_ms": pct([r.ttfb for r in res], 99) * 1e3,
                           "total_p50_ms": pct([r.latency for r in res], 50) * 1e3}
        out["added_ttfb_p50_ms"] = out["proxy"]["ttfb_p50_ms"] - out["direct"]["ttfb_p50_ms"]
        self.results["ttfb"] = out

    # -- 1 MB request body
    def s_big(self) -> None:
        req = with_marker(self.req, stream=False, pad=1_000_000)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 1, 3))
        total = self.n(40, 15, 3)
        out: dict = {"body_bytes": len(proxy.raw)}
        for t in (direct, proxy):
            cpu0 = cpu_seconds(self.proxy.pid)
            res, _ = asyncio.run(load(t, t.raw, 1, total))
            cpu = cpu_seconds(self.proxy.pid) - cpu0
            check(res, f"big {t.name}")
            out[t.name] = {"p50_ms": pct([r.latency for r in res], 50) * 1e3}
            if t is proxy:
                out[t.name]["cpu_ms_per_request"] = cpu / total * 1e3
        self.results["big"] = out

    # -- idle RSS after the load so far
    def s_idle(self) -> None:
        time.sleep(TRIM_AFTER_S * 2.5)  # idle long enough for the proxy to hand memory back
        self.results["idle_rss_after_load_mib"] = mem_kib(self.proxy.pid, "VmRSS") / 1024

    # -- many concurrent slow streams: all complete, peak RSS
    def s_slow(self) -> None:
        streams = self.n(500, 200, 50)
        chunks = self.n(20, 10, 5)
        req = with_marker(self.req, stream=True, chunks=chunks, delay_ms=100)
        # A fresh proxy: the peak must not depend on what earlier scenarios left in its heap.
        # Burst: all requests sent in the same millisecond (worst case: every 50 KB body is
        # buffered at once); ramp: starts spread over 1 s, as when sessions start independently.
        for key, ramp in (("slow", 0.0), ("slow_ramp", 1.0)):
            fresh, port, _ = start_proxy(self.up_port, self.core_proxy)
            try:
                self.results[key] = self._slow(fresh.pid, port, req, streams, chunks, ramp)
            finally:
                fresh.stop()

    def _slow(self, pid: int, port: int, req: dict, streams: int, chunks: int, ramp: float) -> dict:
        proxy, _ = targets(req, port, self.up_port)
        asyncio.run(load(proxy, with_marker_raw(self.req, port, 2), 1, 1))  # warm-up
        exact_peak = reset_peak(pid)
        before = mem_kib(pid, "VmRSS")
        peak = [before]

        async def go():
            sampler = asyncio.ensure_future(sample_rss(pid, peak, 0.05))
            # open connections in batches: a 500-connection burst can overflow a small accept backlog
            conns = []
            for i in range(0, streams, 50):
                conns += await asyncio.gather(*(Conn.open(port) for _ in range(min(50, streams - i))))
            t0 = time.perf_counter()

            async def one(i: int, c: Conn) -> Result:
                if ramp:
                    await asyncio.sleep(ramp * i / streams)
                return await c.call(proxy.raw)

            res = await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)), return_exceptions=True)
            wall = time.perf_counter() - t0
            sampler.cancel()
            for c in conns:
                c.close()
            return res, wall

        res, wall = asyncio.run(go())
        ok = sum(1 for r in res if isinstance(r, Result) and r.status == 200 and r.events >= chunks + 4)
        hwm = mem_kib(pid, "VmHWM") if exact_peak else peak[0]
        time.sleep(TRIM_AFTER_S * 2.5)  # idle: the proxy hands freed memory back to the OS
        return {"streams": streams, "chunks_each": chunks, "interval_ms": 100, "ramp_s": ramp,
                "completed": ok, "wall_s": wall, "rss_before_mib": before / 1024,
                "peak_rss_mib": max(hwm, peak[0]) / 1024, "rss_idle_after_mib": mem_kib(pid, "VmRSS") / 1024}

    # -- one long stream: memory must stay flat
    def s_long(self) -> None:
        chunks = self.n(10000, 10000, 2000)
        req = with_marker(self.req, stream=True, chunks=chunks)
        proxy, _ = targets(req, self.port, self.up_port)
        pid = self.proxy.pid
        asyncio.run(load(proxy, with_marker_raw(self.req, self.port, 100), 1, 1))  # warm the path
        before = mem_kib(pid, "VmRSS")
        peak = [before]

        async def go():
            sampler = asyncio.ensure_future(sample_rss(pid, peak, 0.02))
            c = await Conn.open(self.port)
            r = await c.call(proxy.raw)
            sampler.cancel()
            c.close()
            return r

        r = asyncio.run(go())
        time.sleep(0.1)
        after = mem_kib(pid, "VmRSS")
        self.results["long"] = {"chunks": chunks, "events": r.events, "rss_before_mib": before / 1024,
                                "rss_peak_mib": peak[0] / 1024, "rss_after_mib": after / 1024}

    # -- start-up to listening: zipapp (and source tree) with the real command line
    def s_startup(self) -> None:
        runs = self.n(7, 3, 1)
        out = {}
        with tempfile.TemporaryDirectory(prefix="clasp-bench-") as tmp:
            pyz = Path(tmp) / "clasp.pyz"
            sys.path.insert(0, str(ROOT / "tools"))
            entries = {"source": [sys.executable, "-m", "clasp"]}
            try:
                from build_zipapp import build
                build(pyz, compile_bytecode=False)
                build(pyz.with_name("compiled.pyz"), compile_bytecode=True)
                entries["zipapp --compile"] = [sys.executable, "-I", str(pyz.with_name("compiled.pyz"))]
                entries["zipapp"] = [sys.executable, "-I", str(pyz)]
            except Exception as e:  # no tools/ in a trimmed checkout: source only
                print(f"note: zipapp not built ({e})", file=sys.stderr)
            for name, entry in entries.items():
                times, rss = [], []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    proc, port, _ = start_proxy(self.up_port, self.core_proxy, entry=entry)
                    times.append(time.perf_counter() - t0)
                    time.sleep(0.2)
                    rss.append(mem_kib(proc.pid, "VmRSS") / 1024)
                    proc.stop()
                out[name] = {"p50_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                             "idle_rss_mib": statistics.median(rss)}
        self.results["startup"] = out

    # -- -workers 2 vs 1 (unpinned: workers need both cores)
    def s_workers(self) -> None:
        req = with_marker(self.req, stream=False)
        total = self.n(3000, 800, 60)
        out = {}
        for workers in (1, 2):
            proc, port, _ = start_proxy(self.up_port, None, workers=workers)
            try:
                time.sleep(0.2)
                proxy, _ = targets(req, port, self.up_port)
                asyncio.run(load(proxy, proxy.raw, 16, 100))
                cpu0 = cpu_seconds(proc.pid)
                res, wall = asyncio.run(load(proxy, proxy.raw, 64, total))
                cpu = cpu_seconds(proc.pid) - cpu0
                check(res, f"workers={workers}")
                out[f"workers_{workers}"] = {"rps": total / wall, "p50_ms": pct([r.latency for r in res], 50) * 1e3,
                                             "p99_ms": pct([r.latency for r in res], 99) * 1e3,
                                             "cpu_s_per_1000": cpu / total * 1000,
                                             "rss_mib": mem_kib(proc.pid, "VmRSS") / 1024}
            finally:
                proc.stop()
        out["speedup"] = out["workers_2"]["rps"] / out["workers_1"]["rps"]
        self.results["workers"] = out


def with_marker_raw(req: dict, port: int, chunks: int) -> bytes:
    body = json.dumps(with_marker(req, stream=True, chunks=chunks), separators=(",", ":")).encode()
    return http_request("/v1/messages", body, port)


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform}


# --------------------------------------------------------------------------- report

def table(r: dict) -> str:
    lines = []
    m = r["machine"]
    lines.append(f"machine: {m['cpu'] or '?'} x{m['cpus']}, python {m['python']}, "
                 f"{'proxy pinned to its own core' if r['pinned'] else 'not pinned (no taskset)'}, "
                 f"bytecode {r.get('bytecode', '?')}")
    lines.append(f"{'metric':<46}{'direct':>12}{'proxy':>12}{'ratio/added':>14}")

    def row(name: str, direct: str, proxy: str, extra: str = "") -> None:
        lines.append(f"{name:<46}{direct:>12}{proxy:>12}{extra:>14}")

    for w in r.get("whole", []):
        c = w["concurrency"]
        d, p = w["direct"], w["proxy"]
        row(f"non-stream 50KB c={c}: req/s", f"{d['rps']:.0f}", f"{p['rps']:.0f}", f"x{w['rps_ratio']:.2f}")
        row(f"non-stream 50KB c={c}: latency p50 ms", f"{d['p50_ms']:.2f}", f"{p['p50_ms']:.2f}",
            f"+{w['added_p50_ms']:.2f}")
        row(f"non-stream 50KB c={c}: latency p99 ms", f"{d['p99_ms']:.2f}", f"{p['p99_ms']:.2f}", "")
        row(f"non-stream 50KB c={c}: proxy CPU ms/request", "", f"{p['cpu_s_per_1000']:.3f}", "")
    s = r.get("stream")
    if s:
        for key in ("c1", "c16"):
            d, p = s[key]["direct"], s[key]["proxy"]
            row(f"stream ({key}): events/s", f"{d['events_per_s']:.0f}", f"{p['events_per_s']:.0f}",
                f"x{p['events_per_s'] / d['events_per_s']:.2f}")
            row(f"stream ({key}): proxy CPU us/event", "", f"{p['cpu_us_per_event']:.1f}", "")
    t = r.get("ttfb")
    if t:
        row("stream TTFB p50 ms (c=1)", f"{t['direct']['ttfb_p50_ms']:.2f}", f"{t['proxy']['ttfb_p50_ms']:.2f}",
            f"+{t['added_ttfb_p50_ms']:.2f}")
        row("stream TTFB p99 ms (c=1)", f"{t['direct']['ttfb_p99_ms']:.2f}", f"{t['proxy']['ttfb_p99_ms']:.2f}", "")
    b = r.get("big")
    if b:
        row(f"1 MB request: latency p50 ms", f"{b['direct']['p50_ms']:.2f}", f"{b['proxy']['p50_ms']:.2f}", "")
        row(f"1 MB request: proxy CPU ms/request", "", f"{b['proxy']['cpu_ms_per_request']:.2f}", "")
    row("idle RSS at start MiB", "", f"{r['idle_rss_start_mib']:.1f}", "")
    if "idle_rss_after_load_mib" in r:
        row("idle RSS after load MiB", "", f"{r['idle_rss_after_load_mib']:.1f}", "")
    for key, how in (("slow", "burst"), ("slow_ramp", "1 s ramp")):
        sl = r.get(key)
        if sl:
            row(f"{sl['streams']} slow streams ({how}): completed", "", f"{sl['completed']}/{sl['streams']}", "")
            row(f"{sl['streams']} slow streams ({how}): peak RSS MiB", "", f"{sl['peak_rss_mib']:.1f}", "")
            row(f"{sl['streams']} slow streams ({how}): RSS once idle MiB", "",
                f"{sl['rss_idle_after_mib']:.1f}", "")
    lg = r.get("long")
    if lg:
        row(f"{lg['chunks']}-chunk stream: RSS before/peak/after MiB", "",
            f"{lg['rss_before_mib']:.1f}/{lg['rss_peak_mib']:.1f}/{lg['rss_after_mib']:.1f}", "")
    st = r.get("startup")
    if st:
        for name, v in st.items():
            row(f"start-up to listening ({name}) p50 ms", "", f"{v['p50_ms']:.0f}", "")
            row(f"idle RSS ({name}) MiB", "", f"{v['idle_rss_mib']:.1f}", "")
    wk = r.get("workers")
    if wk:
        for k in ("workers_1", "workers_2"):
            row(f"-workers {k[-1]} c=64 (unpinned): req/s", "", f"{wk[k]['rps']:.0f}", "")
        row("-workers 2 speed-up", "", "", f"x{wk['speedup']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="clasp benchmarks (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="smaller counts (about half a minute)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts: checks that every scenario runs")
    ap.add_argument("--scenarios", default=",".join(ALL),
                    help=f"comma list of {','.join(ALL)},workers (default: all but workers)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in ALL + ["workers"]]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    with Bench(args) as bench:
        for name in names:
            if not args.json:
                print(f"... {name}", file=sys.stderr, flush=True)
            bench.run(name)
        results = bench.results
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
