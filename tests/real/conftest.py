"""The real tier: a real llama-server with a real model, and the real Claude Code CLI.

Nothing here is mocked. What it needs is installed on first use by provision.py into a cache
kept between runs (~/.cache/clasp, or $CLASP_REAL_CACHE). When it cannot install, the tier fails
loudly: it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import provision  # noqa: E402

from harness import free_port  # noqa: E402

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
