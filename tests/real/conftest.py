"""The real tier: a real llama-server with a real model, the real Claude Code CLI, and a real redis-server.

Nothing here is mocked. What it needs is installed on first use by provision.py into a cache
kept between runs (~/.cache/clasp, or $CLASP_REAL_CACHE). When it cannot install, the tier fails
loudly: it never skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import provision  # noqa: E402

from harness import free_port, spawn_clasp  # noqa: E402
from clasp.store.resp import RedisClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    """Poll url until it answers 200 (bounded); fail with the process's output if it died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{what or url} not ready after {timeout}s: {last}")


TOOL_TEMPLATE = Path(__file__).parent / "chatml-tools.jinja"


class LlamaServer:
    """A running llama-server: SmolLM2-135M with clasp's ChatML tool template, one slot, no prompt
    cache (so usage is comparable between requests), greedy decoding by default."""

    def __init__(self, binary: Path, model: Path, log_path: Path, context: int = 8192) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.context = context
        self.log_path = log_path
        cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
               "--jinja", "--chat-template-file", str(TOOL_TEMPLATE), "-c", str(context), "-np", "1",
               "-t", "2", "--no-cache-prompt", "--no-webui",
               # greedy unless a request says otherwise: Claude Code sends no temperature, and a
               # sampled 135M model sometimes rambles until the context is full (minutes per run)
               "--top-k", "1"]
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(self.base + "/health", 120, self.proc, "llama-server")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, json.dumps(body).encode(),
                                     {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    server = LlamaServer(provision.llama_server(), provision.model(),
                         tmp_path_factory.mktemp("llama") / "llama-server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_small(tmp_path_factory):
    """A 512-token context: filling it takes a second, not a minute of prefill."""
    server = LlamaServer(provision.llama_server(), provision.model(),
                         tmp_path_factory.mktemp("llama-small") / "llama-server.log", context=512)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    return provision.claude_code()


@pytest.fixture
def claude_home(tmp_path):
    """A throwaway HOME and working folder for one Claude Code run."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


def claude_env(home: Path, base_url: str, api_key: str = "x", **extra: str) -> dict[str, str]:
    """Environment for headless Claude Code: no telemetry, no update checks, root-safe."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    env = {**keep, "HOME": str(home), "IS_SANDBOX": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "ANTHROPIC_BASE_URL": base_url,
           "ANTHROPIC_API_KEY": api_key}
    env.update(extra)
    return env


def run_claude(binary: Path | list[str], prompt: str, env: dict, cwd: Path, *extra_args: str,
               timeout: float = 180) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`claude -p PROMPT --output-format json`: the process and its parsed JSON result.

    binary is the claude executable, or a command that ends in one and takes claude's arguments
    (e.g. [python, -m, clasp, claude]). On timeout the whole process group is killed (Claude Code,
    the shells its tools started, the launcher's child) and subprocess.TimeoutExpired is raised
    with the output so far."""
    prefix = [str(binary)] if isinstance(binary, (str, Path)) else [str(a) for a in binary]
    cmd = [*prefix, "-p", prompt, "--output-format", "json", "--dangerously-skip-permissions",
           *extra_args]
    # Its own process group: killing only the direct child would leave grandchildren holding the
    # output pipes, and reading them to the end would then wait without bound.
    child = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate(timeout=10)
        raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr) from None
    proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    result = None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    return proc, result


def node_available() -> None:
    if not shutil.which("node"):
        raise RuntimeError("node is required for the Claude Code tests (apt-get install nodejs npm)")


@pytest.fixture(scope="session")
def scratch():
    with tempfile.TemporaryDirectory(prefix="clasp-real-") as d:
        yield Path(d)


# ------------------------------------------------------------------------------ Redis and clasp processes

CERTS = Path(__file__).resolve().parents[1] / "certs"
PASSWORD = "Rd-pw-7Hq2Lx9Vb4"


class RedisServer:
    """redis-server on 127.0.0.1 (plain port, and a TLS port), restartable on the same ports."""

    def __init__(self, tmp: Path, password: str = PASSWORD) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (Debian: apt-get install redis-server; .ci/run does it)"
        self.exe = exe
        self.dir = tmp
        self.password = password
        self.port = free_port()
        self.tls_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        return f"rediss://default:{self.password}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={CERTS / 'ca.pem'}"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--requirepass", self.password,
                "--tls-port", str(self.tls_port), "--tls-cert-file", str(CERTS / "server.pem"),
                "--tls-key-file", str(CERTS / "server.key"), "--tls-ca-cert-file", str(CERTS / "ca.pem"),
                "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if s.recv(100):  # -NOAUTH ...: it answers
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.proc.stdout.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)

    def stop(self, persist: bool = False) -> None:
        """Stop the server; ``persist``: save the data first, so the next start() loads it (a
        restart with persistence: the same data, as after a crash of a server with AOF/RDB)."""
        if self.proc is not None:
            if persist:
                self.command("SAVE")
            self.proc.terminate()
            self.proc.communicate(timeout=10)
            self.proc = None

    def command(self, *args):
        async def go():
            client = RedisClient(self.url)
            try:
                return await client.execute(*args)
            finally:
                await client.close()
        return asyncio.run(go())


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()



class Clasps:
    """clasp processes started by a test; stopped afterwards, their stderr kept for inspection."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.stderr = ""

    def start(self, upstream, redis_url: str, *argv: str, model: str = "gpt-test", env: dict | None = None) -> int:
        proc, port = spawn_clasp(["-provider", "custom", "-model", model, *argv],
                                 {"CUSTOM_BASE_URL": upstream.url, "CLASP_REDIS_URL": redis_url, **(env or {})})
        # stderr read all along: access lines must never fill the pipe and block the process
        proc.err = bytearray()
        proc.drain = threading.Thread(target=lambda: [proc.err.extend(line) for line in proc.stderr], daemon=True)
        proc.drain.start()
        self.procs.append(proc)
        return port

    def stop(self) -> str:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            proc.drain.join(5)
            proc.stdout.close()
            proc.stderr.close()
            self.stderr += proc.err.decode(errors="replace")
        self.procs = []
        return self.stderr


@pytest.fixture
def clasps():
    c = Clasps()
    yield c
    c.stop()


@pytest.fixture
def clasps():
    c = Clasps()
    yield c
    c.stop()
