"""The command line as a user runs it: version, help, graceful shutdown."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness import FakeUpstream, LoopThread, completion, free_port, json_reply, spawn_clasp

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None, timeout=30):
    base = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "clasp", *args], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def test_version():
    p = run("-version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"clasp 0.1.0 (python {platform.python_version()})"


def test_help_lists_flags_and_variables_even_with_bad_config():
    p = run("-help", "-auth")   # -auth without a key would be a config error
    assert p.returncode == 0
    for word in ("-port", "CLASP_PORT", "-queue-max-size", "CLASP_CIRCUIT_BREAKER_THRESHOLD", "OPENAI_API_KEY"):
        assert word in p.stdout


@pytest.mark.parametrize("args,env", [(["x"], {}), (["99999"], {}), (["²"], {}), ([], {"CLASP_PORT": "abc"})])
def test_healthcheck_with_an_invalid_port_is_unhealthy_without_a_traceback(args, env):
    p = run("healthcheck", *args, env=env)
    assert p.returncode == 1
    assert "invalid port" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_in_flight_request_finish_then_exits_0(sig):
    lt = LoopThread()
    slow = json_reply(completion("slow answer"))
    slow.hang = 1.0
    up = FakeUpstream(lt, lambda seen: slow)
    proc, port = spawn_clasp(["-provider", "custom"], {"CUSTOM_BASE_URL": up.url})
    try:
        result = {}

        def call():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", method="POST", data=json.dumps(
                {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            ).encode(), headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                result["status"] = r.status
                result["body"] = json.loads(r.read())

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.3)          # the request is now waiting on the slow upstream
        proc.send_signal(sig)
        t.join(10)
        assert proc.wait(10) == 0
        assert result["status"] == 200 and result["body"]["content"][0]["text"] == "slow answer"
        with pytest.raises(OSError):  # no longer accepting
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
        up.close()
        lt.stop()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_workers_share_the_port_and_stop_together():
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home", "PYTHONPATH": str(ROOT),
           "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"}
    proc = subprocess.Popen([sys.executable, "-m", "clasp", "-provider", "custom", "-port", str(port),
                             "-workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd="/")
    try:
        pids = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            try:   # a new connection each time: the kernel spreads them over the workers
                data = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read())
                pids.add(data["worker"]["pid"])
                assert data["worker"]["workers"] == 2
            except OSError:
                time.sleep(0.05)
        assert len(pids) == 2 and proc.pid not in pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        for pid in pids:   # every worker is gone
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                    time.sleep(0.05)
                except ProcessLookupError:
                    break
            else:
                pytest.fail(f"worker {pid} still running")
    finally:
        if proc.poll() is None:
            proc.kill()
