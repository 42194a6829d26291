"""Real Claude Code through clasp to an upstream that speaks only the Responses API (as OpenAI
does for gpt-5.1-codex): text, a Bash tool call, its result back, the final answer, usage."""

from __future__ import annotations

import json

from conftest import claude_env, run_claude
from harness import FakeUpstream, LoopThread, Reply, json_reply, spawn_clasp
from responses_stream_fixtures import Recorder, sse, usage

import pytest


def _answer(seen) -> Reply:
    if seen.target != "/v1/responses":
        return json_reply({"error": {"message": f"no such endpoint {seen.target}"}}, 404)
    body = seen.json()
    results = [i for i in body.get("input", []) if i.get("type") == "function_call_output"]
    r = Recorder()
    if not results:
        r.reasoning("rs_1", [["Plan: write the file ", "with echo."]], enc="gAAAAB-encrypted-reasoning-1")
        r.function_call("fc_1", "call_bash_1", "Bash", ['{"command":"echo hello > ', 'out.txt && cat out.txt"}'])
        r.completed(usage(1500, 30, cached=1024))
    else:
        r.message("msg_2", ["Wrote ", "out.txt."])
        r.completed(usage(1600, 6, cached=1500))
    if body.get("stream"):
        return Reply(200, [("content-type", "text/event-stream")], chunks=[sse(r.events).decode()], done=False)
    return json_reply(r.events[-1]["response"])


@pytest.fixture(scope="module")
def responses_upstream():
    lt = LoopThread()
    up = FakeUpstream(lt, _answer)
    yield up
    up.close()
    lt.stop()


def test_claude_code_runs_a_tool_through_the_responses_api(responses_upstream, claude_bin, claude_home):
    home, work = claude_home
    clasp, port = spawn_clasp(["-provider", "openai", "-model", "gpt-5.1-codex"],  # auto: Responses
                              {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": responses_upstream.url})
    try:
        proc, result = run_claude(claude_bin, "Create out.txt containing hello.", claude_env(
            home, f"http://127.0.0.1:{port}"), work, timeout=120)
    finally:
        clasp.terminate()
        clasp.wait(15)
    log = clasp.stderr.read().decode(errors="replace")
    clasp.stdout.close()
    clasp.stderr.close()
    seen = [(s.target, s.json().get("stream")) for s in responses_upstream.requests]
    context = f"\nstdout {proc.stdout[-1500:]}\nstderr {proc.stderr[-1500:]}\nclasp {log[-2000:]}\nupstream {seen}"
    assert proc.returncode == 0 and result and result["is_error"] is False, context
    assert (work / "out.txt").read_text() == "hello\n", context
    assert result["result"] == "Wrote out.txt.", context
    second = responses_upstream.requests[-1].json()
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    calls = [i for i in second["input"] if i.get("type") == "function_call"]
    assert [c["call_id"] for c in calls] == [o["call_id"] for o in outputs] == ["call_bash_1"], context
    # the model's reasoning came back through Claude Code's history, before the call of its turn
    kinds = [i.get("type") for i in second["input"]]
    reasoning = [i for i in second["input"] if i.get("type") == "reasoning"]
    assert [r["encrypted_content"] for r in reasoning] == ["gAAAAB-encrypted-reasoning-1"], context
    assert kinds.index("reasoning") < kinds.index("function_call"), context
    assert second["store"] is False and "reasoning.encrypted_content" in second.get("include", []), context
    assert "hello" in json.dumps(outputs[0]["output"]), context
    assert all(t == "/v1/responses" for t, _ in seen), context
    # Claude Code sums its requests: (1500-1024)+(1600-1500) input, 1024+1500 cached, 30+6 output
    u = result["usage"]
    assert (u["input_tokens"], u["cache_read_input_tokens"], u["output_tokens"]) == (576, 2524, 36), context
