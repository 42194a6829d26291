"""Bounds on what clients can make the proxy hold or write: metrics series and label values, access
log lines, and client connections (file descriptors)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import promparse
from clasp.ops.metrics import MAX_LABEL_CHARS, MAX_SERIES
from clasp.server.http import HTTPServer, Request, Responder, ServerLimits
from harness import Proxy, recv_response, spawn_clasp

HELLO = {"max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}


def start(proxies: list, lt, upstream, *argv, **env) -> Proxy:
    # no -model: requested names pass through to the upstream, so every name is routed
    p = Proxy(lt, ["-provider", "custom", *argv], {"CUSTOM_BASE_URL": upstream.url, **env})
    proxies.append(p)
    return p


def scrape(p: Proxy) -> tuple[bytes, bytes]:
    status, _, raw_json = p.request("GET", "/metrics")
    assert status == 200
    status, _, raw_prom = p.request("GET", "/metrics/prometheus")
    assert status == 200
    return raw_json, raw_prom


def model_labels(raw_prom: bytes) -> set[str]:
    fams = promparse.parse(raw_prom.decode())
    return {s.labels["model"] for s in fams["clasp_requests_total"].samples}


# ---- metrics and access log: client-chosen model names -------------------------------------------

def test_huge_model_names_keep_scrapes_and_log_lines_small(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    for i in range(100):
        name = f"{i:03d}-" + "m" * 100_000   # distinct names: none share a truncated prefix
        status, _, _ = p.request("POST", "/v1/messages", {**HELLO, "model": name})
        assert status == 200
    raw_json, raw_prom = scrape(p)
    # Before: every name was a series of its own, in full (10 MB of JSON, ~350 MB of Prometheus text).
    assert len(raw_json) < 16 * 1024
    # at most MAX_SERIES + 1 model labels of at most MAX_LABEL_CHARS: ~34 lines of ~170 bytes each
    assert len(raw_prom) < (MAX_SERIES + 1) * 6 * 1024
    labels = model_labels(raw_prom)
    assert len(labels) <= MAX_SERIES + 1 and "other" in labels
    assert max(len(label) for label in labels) <= MAX_LABEL_CHARS
    assert json.loads(raw_json)["requests"]["total"] == 100
    lines = p.log.getvalue().splitlines()
    access = [line for line in lines if "path=/v1/messages" in line]
    assert len(access) == 100
    assert max(len(line) for line in lines) < 2048


def test_rejected_requests_are_not_series_of_their_own(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    long_name = "x" * 5000
    # a body that is not JSON, a provider without credentials, an invalid field: no upstream attempt
    assert p.request("POST", "/v1/messages", b"{not json")[0] == 400
    assert p.request("POST", "/v1/messages", {**HELLO, "model": "azure," + long_name})[0] == 400
    assert p.request("POST", "/v1/messages", {**HELLO, "model": long_name, "messages": "nope"})[0] == 400
    assert upstream.requests == []
    _, raw_prom = scrape(p)
    assert model_labels(raw_prom) == {"-"}
    assert long_name[:50] not in raw_prom.decode()
    assert p.metrics()["tokens"] == {"-": {"-": {"requests": 3, "input_tokens": 0, "output_tokens": 0}}}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_model_name_with_a_lone_surrogate_keeps_metrics_and_logs_working(lt, upstream, proxies, fmt):
    p = start(proxies, lt, upstream, "-log-format", fmt)
    # JSON may escape a lone surrogate that no UTF-8 output can carry: refused at parse time
    body = b'{"model": "claude-\\udc00", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}'
    status, _, raw = p.request("POST", "/v1/messages", body)
    assert status == 400 and "model" in json.loads(raw)["error"]["message"]
    # control characters are valid JSON text: routed, and kept out of labels and log lines raw
    body = b'{"model": "claude-\\r\\u0000x", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}'
    assert p.request("POST", "/v1/messages", body)[0] == 200
    raw_json, raw_prom = scrape(p)
    json.loads(raw_json)
    labels = model_labels(raw_prom)  # also: no raw CR or NUL in the exposition
    assert labels == {"-", next(label for label in labels if label.startswith("claude-"))}
    lines = [line for line in p.log.getvalue().splitlines() if "/v1/messages" in line]
    assert len(lines) == 2 and "\r" not in "".join(lines) and "\x00" not in "".join(lines)


# ---- connection limit ---------------------------------------------------------------------------

class Gate:
    """/hold waits until released; everything else answers at once."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.holding = 0

    async def __call__(self, req: Request, resp: Responder) -> None:
        if req.path == "/hold":
            if self.release is None:
                self.release = asyncio.Event()
            self.holding += 1
            await self.release.wait()
        await resp.send(200, [("content-type", "application/json")], b'{"ok":true}')


