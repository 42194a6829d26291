"""`python -m clasp doctor` against a real llama-server (SmolLM2-135M, an 8192-token context)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def _doctor(llama, *extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home", "PYTHONPATH": str(REPO),
           "CUSTOM_BASE_URL": llama.base + "/v1"}
    return subprocess.run([sys.executable, "-m", "clasp", "doctor", "-provider", "custom", "-model", "smollm",
                           *extra], env=env, capture_output=True, text=True, timeout=180, cwd="/")


def test_doctor_recognises_llama_cpp_and_says_its_context_is_too_small_for_claude_code(llama):
    proc = _doctor(llama)
    out = proc.stdout
    context = f"\nexit {proc.returncode}\nstdout: {out}\nstderr: {proc.stderr[-2000:]}"
    assert proc.returncode == 0, context  # the basic path works
    kind = next(line for line in out.splitlines() if "server kind" in line)
    assert kind.lstrip().startswith("OK") and "llama.cpp" in kind and "string_tool_choice" in kind, context
    completion = next(line for line in out.splitlines() if " completion " in line)
    assert completion.lstrip().startswith("OK") and "(sends 1 request)" in completion, context
    window = next(line for line in out.splitlines() if "context window" in line)
    assert window.lstrip().startswith("WARN") and "8192 tokens" in window and "too small" in window, context
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW=" in out and "CLASP_MODEL_FLAGS=max_output_cap=" in out, context
    assert "primary path works" in out, context

    data = json.loads(_doctor(llama, "--json").stdout)
    assert data["ok"] is True and data["exit_code"] == 0
    assert any(c["name"] == "context window" and c["verdict"] == "WARN" for c in data["checks"])
