#!/usr/bin/env python3
"""clasp benchmarks: one command, standard library only.

    python3 bench/run.py                  # everything (a few minutes)
    python3 bench/run.py --quick          # smaller counts (about half a minute)
    python3 bench/run.py --scenarios whole,stream --json
    python3 bench/run.py --peer "NAME=COMMAND with {port} {upstream} {tmp}"   # side by side

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

--peer NAME=COMMAND (repeatable) also runs the same scenarios, on the same fake upstream and core,
against another proxy that serves the Anthropic /v1/messages API (see bench/README.md and
bench/peers/): its CPU and memory are summed over its whole process tree, and a scenario it
fails shows as failed in a side-by-side table instead of stopping the run.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shlex
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
# --config: the clasp configuration measured (every clasp process of the run gets it)
CONFIGS = {
    "default": "the defaults: no client keys, no rate limit, no cache",
    "keys": "a keys file with one key (rate limit, daily and monthly budget) on a priced model",
    "limits": "-rate-limit and -cache on the local store (Claude Code requests are not cacheable: "
              "every request is looked at, none is served from the cache)",
}
# The key every request sends (x-api-key): the keys file's one key under --config keys, ignored otherwise.
BENCH_KEY = "bench-client-key-0123456789"
# Limits no benchmark reaches: the checks run on every request, none is refused.
UNREACHED_RATE = 100_000_000


# --------------------------------------------------------------------------- processes

def cores() -> tuple[str | None, str | None]:
    """(proxy core, upstream core) for taskset, or (None, None) without taskset / one CPU."""
    if not shutil.which("taskset") or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), str(cpus[1])


def descendants(pid: int) -> list[int]:
    """Every live process below pid: children of all its threads, their children, and so on."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(x) for x in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.append(k)
                    todo.append(k)
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime summed over pid and its live descendants (workers, a peer's helpers)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def mem_kib(pid: int, field: str) -> int:
    """VmRSS / VmHWM in KiB summed over pid and its descendants (shared pages count in each)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def sample_rss(rss, peak: list, interval: float) -> None:
    """Keep peak[0] at the highest rss() seen (VmRSS in KiB) until cancelled."""
    while True:
        peak[0] = max(peak[0], rss())
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


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0, poll: float = 0.002) -> float:
    """Seconds until a TCP connect to port succeeds (polled every 2 ms by default)."""
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
            time.sleep(poll)


def pinned(cmd: list[str], core: str | None) -> list[str]:
    return ["taskset", "-c", core, *cmd] if core is not None else cmd


class Proc:
    """A subprocess in its own session. With `log` (peers), its output goes to that file instead
    of pipes nobody reads, and stop() signals its whole process group (workers included)."""

    def __init__(self, cmd: list[str], env: dict | None = None, log: Path | None = None) -> None:
        self.started = time.perf_counter()
        self.group = log is not None
        if log is not None:
            with open(log, "wb") as out:
                self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        else:
            # cwd=ROOT: `python -m clasp` puts the working directory first on sys.path, so run from
            # elsewhere it could benchmark another checkout's clasp instead of this one
            self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True, cwd=ROOT)
        self.pid = self.p.pid  # taskset execs the program: same pid

    def _signal(self, sig: int) -> None:
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                self.p.send_signal(sig)
        except OSError:
            pass

    def stop(self) -> None:
        if self.p.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.p.wait(10 if self.group else 5)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.p.wait(5)
        if self.group:
            self._signal(signal.SIGKILL)  # anything of the peer's left in its group
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


def config_args(name: str, tmp: str) -> tuple[str, ...]:
    """The clasp flags of a --config (files it needs are written to ``tmp``)."""
    if name == "keys":
        path = Path(tmp) / "keys.json"
        path.write_text(json.dumps({"keys": [{
            "name": "bench", "key": BENCH_KEY, "rate_limit": UNREACHED_RATE, "burst": UNREACHED_RATE,
            "daily_budget_usd": 1e9, "monthly_budget_usd": 1e9}]}))
        return ("-keys-file", str(path), "-prices", "gpt-test=1.0/0.1/4.0")
    if name == "limits":
        return ("-rate-limit", "-rate-limit-requests", str(UNREACHED_RATE), "-rate-limit-burst",
                str(UNREACHED_RATE), "-cache")
    return ()


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
            f"x-api-key: {BENCH_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-length: {len(body)}\r\n\r\n"
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
    """One response: ttfb is the time to the response head, first_event to the first body chunk
    of a chunked (streamed) response; status 0 with `error` when the request itself failed."""
    __slots__ = ("status", "latency", "ttfb", "events", "nbytes", "first_event", "error")

    def __init__(self, status: int, latency: float, ttfb: float, events: int, nbytes: int,
                 first_event: float | None = None, error: str | None = None) -> None:
        self.status, self.latency, self.ttfb, self.events, self.nbytes = status, latency, ttfb, events, nbytes
        self.first_event, self.error = first_event, error


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
        first = None
        if hdrs.get("transfer-encoding") == "chunked":
            last_nl = False  # an event's blank line may straddle two chunks
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = (await reader.readexactly(size + 2))[:-2]
                if first is None:
                    first = time.perf_counter() - t0
                if b"\r" in data:  # SSE allows CRLF line ends
                    data = data.replace(b"\r\n", b"\n")
                nbytes += size
                events += data.count(b"\n\n") + (last_nl and data[:1] == b"\n")
                last_nl = data[-1:] == b"\n"
        else:
            n = int(hdrs.get("content-length", "0"))
            if n:
                await reader.readexactly(n)
            nbytes = n
        if hdrs.get("connection") == "close":
            self.close()
        return Result(status, time.perf_counter() - t0, ttfb, events, nbytes, first)

    def close(self) -> None:
        self.writer.close()


async def load(target: Target, raw: bytes, concurrency: int, total: int,
               timeout: float | None = None) -> tuple[list[Result], float]:
    """`total` requests over `concurrency` keep-alive connections; returns results and wall time.
    A request that fails (reset, bad response) is a Result with status 0 and the connection is
    reopened; after `timeout` seconds the rest is abandoned (fewer results than `total`)."""
    conns = [await Conn.open(target.port) for _ in range(concurrency)]
    left = [total]
    results: list[Result] = []

    async def worker(c: Conn | None) -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            try:
                if c is None or c.writer.is_closing():  # after a failure, or `connection: close`
                    c = await Conn.open(target.port)
                results.append(await c.call(raw))
            except Exception as e:  # noqa: BLE001 -- any failure of one request is a result
                results.append(Result(0, time.perf_counter() - t0, 0.0, 0, 0, None, f"{type(e).__name__}: {e}"[:200]))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(c)) for c in conns]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    wall = time.perf_counter() - t0
    for t in pending:
        t.cancel()
    for c in conns:
        c.close()
    return results, wall


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def check(results: list[Result], what: str) -> None:
    bad = [r for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} non-200 responses (first {bad[0].error or bad[0].status})")


# --------------------------------------------------------------------------- scenarios

class Subject:
    """A proxy under test (clasp, or a peer given with --peer); CPU time and memory are read over
    its whole process tree (workers, wrappers)."""

    def __init__(self, name: str, proc: Proc, port: int, listen_s: float = 0.0, peer: bool = False,
                 tmp: str | None = None) -> None:
        self.name, self.proc, self.port, self.listen_s, self.peer, self.tmp = name, proc, port, listen_s, peer, tmp
        self.pid = proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def mem(self, field: str) -> int:
        return mem_kib(self.pid, field)

    def reset_peak(self) -> bool:
        return all([reset_peak(p) for p in [self.pid, *descendants(self.pid)]])

    def log_tail(self, lines: int = 3) -> str:
        """The last lines a peer wrote (its output goes to a file in its {tmp} directory)."""
        if not self.tmp:
            return ""
        try:
            text = (Path(self.tmp) / PEER_LOG).read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(tail)[-400:]


class Peer:
    """--peer NAME=COMMAND: COMMAND is split like a shell would (shlex, no shell runs it) and
    {port}, {upstream} (the fake upstream's base URL, http://127.0.0.1:PORT/v1) and {tmp} (a fresh
    directory per start, removed after the peer stops) are filled in at each start."""

    def __init__(self, spec: str) -> None:
        name, sep, command = spec.partition("=")
        name = name.strip()
        if not sep or not name or not command.strip():
            raise ValueError(f"--peer wants NAME=COMMAND, got {spec!r}")
        if name in ("clasp", "direct", "proxy"):
            raise ValueError(f"--peer name {name!r} is taken")
        if "{port}" not in command:
            raise ValueError(f"--peer {name}: the command must contain {{port}} (where the peer listens)")
        self.name, self.command = name, command
        self.argv = shlex.split(command)

    def argv_for(self, port: int, upstream: str, tmp: str) -> list[str]:
        out = []
        for a in self.argv:
            for k, v in (("{port}", str(port)), ("{upstream}", upstream), ("{tmp}", tmp)):
                a = a.replace(k, v)
            out.append(a)
        return out


PEER_LOG = "bench-peer.log"
PEER_SETTLE_S = 1.0  # a peer's idle RSS at start is read this long after it listens


def peer_env() -> dict:
    env = dict(os.environ)
    for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    return env


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.smoke = args.smoke
        self.core_proxy, self.core_up = cores()
        self.req = load_request()
        self.up: Proc | None = None
        self.proxy: Proc | None = None
        self.peers = [Peer(s) for s in getattr(args, "peer", None) or []]
        self.live: list[Subject] = []  # running peers, stopped on exit whatever happens
        self.results: dict = {"machine": machine(), "pinned": self.core_proxy is not None}
        self.config = getattr(args, "config", None) or "default"
        self.results["config"] = self.config
        self.config_dir = tempfile.mkdtemp(prefix="clasp-bench-config-")
        self.extra = config_args(self.config, self.config_dir)

    def n(self, full: int, quick: int, smoke: int | None = None) -> int:
        if self.smoke:
            return smoke if smoke is not None else max(1, quick // 5)
        return quick if self.quick else full

    def __enter__(self) -> "Bench":
        self.results["bytecode"] = compile_package()
        if self.core_up is not None:
            os.sched_setaffinity(0, {int(self.core_up)})  # load generator shares the upstream's core
        self.up, self.up_port = start_upstream(self.core_up)
        self.proxy, self.port, self.listen_s = start_proxy(self.up_port, self.core_proxy, extra=self.extra)
        self.clasp = Subject("clasp", self.proxy, self.port, self.listen_s)
        time.sleep(0.2)
        self.results["idle_rss_start_mib"] = mem_kib(self.proxy.pid, "VmRSS") / 1024
        return self

    def __exit__(self, *exc) -> None:
        for s in list(self.live):
            self.stop_peer(s)
        for p in (self.proxy, self.up):
            if p is not None:
                p.stop()
        shutil.rmtree(self.config_dir, ignore_errors=True)

    def run(self, name: str) -> None:
        getattr(self, "s_" + name)()

    # -- shared by clasp and the peers

    def proxy_target(self, req: dict, port: int) -> Target:
        body = json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode()
        return Target("proxy", port, http_request("/v1/messages", body, port))

    def timed(self, subj: Subject | None, t: Target, conc: int, total: int) -> tuple[list[Result], float, float]:
        """Run a load; returns results, wall time and the subject's CPU seconds meanwhile."""
        timeout = self.args.peer_timeout if subj is not None and subj.peer else None
        cpu0 = subj.cpu() if subj else 0.0
        res, wall = asyncio.run(load(t, t.raw, conc, total, timeout))
        return res, wall, (subj.cpu() - cpu0 if subj else 0.0)

    def judge(self, subj: Subject | None, res: list[Result], total: int, what: str, min_events: int = 0) -> dict:
        """{} when every request got a 200 (a stream: with at least min_events events). Otherwise
        clasp and the direct baseline stop the run, as ever; a peer gets the failure recorded."""
        ok = sum(1 for r in res if r.status == 200 and r.events >= min_events)
        if ok == total:
            return {}
        bad = next((r for r in res if r.status != 200 or r.events < min_events), None)
        if bad is None:
            first = f"timed out after {self.args.peer_timeout:.0f} s"
        elif bad.status != 200:
            first = bad.error or f"HTTP {bad.status}"
        else:
            first = f"HTTP 200 with only {bad.events} events"
        msg = f"{total - ok}/{total} failed (first: {first})"
        if subj is None or not subj.peer:
            raise RuntimeError(f"{what}: {msg}")
        return {"failed": msg, "ok": ok, "requests": total}

    def warm(self, subj: Subject, t: Target, raw: bytes, conc: int, total: int) -> None:
        timeout = min(60.0, self.args.peer_timeout) if subj.peer else None
        asyncio.run(load(t, raw, conc, total, timeout))

    def whole_plan(self) -> list[tuple[int, int]]:
        return [(c, self.n({1: 1500, 16: 3000, 64: 3000}[c], {1: 300, 16: 600, 64: 600}[c], 40))
                for c in ((1, 16, 64) if not self.smoke else (1, 16))]

    def whole_cell(self, subj: Subject | None, t: Target, conc: int, total: int) -> dict:
        res, wall, cpu = self.timed(subj, t, conc, total)
        out = self.judge(subj, res, total, f"whole {t.name} c={conc}")
        lat = [r.latency for r in res if r.status == 200]
        out.update(rps=total / wall, p50_ms=pct(lat, 50) * 1e3, p99_ms=pct(lat, 99) * 1e3)
        if subj is not None:
            out["cpu_s_per_1000"] = cpu / total * 1000
        return out

    def stream_plan(self) -> tuple[int, list[tuple[int, int]]]:
        return self.n(1000, 500, 100), [(c, self.n(20 if c == 1 else 64, 8 if c == 1 else 32, 4)) for c in (1, 16)]

    def stream_cell(self, subj: Subject | None, t: Target, conc: int, total: int, chunks: int) -> dict:
        res, wall, cpu = self.timed(subj, t, conc, total)
        out = self.judge(subj, res, total, f"stream {t.name}", min_events=chunks)
        events = sum(r.events for r in res)
        out.update(events=events, events_per_s=events / wall)
        if subj is not None:
            relayed = chunks * total  # upstream content chunks, each relayed as one event
            out["cpu_us_per_event"] = cpu / relayed * 1e6
        return out

    def ttfb_cell(self, subj: Subject | None, t: Target, total: int) -> dict:
        res, _, _ = self.timed(subj, t, 1, total)
        out = self.judge(subj, res, total, f"ttfb {t.name}", min_events=5)
        ok = [r for r in res if r.status == 200]
        first = [r.first_event for r in ok if r.first_event is not None]
        out.update(ttfb_p50_ms=pct([r.ttfb for r in ok], 50) * 1e3, ttfb_p99_ms=pct([r.ttfb for r in ok], 99) * 1e3,
                   total_p50_ms=pct([r.latency for r in ok], 50) * 1e3, first_event_p50_ms=pct(first, 50) * 1e3)
        return out

    def big_cell(self, subj: Subject | None, t: Target, total: int) -> dict:
        res, _, cpu = self.timed(subj, t, 1, total)
        out = self.judge(subj, res, total, f"big {t.name}")
        out["p50_ms"] = pct([r.latency for r in res if r.status == 200], 50) * 1e3
        if subj is not None:
            out["cpu_ms_per_request"] = cpu / total * 1e3
        return out

    # -- non-streaming 50 KB requests at concurrency 1 / 16 / 64
    def s_whole(self) -> None:
        req = with_marker(self.req, stream=False)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 4, self.n(200, 50, 10)))  # warm-up (imports, caches, pool)
        rows = []
        for conc, total in self.whole_plan():
            row: dict = {"concurrency": conc, "requests": total,
                         "direct": self.whole_cell(None, direct, conc, total),
                         "proxy": self.whole_cell(self.clasp, proxy, conc, total)}
            row["added_p50_ms"] = row["proxy"]["p50_ms"] - row["direct"]["p50_ms"]
            row["rps_ratio"] = row["proxy"]["rps"] / row["direct"]["rps"]
            rows.append(row)
        self.results["whole"] = rows

    def p_whole(self, subj: Subject, peer: Peer) -> dict:
        t = self.proxy_target(with_marker(self.req, stream=False), subj.port)
        self.warm(subj, t, t.raw, 4, self.n(200, 50, 10))
        return {"whole": {f"c{conc}": {"concurrency": conc, **self.whole_cell(subj, t, conc, total)}
                          for conc, total in self.whole_plan()}}

    # -- relayed stream events (one upstream write per event)
    def s_stream(self) -> None:
        chunks, plan = self.stream_plan()
        req = with_marker(self.req, stream=True, chunks=chunks)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 2, 4))
        out: dict = {"chunks_per_stream": chunks}
        for conc, total in plan:
            out[f"c{conc}"] = {"direct": self.stream_cell(None, direct, conc, total, chunks),
                               "proxy": self.stream_cell(self.clasp, proxy, conc, total, chunks)}
        self.results["stream"] = out

    def p_stream(self, subj: Subject, peer: Peer) -> dict:
        chunks, plan = self.stream_plan()
        t = self.proxy_target(with_marker(self.req, stream=True, chunks=chunks), subj.port)
        self.warm(subj, t, t.raw, 2, 4)
        out: dict = {"chunks_per_stream": chunks}
        for conc, total in plan:
            out[f"c{conc}"] = self.stream_cell(subj, t, conc, total, chunks)
        return {"stream": out}

    # -- time to first byte, concurrency 1
    def s_ttfb(self) -> None:
        req = with_marker(self.req, stream=True, chunks=5)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 1, 10))
        total = self.n(500, 150, 20)
        out = {"direct": self.ttfb_cell(None, direct, total), "proxy": self.ttfb_cell(self.clasp, proxy, total)}
        out["added_ttfb_p50_ms"] = out["proxy"]["ttfb_p50_ms"] - out["direct"]["ttfb_p50_ms"]
        self.results["ttfb"] = out

    def p_ttfb(self, subj: Subject, peer: Peer) -> dict:
        t = self.proxy_target(with_marker(self.req, stream=True, chunks=5), subj.port)
        self.warm(subj, t, t.raw, 1, 10)
        return {"ttfb": self.ttfb_cell(subj, t, self.n(500, 150, 20))}

    # -- 1 MB request body
    def s_big(self) -> None:
        req = with_marker(self.req, stream=False, pad=1_000_000)
        proxy, direct = targets(req, self.port, self.up_port)
        asyncio.run(load(proxy, proxy.raw, 1, 3))
        total = self.n(40, 15, 3)
        self.results["big"] = {"body_bytes": len(proxy.raw), "direct": self.big_cell(None, direct, total),
                               "proxy": self.big_cell(self.clasp, proxy, total)}

    def p_big(self, subj: Subject, peer: Peer) -> dict:
        t = self.proxy_target(with_marker(self.req, stream=False, pad=1_000_000), subj.port)
        self.warm(subj, t, t.raw, 1, 3)
        return {"big": self.big_cell(subj, t, self.n(40, 15, 3))}

    # -- idle RSS after the load so far
    def s_idle(self) -> None:
        time.sleep(TRIM_AFTER_S * 2.5)  # idle long enough for the proxy to hand memory back
        self.results["idle_rss_after_load_mib"] = mem_kib(self.proxy.pid, "VmRSS") / 1024

    def p_idle(self, subj: Subject, peer: Peer) -> dict:
        time.sleep(TRIM_AFTER_S * 2.5)  # the same wait as clasp's
        return {"idle": {"rss_after_load_mib": subj.mem("VmRSS") / 1024}}

    # -- many concurrent slow streams: all complete, peak RSS
    def slow_plan(self) -> tuple[int, int, dict]:
        streams = self.n(500, 200, 50)
        chunks = self.n(20, 10, 5)
        return streams, chunks, with_marker(self.req, stream=True, chunks=chunks, delay_ms=100)

    def s_slow(self) -> None:
        streams, chunks, req = self.slow_plan()
        # A fresh proxy: the peak must not depend on what earlier scenarios left in its heap.
        # Burst: all requests sent in the same millisecond (worst case: every 50 KB body is
        # buffered at once); ramp: starts spread over 1 s, as when sessions start independently.
        for key, ramp in (("slow", 0.0), ("slow_ramp", 1.0)):
            fresh, port, _ = start_proxy(self.up_port, self.core_proxy, extra=self.extra)
            try:
                self.results[key] = self._slow(Subject("clasp", fresh, port), req, streams, chunks, ramp)
            finally:
                fresh.stop()

    def p_slow(self, subj: Subject, peer: Peer) -> dict:
        streams, chunks, req = self.slow_plan()
        out: dict = {}
        for key, ramp in (("slow", 0.0), ("slow_ramp", 1.0)):
            fresh = None
            try:
                fresh = self.start_peer(peer)
                time.sleep(PEER_SETTLE_S)
                out[key] = self._slow(fresh, req, streams, chunks, ramp)
            except Exception as e:  # noqa: BLE001 -- recorded, shown as failed
                out[key] = {"error": self.describe(e, fresh)}
            finally:
                if fresh is not None:
                    self.stop_peer(fresh)
        return out

    def _slow(self, subj: Subject, req: dict, streams: int, chunks: int, ramp: float) -> dict:
        port = subj.port
        proxy = self.proxy_target(req, port)
        self.warm(subj, proxy, with_marker_raw(self.req, port, 2), 1, 1)
        exact_peak = subj.reset_peak()
        before = subj.mem("VmRSS")
        peak = [before]
        timeout = self.args.peer_timeout if subj.peer else None

        async def go():
            sampler = asyncio.ensure_future(sample_rss(lambda: subj.mem("VmRSS"), peak, 0.05))
            # open connections in batches: a 500-connection burst can overflow a small accept backlog
            conns: list = []
            for i in range(0, streams, 50):
                conns += await asyncio.gather(*(Conn.open(port) for _ in range(min(50, streams - i))),
                                              return_exceptions=True)
            t0 = time.perf_counter()

            async def one(i: int, c) -> Result:
                if isinstance(c, BaseException):
                    raise c
                if ramp:
                    await asyncio.sleep(ramp * i / streams)
                return await c.call(proxy.raw)

            tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(conns)]
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            wall = time.perf_counter() - t0
            for t in pending:
                t.cancel()
            sampler.cancel()
            for c in conns:
                if isinstance(c, Conn):
                    c.close()
            res = [(t.exception() or t.result()) if t in done else TimeoutError(f"not done after {timeout} s")
                   for t in tasks]
            return res, wall

        res, wall = asyncio.run(go())
        good = [isinstance(r, Result) and r.status == 200 and r.events >= chunks + 4 for r in res]
        ok = sum(good)
        hwm = subj.mem("VmHWM") if exact_peak else peak[0]
        time.sleep(TRIM_AFTER_S * 2.5)  # idle: the proxy hands freed memory back to the OS
        out = {"streams": streams, "chunks_each": chunks, "interval_ms": 100, "ramp_s": ramp,
               "completed": ok, "wall_s": wall, "rss_before_mib": before / 1024,
               "peak_rss_mib": max(hwm, peak[0]) / 1024, "rss_idle_after_mib": subj.mem("VmRSS") / 1024}
        if ok < streams:
            r = next(r for r, g in zip(res, good) if not g)
            out["first_failure"] = (f"{type(r).__name__}: {r}"[:200] if isinstance(r, BaseException)
                                    else f"HTTP {r.status}, {r.events} events")
        return out

    # -- one long stream: memory must stay flat
    def s_long(self) -> None:
        self.results["long"] = self._long(self.clasp)

    def p_long(self, subj: Subject, peer: Peer) -> dict:
        return {"long": self._long(subj)}

    def _long(self, subj: Subject) -> dict:
        chunks = self.n(10000, 10000, 2000)
        req = with_marker(self.req, stream=True, chunks=chunks)
        proxy = self.proxy_target(req, subj.port)
        self.warm(subj, proxy, with_marker_raw(self.req, subj.port, 100), 1, 1)  # warm the path
        before = subj.mem("VmRSS")
        peak = [before]
        timeout = self.args.peer_timeout if subj.peer else None

        async def go():
            sampler = asyncio.ensure_future(sample_rss(lambda: subj.mem("VmRSS"), peak, 0.02))
            c = await Conn.open(subj.port)
            try:
                return await asyncio.wait_for(c.call(proxy.raw), timeout)
            except asyncio.TimeoutError:
                raise RuntimeError(f"stream not complete after {timeout:.0f} s") from None
            finally:
                sampler.cancel()
                c.close()

        r = asyncio.run(go())
        time.sleep(0.1)
        after = subj.mem("VmRSS")
        out = {"chunks": chunks, "events": r.events, "rss_before_mib": before / 1024,
               "rss_peak_mib": peak[0] / 1024, "rss_after_mib": after / 1024}
        if r.status != 200 or r.events < chunks:
            out.update(failed=f"HTTP {r.status} with {r.events} events for {chunks} chunks", ok=0, requests=1)
        return out

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
                    proc, port, _ = start_proxy(self.up_port, self.core_proxy, entry=entry, extra=self.extra)
                    times.append(time.perf_counter() - t0)
                    time.sleep(0.2)
                    rss.append(mem_kib(proc.pid, "VmRSS") / 1024)
                    proc.stop()
                out[name] = {"p50_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                             "idle_rss_mib": statistics.median(rss)}
        self.results["startup"] = out

    def p_startup(self, subj: Subject, peer: Peer) -> dict:
        # one start (the one this peer's run began with): peers take seconds to start
        return {"startup": {"listen_ms": subj.listen_s * 1e3, "runs": 1}}

    # -- -workers 2 vs 1 (unpinned: workers need both cores)
    def s_workers(self) -> None:
        req = with_marker(self.req, stream=False)
        total = self.n(3000, 800, 60)
        out = {}
        for workers in (1, 2):
            proc, port, _ = start_proxy(self.up_port, None, workers=workers, extra=self.extra)
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

    # -- peers: the same scenarios against other proxies, after clasp's, on the same upstream and core

    def start_peer(self, peer: Peer) -> Subject:
        port = free_port()
        tmp = tempfile.mkdtemp(prefix=f"clasp-bench-{peer.name}-")
        argv = peer.argv_for(port, f"http://{HOST}:{self.up_port}/v1", tmp)
        try:
            proc = Proc(pinned(argv, self.core_proxy), env=peer_env(), log=Path(tmp) / PEER_LOG)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        subj = Subject(peer.name, proc, port, peer=True, tmp=tmp)
        self.live.append(subj)
        try:
            subj.listen_s = wait_listening(port, proc.p, timeout=self.args.peer_start_timeout, poll=0.02)
        except RuntimeError as e:
            msg = self.describe(e, subj)
            self.stop_peer(subj)
            raise RuntimeError(msg) from None
        return subj

    def stop_peer(self, subj: Subject) -> None:
        subj.proc.stop()
        if subj in self.live:
            self.live.remove(subj)
        if subj.tmp:
            shutil.rmtree(subj.tmp, ignore_errors=True)

    @staticmethod
    def describe(e: BaseException, subj: Subject | None) -> str:
        msg = f"{type(e).__name__}: {e}"[:300]
        tail = subj.log_tail() if subj is not None else ""
        return f"{msg} [peer output: {tail}]" if tail else msg

    def run_peers(self, names: list[str], progress: bool) -> None:
        if not self.peers:
            return
        # clasp's long-lived instance is done with: the peers get its core to themselves
        if self.proxy is not None:
            self.proxy.stop()
        peers_out = self.results["peers"] = {}
        for peer in self.peers:
            r = peers_out[peer.name] = {"command": peer.command}
            if progress:
                print(f"... peer {peer.name}: starting", file=sys.stderr, flush=True)
            try:
                subj = self.start_peer(peer)
            except Exception as e:  # noqa: BLE001 -- a peer that does not start fails every row
                r["error"] = f"did not start: {e}"
                continue
            try:
                time.sleep(PEER_SETTLE_S)
                r["idle"] = {"rss_start_mib": subj.mem("VmRSS") / 1024}
                for name in names:
                    if name == "workers":
                        continue  # clasp's own -workers option: nothing to compare
                    if subj.proc.p.poll() is not None:
                        r.setdefault("notes", []).append(
                            f"exited with {subj.proc.p.returncode} before {name}: restarted "
                            f"[peer output: {subj.log_tail()}]")
                        self.stop_peer(subj)
                        subj = self.start_peer(peer)
                        time.sleep(PEER_SETTLE_S)
                    if progress:
                        print(f"... peer {peer.name}: {name}", file=sys.stderr, flush=True)
                    try:
                        for key, value in getattr(self, "p_" + name)(subj, peer).items():
                            if key == "idle":
                                r["idle"].update(value)
                            else:
                                r[key] = value
                    except Exception as e:  # noqa: BLE001 -- recorded, shown as failed
                        r.setdefault(name, {})["error"] = self.describe(e, subj)
            except Exception as e:  # noqa: BLE001 -- e.g. a restart that failed
                r.setdefault("notes", []).append(self.describe(e, None))
            finally:
                self.stop_peer(subj)


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
                 f"bytecode {r.get('bytecode', '?')}, config {r.get('config', 'default')}")
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