@pytest.fixture
def capped(lt):
    gate = Gate()
    srv = HTTPServer(gate, ServerLimits(header_timeout_s=5.0, idle_timeout_s=5.0, max_connections=4))
    srv.port = lt.run(srv.start("127.0.0.1", 0))[0][1]
    srv.gate = gate
    srv.release = lambda: lt.loop.call_soon_threadsafe(gate.release.set)
    yield srv

    async def stop():
        if gate.release is not None:
            gate.release.set()
        await srv.shutdown(1)
    lt.run(stop())


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_new_connection_beyond_the_limit_replaces_the_longest_idle_one(capped):
    idle = [connect(capped.port) for _ in range(4)]
    wait_until(lambda: len(capped._connections) == 4)
    fresh = connect(capped.port)
    fresh.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(fresh)[0] == 200
    assert closed_by_server(idle[0])       # the oldest idle connection made room
    idle[1].settimeout(0.2)
    with pytest.raises(socket.timeout):     # the others are still open
        idle[1].recv(1)
    for s in idle + [fresh]:
        s.close()


def test_a_new_connection_beyond_the_limit_is_refused_when_all_are_busy(capped):
    busy = [connect(capped.port) for _ in range(4)]
    for s in busy:
        s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: capped.gate.holding == 4)
    extra = connect(capped.port)
    status, headers, body = recv_response(extra)
    assert status == 503
    assert json.loads(body)["error"]["type"] == "overloaded_error"
    assert headers["connection"] == "close" and "retry-after" in headers
    assert closed_by_server(extra)
    capped.release()                          # the busy ones finish normally
    for s in busy:
        assert recv_response(s)[0] == 200
        s.close()
    # once they are idle again (or closed), there is room again
    wait_until(lambda: len(capped._idle) == capped.open_connections)
    again = connect(capped.port)
    again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(again)[0] == 200
    again.close()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Drain:
    """Reads a child's pipe as it fills (a full pipe would block the child's logging, and hide a
    flood): keeps the byte count and the first bytes."""

    def __init__(self, pipe) -> None:
        self.size = 0
        self.head = b""
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe) -> None:
        while True:
            chunk = pipe.read1(65536)
            if not chunk:
                return
            self.size += len(chunk)
            if len(self.head) < 8192:
                self.head += chunk[:8192]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and RLIMIT_NOFILE")
def test_many_idle_connections_under_a_low_open_file_limit():
    import resource
    import urllib.request

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    # the upstream is never contacted
    proc, port = spawn_clasp(["-provider", "custom"], {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"},
                             preexec_fn=low_limit)
    err = Drain(proc.stderr)
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        assert len(held) >= 200  # the kernel accepted them (backlog), whatever the proxy does
        time.sleep(0.5)
        before = _cpu_seconds(proc.pid)
        started = time.monotonic()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
        assert json.loads(body)["status"] == "ok"
        time.sleep(2.0)
        spent = _cpu_seconds(proc.pid) - before
        elapsed = time.monotonic() - started
        # Before: the accept loop failed with EMFILE and logged a traceback, thousands of times a second.
        assert spent < 0.5 * elapsed, f"{spent:.2f} s of CPU in {elapsed:.2f} s"
    finally:
        for s in held:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.thread.join(5)
        proc.stdout.close()
        proc.stderr.close()
    assert err.size < 8192, err.head[-2000:]
    assert b"Traceback" not in err.head


def test_the_automatic_connection_limit_leaves_room_for_upstream_sockets():
    from clasp.config import Config
    from clasp.server.run import connection_limit
    cfg = Config(pool_size=32)
    assert connection_limit(cfg, 128, 1) == 16           # (128 - 64 reserved - 32 pooled) / 2
    assert connection_limit(cfg, 1024, 2) == 448
    assert connection_limit(cfg, 1 << 20, 1) == 4096     # however high the limit
    assert connection_limit(cfg, None, 1) == 4096        # no resource module
    assert connection_limit(cfg, 64, 1) == 1
    assert connection_limit(Config(max_connections=50), 128, 1) == 50   # the setting decides


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_the_soft_open_file_limit_is_raised_to_the_hard_one():
    # in a child process: the limits of the test process stay as they are
    script = ("import resource\n"
              "from clasp.server.run import raise_open_file_limit\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 200))\n"
              "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.split(None, 1) == ["200", "(200, 200)\n"], out.stderr
