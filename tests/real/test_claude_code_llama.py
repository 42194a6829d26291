"""Real Claude Code through clasp to a real model: llama-server serving SmolLM2-135M.

`--tools ""` keeps Claude Code's prompt (about 1,900 tokens) well inside the 8k context of the
small model; the answer is whatever the 135M model says, so the checks are what a user sees:
Claude Code exits 0, prints a non-empty answer, and reports the usage clasp relayed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, claude_env, run_claude
from harness import spawn_clasp

PROMPT = "What is the capital of France? Answer in one word."
ACCESS_LINE = re.compile(r"path=/v1/messages status=200 .*input_tokens=(\d+) output_tokens=(\d+)")


def _check(proc: subprocess.CompletedProcess, result: dict | None, clasp_log: str) -> None:
    context = f"\nexit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\nclasp: {clasp_log[-3000:]}"
    assert proc.returncode == 0, context
    assert isinstance(result, dict) and result.get("is_error") is False, context
    assert result["result"].strip(), context
    relayed = [tuple(map(int, m)) for m in ACCESS_LINE.findall(clasp_log)]
    assert relayed, context
    usage = result["usage"]
    # Claude Code sums its requests' usage; each relayed exactly what llama-server counted
    assert (usage["input_tokens"], usage["output_tokens"]) == tuple(map(sum, zip(*relayed))), context
    assert "upstream is llama.cpp" in clasp_log, context


def test_claude_code_through_python_m_clasp_answers_with_the_real_model(llama, claude_bin, claude_home):
    home, work = claude_home
    clasp, port = spawn_clasp(["-provider", "custom", "-model", "smollm"], {"CUSTOM_BASE_URL": llama.base + "/v1"})
    try:
        proc, result = run_claude(claude_bin, PROMPT, claude_env(home, f"http://127.0.0.1:{port}"), work,
                                  "--tools", "", timeout=240)
    finally:
        clasp.terminate()
        clasp.wait(15)
    log = clasp.stderr.read().decode(errors="replace")
    clasp.stdout.close()
    clasp.stderr.close()
    _check(proc, result, log)


def test_claude_code_through_clasp_claude_answers_with_the_real_model(llama, claude_bin, claude_home):
    home, work = claude_home
    env = claude_env(home, "unused")
    del env["ANTHROPIC_BASE_URL"], env["ANTHROPIC_API_KEY"]  # the launcher sets both
    env.update({"PATH": f"{claude_bin.parent}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(REPO),
                "CUSTOM_BASE_URL": llama.base + "/v1"})
    # clasp's own flags before the word claude configure the private proxy
    proc, result = run_claude([sys.executable, "-m", "clasp", "-provider", "custom", "-model", "smollm", "claude"],
                              PROMPT, env, work, "--tools", "", timeout=240)
    log_file = home / ".cache" / "clasp" / "claude-proxy.log"
    _check(proc, result, log_file.read_text(errors="replace") if log_file.exists() else "(no launcher log)")