def _views(r: dict) -> list[tuple[str, dict]]:
    """Per column (direct, clasp, each peer) the figures in one shape: the peers' own JSON shape."""
    direct: dict = {}
    clasp: dict = {}
    if "whole" in r:
        direct["whole"] = {f"c{w['concurrency']}": w["direct"] for w in r["whole"]}
        clasp["whole"] = {f"c{w['concurrency']}": w["proxy"] for w in r["whole"]}
    if "stream" in r:
        direct["stream"] = {k: v["direct"] for k, v in r["stream"].items() if isinstance(v, dict)}
        clasp["stream"] = {k: v["proxy"] for k, v in r["stream"].items() if isinstance(v, dict)}
    for key in ("ttfb", "big"):
        if key in r:
            direct[key], clasp[key] = r[key]["direct"], r[key]["proxy"]
    clasp["idle"] = {"rss_start_mib": r.get("idle_rss_start_mib")}
    if "idle_rss_after_load_mib" in r:
        clasp["idle"]["rss_after_load_mib"] = r["idle_rss_after_load_mib"]
    for key in ("slow", "slow_ramp", "long"):
        if key in r:
            clasp[key] = r[key]
    if "startup" in r and "source" in r["startup"]:
        clasp["startup"] = {"listen_ms": r["startup"]["source"]["p50_ms"], "runs": "p50"}
    return [("direct", direct), ("clasp", clasp), *r.get("peers", {}).items()]


