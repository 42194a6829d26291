"""`clasp statusline`: the line Claude Code shows during `clasp claude`, from the private proxy's
/metrics (rendering from snapshots, and the command against a running proxy)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clasp.launcher import statusline_command
from clasp.statusline import KEY_ENV, human, render
from harness import Proxy, json_reply

ROOT = Path(__file__).resolve().parent.parent
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
KEY = "statusline-test-key-1234567890"


def snapshot(**over) -> dict:
    base = {"tokens": {}, "upstream_errors": {}, "retries": 0, "circuit_breakers": {}, "queue": {"enabled": False}}
    return {**base, **over}


def test_human_token_counts():
    assert [human(n) for n in (0, 999, 1000, 18234, 1_250_000)] == ["0", "999", "1.0k", "18.2k", "1.2M"]


def test_line_names_the_upstream_model_tokens_and_ok():
    m = snapshot(tokens={"custom": {
        "claude-sonnet-4-5": {"requests": 9, "input_tokens": 18000, "output_tokens": 1300, "upstream_model": "llama3.1"},
        "claude-haiku-4-5": {"requests": 2, "input_tokens": 234, "output_tokens": 10, "upstream_model": "llama3.1:8b"}}})
    assert render(m) == "clasp · custom llama3.1 (+1 more) · 18.2k in / 1.3k out · ok"


def test_line_before_any_request_shows_the_configured_target():
    assert render(snapshot(), {"provider": "openrouter", "model": "openai/gpt-4o"}) == \
        "clasp · openrouter openai/gpt-4o · 0 in / 0 out · ok"
    assert render(snapshot(), {"provider": "custom", "model": None}) == \
        "clasp · custom (model as requested) · 0 in / 0 out · ok"


@pytest.mark.parametrize("over,state", [
    ({"circuit_breakers": {"openai": "closed", "openrouter": "open"}}, "breaker open"),
    ({"circuit_breakers": {"openai": "half_open"}}, "breaker half-open"),
    ({"queue": {"enabled": True, "depth": 3}}, "3 queued"),
    ({"upstream_errors": {"500": 2, "timeout": 1}, "retries": 1}, "3 upstream errors, 1 retry"),
    ({"circuit_breakers": {"a": "open"}, "upstream_errors": {"429": 1}}, "breaker open, 1 upstream error"),
])
def test_line_shows_the_proxy_state(over, state):
    assert render(snapshot(**over)).endswith(" · " + state)


def test_requested_name_is_shown_when_the_upstream_model_is_unknown():
    m = snapshot(tokens={"openai": {"gpt-4o": {"requests": 1, "input_tokens": 5, "output_tokens": 7}}})
    assert render(m) == "clasp · openai gpt-4o · 5 in / 7 out · ok"


def run_statusline(port: int, key: str | None) -> subprocess.CompletedProcess:
    """The command exactly as Claude Code gets it, run through a shell with session JSON on stdin."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home"}
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(statusline_command(port), shell=True, env=env, cwd="/",
                          input=json.dumps({"session_id": "s", "model": {"id": "claude-sonnet-4-5"}}),
                          capture_output=True, text=True, timeout=20)


def test_command_against_a_running_proxy(lt, upstream, proxies):
    p = Proxy(lt, ["-provider", "custom", "-model", "up-model", "-auth", "-auth-api-key", KEY,
                   "-retry-base-delay-ms", "1"], {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    done = run_statusline(p.port, KEY)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "clasp · custom up-model · 0 in / 0 out · ok\n"  # before any request
    assert p.post(HELLO, headers={"x-api-key": KEY})[0] == 200
    upstream.script = lambda seen: json_reply({"error": {"message": "down"}}, status=503)
    assert p.post(HELLO, headers={"x-api-key": KEY})[0] >= 500
    done = run_statusline(p.port, KEY)
    assert done.returncode == 0 and KEY not in done.stdout and KEY not in statusline_command(p.port)
    line = done.stdout
    assert line.startswith("clasp · custom up-model · ") and line.count("\n") == 1
    assert "upstream error" in line and "retr" in line


def test_command_with_a_wrong_key_says_so(lt, upstream, proxies):
    p = Proxy(lt, ["-provider", "custom", "-model", "up-model", "-auth", "-auth-api-key", KEY],
              {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    done = run_statusline(p.port, None)
    assert (done.returncode, done.stdout) == (0, "clasp · the proxy refused the status line's key\n")


def test_command_when_the_proxy_is_gone_prints_a_line_and_exits_0():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_statusline(port, KEY)
    assert (done.returncode, done.stdout, done.stderr) == (0, "clasp · proxy unreachable\n", "")


def test_command_against_a_proxy_that_never_answers_times_out():
    with socket.socket() as s:  # accepts the connection (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        done = run_statusline(s.getsockname()[1], KEY)
    assert (done.returncode, done.stdout) == (0, "clasp · proxy unreachable\n")
