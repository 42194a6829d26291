"""Real Claude Code shows clasp's status line during `python -m clasp [flags] claude`.

Headless `claude -p` renders no status line, so Claude Code runs interactively here, on a
pseudo-terminal, in a throwaway HOME that has finished onboarding, trusts the working folder and
has approved the launcher's key (by its fixed last 20 characters); the test reads the screen until
the line appears and then stops the launcher."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import time

import pytest

from conftest import REPO
from harness import FakeUpstream, completion, json_reply, sse_reply, text_chunks

ANSI = re.compile(rb"\x1b\[[0-9;?>]*[a-zA-Z~]|\x1b\][^\x07]*\x07|\x1b[=>]")
WAIT = 60.0  # seconds for Claude Code to start and draw its status line


def screen_text(raw: bytes) -> str:
    return ANSI.sub(b"", raw).decode("utf-8", "replace")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_interactive_claude_code_shows_the_clasp_status_line(lt, claude_bin, claude_home):
    import fcntl
    import pty
    import struct
    import termios

    home, work = claude_home
    upstream = FakeUpstream(lt, lambda seen: sse_reply(text_chunks(["Hello"])) if seen.json().get("stream")
                            else json_reply(completion("Hello")))
    (home / ".claude.json").write_text(json.dumps({
        "hasCompletedOnboarding": True, "theme": "dark",
        "projects": {str(work): {"hasTrustDialogAccepted": True}},
        "customApiKeyResponses": {"approved": ["-clasp-session-proxy"], "rejected": []}}))
    env = {"PATH": f"{claude_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home),
           "IS_SANDBOX": "1", "TERM": "xterm-256color", "LANG": "C.UTF-8",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
           "CUSTOM_BASE_URL": upstream.url, "PYTHONPATH": str(REPO)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the launcher, clasp flags before `claude`
        try:
            os.chdir(work)
            os.execve(sys.executable, [sys.executable, "-m", "clasp", "-provider", "custom",
                                       "-model", "real-status-model", "claude"], env)
        finally:
            os._exit(127)
    raw = b""
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and "clasp · " not in screen_text(raw):
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break  # the child closed the terminal
                if not data:
                    break
                raw += data
                if b"\x1b[6n" in data:  # a cursor position query: answer it as a terminal would
                    os.write(fd, b"\x1b[1;1R")
    finally:
        os.kill(pid, signal.SIGTERM)  # forwarded to Claude Code by the launcher
        for _ in range(50):
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
        upstream.close()
    text = screen_text(raw)
    assert "clasp · custom real-status-model · 0 in / 0 out · ok" in text, text[-3000:]