def side_by_side(r: dict) -> str:
    """clasp next to the --peer proxies: one column each; a failed measurement shows as failed
    in its first row, n/a in the others, and why under the table."""
    cols = _views(r)
    rows: list[tuple[str, list[str]]] = []

    def section(view: dict, path: tuple[str, ...], name: str) -> dict | None:
        if "error" in view:
            return {"error": view["error"]} if name != "direct" else {}
        d = view
        for k in path:
            if not isinstance(d, dict) or k not in d:
                return {} if name == "direct" else None
            d = d[k]
            if isinstance(d, dict) and "error" in d:
                return d
        return d

    def group(path: tuple[str, ...], specs: list) -> None:
        for j, (label, fmt) in enumerate(specs):
            cells = []
            for name, view in cols:
                d = section(view, path, name)
                if d is None:
                    cells.append("n/a")
                elif "error" in d:
                    cells.append("failed" if j == 0 else "n/a")
                elif "failed" in d:
                    cells.append(f"failed: {d['ok']}/{d['requests']} ok" if j == 0 else "n/a")
                else:
                    try:
                        cells.append(fmt(d))
                    except (KeyError, TypeError, ValueError):
                        cells.append("")
            # a row only when it was measured: a peer that never started does not make one
            if any(c not in ("", "n/a") for c, (_, v) in zip(cells, cols) if "error" not in v):
                rows.append((label, cells))

    for c in (1, 16, 64):
        group(("whole", f"c{c}"), [
            (f"non-stream 50KB c={c}: req/s", lambda d: f"{d['rps']:.0f}"),
            (f"non-stream 50KB c={c}: latency p50 ms", lambda d: f"{d['p50_ms']:.2f}"),
            (f"non-stream 50KB c={c}: latency p99 ms", lambda d: f"{d['p99_ms']:.2f}"),
            (f"non-stream 50KB c={c}: CPU ms/request", lambda d: f"{d['cpu_s_per_1000']:.3f}")])
    for key in ("c1", "c16"):
        group(("stream", key), [(f"stream ({key}): events/s", lambda d: f"{d['events_per_s']:.0f}"),
                                (f"stream ({key}): CPU us/event", lambda d: f"{d['cpu_us_per_event']:.1f}")])
    group(("ttfb",), [("stream TTFB p50 ms (c=1)", lambda d: f"{d['ttfb_p50_ms']:.2f}"),
                      ("stream TTFB p99 ms (c=1)", lambda d: f"{d['ttfb_p99_ms']:.2f}"),
                      ("stream first event p50 ms (c=1)", lambda d: f"{d['first_event_p50_ms']:.2f}")])
    group(("big",), [("1 MB request: latency p50 ms", lambda d: f"{d['p50_ms']:.2f}"),
                     ("1 MB request: CPU ms/request", lambda d: f"{d['cpu_ms_per_request']:.2f}")])
    group(("idle",), [("idle RSS at start MiB", lambda d: f"{d['rss_start_mib']:.1f}"),
                      ("idle RSS after load MiB", lambda d: f"{d['rss_after_load_mib']:.1f}")])
    for key, how in (("slow", "burst"), ("slow_ramp", "1 s ramp")):
        n = next((v[key]["streams"] for _, v in cols if isinstance(v.get(key), dict) and "streams" in v[key]), "")
        ideal = next((v[key]["chunks_each"] * v[key]["interval_ms"] / 1000 + v[key]["ramp_s"] for _, v in cols
                      if isinstance(v.get(key), dict) and "chunks_each" in v[key]), 0.0)
        group((key,), [(f"{n} slow streams ({how}): completed", lambda d: f"{d['completed']}/{d['streams']}"),
                       (f"{n} slow streams ({how}): done in s (ideal {ideal:.1f})",
                        lambda d: f"{d['wall_s']:.1f}"),
                       (f"{n} slow streams ({how}): peak RSS MiB", lambda d: f"{d['peak_rss_mib']:.1f}"),
                       (f"{n} slow streams ({how}): RSS once idle MiB", lambda d: f"{d['rss_idle_after_mib']:.1f}")])
    group(("long",), [("long stream: events", lambda d: f"{d['events']}/{d['chunks']}"),
                      ("long stream: RSS before/peak/after MiB",
                       lambda d: f"{d['rss_before_mib']:.0f}/{d['rss_peak_mib']:.0f}/{d['rss_after_mib']:.0f}")])
    group(("startup",), [("start-up to listening ms (clasp: p50)", lambda d: f"{d['listen_ms']:.0f}")])

    names = [n for n, _ in cols]
    label_w = max([len(label) for label, _ in rows] + [40]) + 2
    widths = [max([len(n)] + [len(cells[i]) for _, cells in rows]) + 2 for i, n in enumerate(names)]
    widths = [max(w, 10) for w in widths]
    out = ["side by side: the same scenarios and fake upstream, each proxy pinned to the same core "
           "(peers: CPU and RSS summed over their process tree)",
           f"{'metric':<{label_w}}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    for label, cells in rows:
        out.append(f"{label:<{label_w}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    notes = []
    for name, view in cols[2:]:
        notes.append(f"  {name}: {view.get('command', '')}")
        if "error" in view:
            notes.append(f"    failed: {view['error']}")
        for note in view.get("notes", []):
            notes.append(f"    note: {note}")
        for key, sec in view.items():
            if not isinstance(sec, dict):
                continue
            for sub, d in [(None, sec), *((k, v) for k, v in sec.items() if isinstance(v, dict))]:
                where = key if sub is None else f"{key} {sub}"
                for field in ("error", "failed", "first_failure"):
                    if field in d:
                        notes.append(f"    {where}: {d[field]}")
    if notes:
        out.append("peers:")
        out += notes
    return "\n".join(out)


def finite(x):
    """The results with NaN (a peer without one successful request) as null, for strict JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="clasp benchmarks (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="smaller counts (about half a minute)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts: checks that every scenario runs")
    ap.add_argument("--scenarios", default=",".join(ALL),
                    help=f"comma list of {','.join(ALL)},workers (default: all but workers)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--config", default="default", choices=sorted(CONFIGS),
                    help="the clasp configuration measured: " + "; ".join(f"{k}: {v}" for k, v in CONFIGS.items())
                    + " (default: default)")
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=COMMAND",
                    help="also run the scenarios against another proxy (repeatable): COMMAND is an argv "
                         "string (no shell) with {port} (where it must listen), {upstream} (the fake "
                         "upstream's base URL) and {tmp} (a scratch directory); see bench/README.md")
    ap.add_argument("--peer-start-timeout", type=float, default=180.0, metavar="S",
                    help="seconds a peer may take to start listening (default 180)")
    ap.add_argument("--peer-timeout", type=float, default=300.0, metavar="S",
                    help="seconds before one measurement of a peer is abandoned as failed (default 300)")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in ALL + ["workers"]]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    try:
        peers = [Peer(spec) for spec in args.peer]
    except ValueError as e:
        ap.error(str(e))
    if len({p.name for p in peers}) != len(peers):
        ap.error("--peer names must differ")
    with Bench(args) as bench:
        for name in names:
            if not args.json:
                print(f"... {name}", file=sys.stderr, flush=True)
            bench.run(name)
        bench.run_peers(names, progress=not args.json)
        results = bench.results
    if args.json:
        print(json.dumps(finite(results), indent=2))
    else:
        print(table(results))
        if results.get("peers"):
            print()
            print(side_by_side(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
