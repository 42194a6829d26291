"""Real Claude Code (the version pinned in provision.py) through clasp.

Nothing is mocked but the model: a scripted OpenAI-compatible upstream on loopback answers what
clasp forwards, Claude Code really runs its tools in a throwaway working folder, and the tests
check what a user sees (the printed result, files on disk, the usage in the JSON output) and what
Claude Code sent back upstream through clasp (tool results and their ids).

Each case runs two ways: `python -m clasp` as a server with ANTHROPIC_BASE_URL pointing at it
("server"), and `python -m clasp claude -p ...`, the launcher with its private proxy ("launcher").

The scripted upstream picks its answer from the conversation it is sent, not from a call count:
step N (N = assistant tool-call messages already in the history) gets the N-th scripted turn, so
a retry by Claude Code or clasp gets the same answer. Requests for any model other than the main
one (haiku-class background work: titles, summaries) get a short text answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, claude_env, run_claude
from harness import FakeUpstream, LoopThread, Reply, Seen, completion, json_reply, spawn_clasp, sse_reply

MAIN_MODEL = "big"     # the upstream model of every request (clasp -model)
SMALL_MODEL = "small"  # haiku-tier requests (CLASP_MODEL_HAIKU): background work
RUN_TIMEOUT = 120      # one Claude Code run; they take a few seconds against the fake
CLASP_ENV = {"CLASP_MODEL_HAIKU": SMALL_MODEL}
MODES = ("server", "launcher")


# ------------------------------------------------------------------------------ the fake upstream

@dataclass
class Turn:
    """One scripted assistant answer: text and/or tool calls (id, name, arguments)."""
    text: str = ""
    tool_calls: list[tuple[str, str, dict]] = field(default_factory=list)
    usage: dict | None = None

    def _usage(self) -> dict:
        return self.usage or {"prompt_tokens": 900, "completion_tokens": 12, "total_tokens": 912}

    def chunks(self) -> list[dict]:
        """OpenAI streaming chunks: text and arguments split across deltas, usage chunk last."""
        def chunk(delta: dict | None, finish: str | None = None) -> dict:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            return {"id": "chatcmpl-real", "object": "chat.completion.chunk", "model": MAIN_MODEL,
                    "choices": choices}

        out = [chunk({"role": "assistant", "content": ""})]
        if self.text:
            half = len(self.text) // 2
            out += [chunk({"content": self.text[:half]}), chunk({"content": self.text[half:]})]
        for i, (call_id, name, args) in enumerate(self.tool_calls):
            raw = json.dumps(args)
            half = len(raw) // 2
            out.append(chunk({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                               "function": {"name": name, "arguments": raw[:half]}}]}))
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": raw[half:]}}]}))
        out.append(chunk({}, "tool_calls" if self.tool_calls else "stop"))
        last = chunk(None)
        last["usage"] = self._usage()
        out.append(last)
        return out

    def completion(self) -> dict:
        calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                 for call_id, name, args in self.tool_calls] or None
        return completion(self.text or None, tool_calls=calls, finish="tool_calls" if calls else "stop",
                          usage=self._usage())


class ScriptedUpstream:
    """A FakeUpstream answering chat completions from a list of Turns (see the module doc)."""

    SIDE_ANSWER = Turn(text="Side answer.", usage={"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53})

    def __init__(self, lt: LoopThread, turns: list[Turn]) -> None:
        self.turns = turns
        self.fake = FakeUpstream(lt, self._answer)
        self.url = self.fake.url

    def close(self) -> None:
        self.fake.close()

    def _answer(self, seen: Seen) -> Reply:
        if seen.method != "POST" or seen.target.split("?")[0] != "/v1/chat/completions":
            return json_reply({"error": {"message": f"no route {seen.target}", "type": "not_found"}}, 404)
        body = seen.json()
        if body.get("model") == MAIN_MODEL:
            step = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant" and m.get("tool_calls"))
            turn = self.turns[min(step, len(self.turns) - 1)]
        else:
            turn = self.SIDE_ANSWER
        return sse_reply(turn.chunks()) if body.get("stream") else json_reply(turn.completion())

    def bodies(self, model: str | None = MAIN_MODEL) -> list[dict]:
        """Chat-completion request bodies received (for one model, or all with None)."""
        out = []
        for seen in self.fake.requests:
            if seen.target.split("?")[0] == "/v1/chat/completions" and seen.body:
                body = seen.json()
                if model is None or body.get("model") == model:
                    out.append(body)
        return out

    def log(self) -> str:
        """One line per request received: what a reader needs to see why a test failed."""
        lines = []
        for seen in self.fake.requests:
            try:
                body = seen.json() if seen.body else {}
            except ValueError:
                body = {"unparsed": seen.body[:200]}
            msgs = ", ".join(_describe(m) for m in body.get("messages", []))
            lines.append(f"  {seen.method} {seen.target} model={body.get('model')} stream={body.get('stream')} "
                         f"tools={len(body.get('tools') or [])} messages=[{msgs}]")
        return "\n".join(lines) or "  (none)"


def _describe(message: dict) -> str:
    role = message.get("role")
    if role == "assistant" and message.get("tool_calls"):
        calls = " ".join(f"{c.get('id')}:{c.get('function', {}).get('name')}" for c in message["tool_calls"])
        return f"assistant(tool_calls {calls})"
    if role == "tool":
        return f"tool({message.get('tool_call_id')}: {_text(message.get('content'))[:60]!r})"
    return f"{role}({len(_text(message.get('content')))} chars)"


def _text(content) -> str:
    """The text of an OpenAI message content (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


# ------------------------------------------------------------------------------ running Claude Code

@dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    result: dict | None
    clasp_log: str
    upstream: ScriptedUpstream

    def context(self) -> str:
        """Everything needed to debug a failure: Claude Code's output, clasp's log, the requests."""
        return (f"\n--- claude exit code: {self.proc.returncode}"
                f"\n--- claude stdout (tail):\n{self.proc.stdout[-3000:]}"
                f"\n--- claude stderr (tail):\n{self.proc.stderr[-3000:]}"
                f"\n--- clasp log (tail):\n{self.clasp_log[-3000:]}"
                f"\n--- upstream requests:\n{self.upstream.log()}")

    def check(self, condition: bool, what: str) -> None:
        assert condition, what + self.context()

    def succeeded(self) -> dict:
        """The JSON result of a run that exited 0 without an error; fails readably otherwise."""
        self.check(self.proc.returncode == 0, "Claude Code did not exit 0")
        self.check(isinstance(self.result, dict), "Claude Code printed no JSON result")
        self.check(self.result.get("is_error") is False, "Claude Code reported an error")
        return self.result


def _text_of(stream: str | bytes | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""


def run_through_clasp(mode: str, claude_bin: Path, home: Path, work: Path, upstream: ScriptedUpstream,
                      prompt: str, *claude_args: str) -> Outcome:
    """Run `claude -p PROMPT [ARGS]` through clasp in the given mode; a timeout fails with the context."""
    if mode == "server":
        clasp, port = spawn_clasp(["-provider", "custom", "-model", MAIN_MODEL],
                                  {"CUSTOM_BASE_URL": upstream.url, **CLASP_ENV})
        command: Path | list[str] = claude_bin
        env = claude_env(home, f"http://127.0.0.1:{port}")
    else:
        clasp = None
        command = [sys.executable, "-m", "clasp", "claude"]
        env = claude_env(home, "unused")
        # The launcher must point Claude Code at its own proxy, with its own key.
        del env["ANTHROPIC_BASE_URL"], env["ANTHROPIC_API_KEY"]
        env.update({"PATH": f"{claude_bin.parent}{os.pathsep}{env.get('PATH', '')}",
                    "PYTHONPATH": str(REPO), "PROVIDER": "custom", "CUSTOM_BASE_URL": upstream.url,
                    "CLASP_MODEL": MAIN_MODEL, **CLASP_ENV})
    timed_out = False
    try:
        proc, result = run_claude(command, prompt, env, work, *claude_args, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        timed_out = True
        proc, result = subprocess.CompletedProcess(e.cmd, -9, _text_of(e.stdout), _text_of(e.stderr)), None
    finally:
        if clasp is not None:
            clasp.terminate()
            try:
                clasp.wait(15)
            except subprocess.TimeoutExpired:
                clasp.kill()
                clasp.wait(5)
    if clasp is not None:
        clasp_log = clasp.stderr.read().decode(errors="replace")
        clasp.stdout.close()
        clasp.stderr.close()
    else:
        log = home / ".cache" / "clasp" / "claude-proxy.log"
        clasp_log = log.read_text(errors="replace") if log.exists() else "(no launcher log)"
    outcome = Outcome(proc, result, clasp_log, upstream)
    outcome.check(not timed_out, f"Claude Code did not finish within {RUN_TIMEOUT}s (killed)")
    return outcome


@pytest.fixture
def scripted(lt):
    """scripted(turns) -> a ScriptedUpstream, closed after the test."""
    made: list[ScriptedUpstream] = []

    def make(turns: list[Turn]) -> ScriptedUpstream:
        made.append(ScriptedUpstream(lt, turns))
        return made[-1]

    yield make
    for up in made:
        up.close()


def tool_exchange(outcome: Outcome, request: dict, call_ids: list[str]) -> tuple[dict, list[dict]]:
    """In a request body: the assistant message with these tool calls and the tool messages that
    follow it (OpenAI requires each call's result right after it)."""
    messages = request["messages"]
    for i, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("tool_calls"):
            ids = [c.get("id") for c in m["tool_calls"]]
            outcome.check(ids == call_ids, f"assistant tool_calls ids {ids}, expected {call_ids}")
            results = messages[i + 1:i + 1 + len(call_ids)]
            outcome.check([r.get("role") for r in results] == ["tool"] * len(call_ids),
                          f"expected {len(call_ids)} role:tool messages right after the tool calls")
            return m, results
    outcome.check(False, "no assistant message with tool_calls in the follow-up request")
    raise AssertionError  # unreachable: check(False) raises


# ------------------------------------------------------------------------------ the cases

@pytest.mark.parametrize("mode", MODES)
def test_plain_text_is_the_printed_result(mode, claude_bin, claude_home, scripted):
    answer = "The fake upstream says: forty-two."
    up = scripted([Turn(text=answer)])
    out = run_through_clasp(mode, claude_bin, *claude_home, up, "What does the upstream say?")
    result = out.succeeded()
    out.check(result.get("result") == answer, f"result {result.get('result')!r}, expected {answer!r}")
    main = up.bodies()
    out.check(len(main) == 1, f"expected one main-model request, got {len(main)}")
    user_text = " ".join(_text(m.get("content")) for m in main[0]["messages"] if m.get("role") == "user")
    out.check("What does the upstream say?" in user_text, "the prompt did not reach the upstream")
    out.check(len(main[0].get("tools") or []) > 0, "Claude Code's tools did not reach the upstream")


@pytest.mark.parametrize("mode", MODES)
def test_haiku_model_goes_to_the_haiku_tier_model(mode, claude_bin, claude_home, scripted):
    # Claude Code's own name for its haiku model must be recognised as the haiku tier.
    up = scripted([Turn(text="from the main model")])
    out = run_through_clasp(mode, claude_bin, *claude_home, up, "Which model?", "--model", "haiku")
    result = out.succeeded()
    out.check(result.get("result") == ScriptedUpstream.SIDE_ANSWER.text,
              f"result {result.get('result')!r}: the request did not go to {SMALL_MODEL!r}")
    models = [b.get("model") for b in up.bodies(None)]
    out.check(models == [SMALL_MODEL], f"upstream models {models}, expected [{SMALL_MODEL!r}]")


@pytest.mark.parametrize("mode", MODES)
def test_bash_tool_round_trip(mode, claude_bin, claude_home, scripted):
    home, work = claude_home
    args = {"command": "echo hello > out.txt && cat out.txt", "description": "Write hello to a file"}
    final = "Wrote hello to out.txt."
    up = scripted([Turn(tool_calls=[("call_bash_1", "Bash", args)]), Turn(text=final)])
    out = run_through_clasp(mode, claude_bin, home, work, up, "Put hello in out.txt")
    result = out.succeeded()
    out.check((work / "out.txt").exists(), "Claude Code did not run the Bash command (no out.txt)")
    out.check((work / "out.txt").read_text() == "hello\n", "out.txt does not hold hello")
    out.check(result.get("result") == final, f"result {result.get('result')!r}, expected {final!r}")
    main = up.bodies()
    out.check(len(main) == 2, f"expected two main-model requests (tool call, then result), got {len(main)}")
    call, (tool,) = tool_exchange(out, main[1], ["call_bash_1"])
    sent = call["tool_calls"][0]["function"]
    out.check(sent.get("name") == "Bash" and json.loads(sent.get("arguments") or "{}") == args,
              f"the tool call went back upstream altered: {sent}")
    out.check(tool.get("tool_call_id") == "call_bash_1", f"tool message id {tool.get('tool_call_id')!r}")
    out.check(_text(tool.get("content")).strip() == "hello", f"the tool message does not carry the Bash output: {tool}")


@pytest.mark.parametrize("mode", MODES)
def test_two_parallel_tool_calls(mode, claude_bin, claude_home, scripted):
    home, work = claude_home
    calls = [("call_a", "Bash", {"command": "echo one > a.txt && cat a.txt", "description": "Write one to a.txt"}),
             ("call_b", "Bash", {"command": "echo two > b.txt && cat b.txt", "description": "Write two to b.txt"})]
    final = "Both files written."
    up = scripted([Turn(text="Writing both files.", tool_calls=calls), Turn(text=final)])
    out = run_through_clasp(mode, claude_bin, home, work, up, "Write one to a.txt and two to b.txt")
    result = out.succeeded()
    for name, content in (("a.txt", "one\n"), ("b.txt", "two\n")):
        out.check((work / name).exists() and (work / name).read_text() == content,
                  f"{name} missing or not {content!r}: both tool calls must run")
    out.check(result.get("result") == final, f"result {result.get('result')!r}, expected {final!r}")
    main = up.bodies()
    out.check(len(main) == 2, f"expected two main-model requests, got {len(main)}")
    _, tools = tool_exchange(out, main[1], ["call_a", "call_b"])
    by_id = {t.get("tool_call_id"): _text(t.get("content")) for t in tools}
    out.check(set(by_id) == {"call_a", "call_b"}, f"tool message ids {list(by_id)}, expected call_a and call_b")
    out.check(by_id["call_a"].strip() == "one" and by_id["call_b"].strip() == "two",
              f"each tool message must carry its own call's output: {by_id}")


def _usage(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def check_usage(out: Outcome, result: dict, expected: dict) -> None:
    """The usage Claude Code prints, overall and for the one model it used."""
    shown = result.get("usage") or {}
    got = {k: shown.get(k) for k in expected}
    out.check(got == expected, f"Claude Code shows usage {got}, expected {expected}")
    per_model = result.get("modelUsage") or {}
    out.check(len(per_model) == 1, f"expected one model in modelUsage: {list(per_model)}")
    (model_usage,) = per_model.values()
    got = {"input_tokens": model_usage.get("inputTokens"), "output_tokens": model_usage.get("outputTokens"),
           "cache_read_input_tokens": model_usage.get("cacheReadInputTokens"),
           "cache_creation_input_tokens": model_usage.get("cacheCreationInputTokens")}
    out.check(got == expected, f"modelUsage shows {got}, expected {expected}")


@pytest.mark.parametrize("mode", MODES)
def test_usage_is_reported_exactly(mode, claude_bin, claude_home, scripted):
    # PROTOCOL.md §2.5: input = prompt - cached, cache_read = cached, output = completion
    up = scripted([Turn(text="Counted.", usage=_usage(1500, 7, 1024))])
    out = run_through_clasp(mode, claude_bin, *claude_home, up, "Count tokens")
    check_usage(out, out.succeeded(), {"input_tokens": 1500 - 1024, "cache_read_input_tokens": 1024,
                                       "output_tokens": 7, "cache_creation_input_tokens": 0})


@pytest.mark.parametrize("mode", MODES)
def test_usage_is_summed_over_a_tool_round_trip(mode, claude_bin, claude_home, scripted):
    # Claude Code's printed usage is the sum of every request's message_delta usage in the run.
    args = {"command": "echo counted", "description": "Print a word"}
    up = scripted([Turn(tool_calls=[("call_u1", "Bash", args)], usage=_usage(1000, 10, 600)),
                   Turn(text="Counted twice.", usage=_usage(1100, 20, 900))])
    out = run_through_clasp(mode, claude_bin, *claude_home, up, "Count tokens twice")
    result = out.succeeded()
    out.check(len(up.bodies()) == 2, "expected two main-model requests")
    check_usage(out, result, {"input_tokens": (1000 - 600) + (1100 - 900), "cache_read_input_tokens": 600 + 900,
                              "output_tokens": 10 + 20, "cache_creation_input_tokens": 0})
