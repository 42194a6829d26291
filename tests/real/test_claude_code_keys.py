"""Real Claude Code (the version pinned in provision.py) through clasp with a keys file: a key whose
budget is spent, and a key not allowed the model. Claude Code must show clasp's message and send
the request once: no retry storm (it retries 429 and 5xx for minutes; clasp's refusals say
`x-should-retry: false` with a status it does not retry).

clasp runs as a server (spawn_clasp) in front of the scripted upstream of test_claude_code.py; the
requests Claude Code sent are counted in clasp's access log and at the upstream."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import claude_env, run_claude
from harness import spawn_clasp
from test_claude_code import MAIN_MODEL, ScriptedUpstream, Turn

ALICE = "sk-alice-Wp63tRb8Kx"     # budget spent
BOB = "sk-bob-Hs29qLm4Dz"         # haiku only
CAROL = "sk-carol-Fn85vYc2Qm"     # disabled
RUN_TIMEOUT = 120
# every answer costs $0.024 at gpt-4o-mini's list price ("big" is priced so here)
USAGE = {"prompt_tokens": 100_000, "completion_tokens": 20_000, "total_tokens": 120_000,
         "prompt_tokens_details": {"cached_tokens": 40_000}}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def gateway(lt, tmp_path):
    """(clasp port, its log, the scripted upstream): a keys file with alice ($0.02 a day),
    bob (haiku only) and carol (disabled); sonnet/opus go to MAIN_MODEL, priced like gpt-4o-mini."""
    up = ScriptedUpstream(lt, [Turn(text="Should not be reached.", usage=USAGE)])
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"name": "alice", "key_sha256": sha(ALICE), "daily_budget_usd": 0.02},
        {"name": "bob", "key_sha256": sha(BOB), "models": ["haiku"]},
        {"name": "carol", "key_sha256": sha(CAROL), "enabled": False},
    ]}))
    proc, port = spawn_clasp(["-provider", "custom", "-model", MAIN_MODEL, "-keys-file", str(keys),
                              "-prices", f"{MAIN_MODEL}=0.15/0.075/0.6"],
                             {"CUSTOM_BASE_URL": up.url, "CLASP_MODEL_HAIKU": "small"})
    state = {"log": None}

    def log() -> str:
        if state["log"] is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            state["log"] = proc.stderr.read().decode(errors="replace")
            proc.stdout.close()
            proc.stderr.close()
        return state["log"]

    yield port, log, up
    log()
    up.close()


def spend_budget(port: int, key: str) -> None:
    """One request that costs more than the key's daily budget; then wait until it is booked."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/v1/messages", json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10,
                                                     "messages": [{"role": "user", "content": "hi"}]}),
                 {"content-type": "application/json", "x-api-key": key})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    conn.close()
    for _ in range(100):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/costs", headers={"x-api-key": key})
        budget = json.loads(conn.getresponse().read())["budgets"]["alice"]["daily"]
        conn.close()
        if budget["remaining_usd"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the spend was not booked")


def messages_requests(log: str, key: str) -> list[str]:
    """Access lines of /v1/messages requests made with ``key`` (its name)."""
    return [line for line in log.splitlines() if "/v1/messages" in line and "count_tokens" not in line
            and f"key={key}" in line]


def run(claude_bin: Path, home: Path, work: Path, port: int, key: str, *args: str):
    try:
        return run_claude(claude_bin, "Say hello", claude_env(home, f"http://127.0.0.1:{port}", key), work,
                          *args, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:   # a retry loop would end here
        raise AssertionError(f"Claude Code did not finish within {RUN_TIMEOUT}s: it retries?\n"
                             f"{(e.stdout or '')[-2000:]}\n{(e.stderr or '')[-2000:]}") from None


def shown(proc: subprocess.CompletedProcess, result: dict | None) -> str:
    return json.dumps(result) + proc.stdout + proc.stderr if result else proc.stdout + proc.stderr


def test_spent_budget_is_shown_once_without_retries(claude_bin, claude_home, gateway):
    port, log, up = gateway
    spend_budget(port, ALICE)
    calls = len(up.fake.requests)
    proc, result = run(claude_bin, *claude_home, port, ALICE)
    text = shown(proc, result)
    lines = messages_requests(log(), "alice")
    context = f"\n--- claude: {text[-3000:]}\n--- clasp log:\n{log()[-3000:]}"
    assert result is not None and result.get("is_error") is True and result.get("api_error_status") == 402, context
    assert "daily budget of $0.02 for key 'alice' is spent" in result.get("result", ""), "not shown" + context
    refused = [line for line in lines if "status=402" in line]
    assert len(refused) == 1 and len(lines) == 2, f"{len(refused)} refused requests (one expected)" + context
    assert len(up.fake.requests) == calls, "a refused request reached the upstream" + context
    assert ALICE not in log() and sha(ALICE) not in log()


def test_model_not_allowed_is_shown_once_without_retries(claude_bin, claude_home, gateway):
    port, log, up = gateway
    proc, result = run(claude_bin, *claude_home, port, BOB, "--model", "sonnet")
    text = shown(proc, result)
    lines = messages_requests(log(), "bob")
    context = f"\n--- claude: {text[-3000:]}\n--- clasp log:\n{log()[-3000:]}"
    assert result is not None and result.get("is_error") is True and result.get("api_error_status") == 403, context
    # (Claude Code puts "Failed to authenticate." before any 403, as for Anthropic's own permission_error)
    assert "model 'claude-sonnet-" in result.get("result", "") and "is not allowed for key 'bob' (allowed: haiku)" \
        in result.get("result", ""), "clasp's message not shown" + context
    refused = [line for line in lines if "status=403" in line]
    assert len(refused) == 1 and len(lines) == 1, f"{len(lines)} requests (one expected)" + context
    assert up.fake.requests == [], "a refused request reached the upstream" + context


def test_disabled_key_is_shown_once_without_retries(claude_bin, claude_home, gateway):
    port, log, up = gateway
    proc, result = run(claude_bin, *claude_home, port, CAROL)
    text = shown(proc, result)
    # a refused key has no name in the access log (it is not authenticated): count every /v1/messages line
    lines = [line for line in log().splitlines() if "path=/v1/messages " in line]
    context = f"\n--- claude: {text[-3000:]}\n--- clasp log:\n{log()[-3000:]}"
    assert result is not None and result.get("is_error") is True and result.get("api_error_status") == 401, context
    assert "API key 'carol' is disabled" in result.get("result", ""), "clasp's message not shown" + context
    assert len(lines) == 1 and "status=401" in lines[0], f"{len(lines)} requests (one expected)" + context
    assert up.fake.requests == []
