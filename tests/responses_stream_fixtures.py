"""OpenAI Responses API streams (recorded shape) for tests/test_responses_stream.py.

A `Recorder` plays an upstream: it emits the documented event sequence of POST /v1/responses
with "stream": true (response.created, response.in_progress, output_item.added, content_part /
reasoning_summary_part added, deltas, .done events, output_item.done, then response.completed /
.incomplete / .failed, or an `error` event) with the fields OpenAI sends (sequence_number,
item_id, output_index, content_index, summary_index, logprobs, obfuscation), and builds the
final response object alongside, so every fixture also has its non-streamed twin.

Each fixture is name -> ResponsesFixture(events, final, ctx/caps overrides); `sse(events)`
gives the wire bytes (event: + data: lines, no [DONE]: the Responses API sends none).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

RESP_ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
MODEL = "gpt-5-2025-08-07"
ENC = "gAAAAABoISQ24Xq0ll8kWQ3VZtGq0b4TbMUCBf2ihYFzLbWl7jXiCq2rHvJ0Ln0R-oFzH4U8tB3eCY2CkA=="


def usage(inp: int, out: int, cached: int = 0, reasoning: int = 0) -> dict:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": inp + out}


class Recorder:
    """Builds one streamed response: the events, and the response object they describe."""

    def __init__(self, *, max_output_tokens: int | None = None) -> None:
        self.events: list[dict] = []
        self.output: list[dict] = []
        self.max_output_tokens = max_output_tokens
        self.created()

    # ---------------------------------------------------------------- plumbing

    def ev(self, etype: str, **fields: object) -> dict:
        event = {"type": etype, "sequence_number": len(self.events), **fields}
        self.events.append(event)
        return event

    def response(self, status: str, *, usage: dict | None = None, error: dict | None = None,
                 incomplete: str | None = None) -> dict:
        return {
            "id": RESP_ID, "object": "response", "created_at": 1741476542, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": "You are Claude Code.", "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None, "model": MODEL,
            "output": copy.deepcopy(self.output) if status != "in_progress" else [],
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": "medium", "summary": "auto"}, "service_tier": "default",
            "store": False, "temperature": 1.0, "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": usage, "user": None, "metadata": {},
        }

    def created(self) -> None:
        self.ev("response.created", response=self.response("in_progress"))
        self.ev("response.in_progress", response=self.response("in_progress"))

    # ---------------------------------------------------------------- output items

    def reasoning(self, item_id: str, summary: list[list[str]], enc: str | None = ENC) -> None:
        """A reasoning item whose summary parts stream as the given chunks."""
        oi = len(self.output)
        self.ev("response.output_item.added", output_index=oi,
                item={"id": item_id, "type": "reasoning", "summary": [], **({"encrypted_content": None} if enc else {})})
        texts = []
        for si, chunks in enumerate(summary):
            self.ev("response.reasoning_summary_part.added", item_id=item_id, output_index=oi, summary_index=si,
                    part={"type": "summary_text", "text": ""})
            for c in chunks:
                self.ev("response.reasoning_summary_text.delta", item_id=item_id, output_index=oi,
                        summary_index=si, delta=c, obfuscation="Xy3")
            text = "".join(chunks)
            texts.append(text)
            self.ev("response.reasoning_summary_text.done", item_id=item_id, output_index=oi, summary_index=si,
                    text=text)
            self.ev("response.reasoning_summary_part.done", item_id=item_id, output_index=oi, summary_index=si,
                    part={"type": "summary_text", "text": text})
        item = {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": t} for t in texts]}
        if enc:
            item["encrypted_content"] = enc
        self.output.append(item)
        self.ev("response.output_item.done", output_index=oi, item=copy.deepcopy(item))

    def message(self, item_id: str, chunks: list[str], *, refusal: bool = False, status: str = "completed",
                item_done: bool = True) -> None:
        """An assistant message whose one part (output_text, or refusal) streams as chunks."""
        oi = len(self.output)
        self.ev("response.output_item.added", output_index=oi,
                item={"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"})
        empty = {"type": "refusal", "refusal": ""} if refusal else {"type": "output_text", "annotations": [],
                                                                   "logprobs": [], "text": ""}
        self.ev("response.content_part.added", item_id=item_id, output_index=oi, content_index=0, part=empty)
        kind = "refusal" if refusal else "output_text"
        for c in chunks:
            extra = {} if refusal else {"logprobs": [], "obfuscation": "aB"}
            self.ev(f"response.{kind}.delta", item_id=item_id, output_index=oi, content_index=0, delta=c, **extra)
        text = "".join(chunks)
        part = {"type": "refusal", "refusal": text} if refusal else {"type": "output_text", "annotations": [],
                                                                     "logprobs": [], "text": text}
        item = {"id": item_id, "type": "message", "status": status, "content": [part], "role": "assistant"}
        self.output.append(item)
        if status != "completed":
            return  # cut off (incomplete): no .done events for the part or the item
        if refusal:
            self.ev("response.refusal.done", item_id=item_id, output_index=oi, content_index=0, refusal=text)
        else:
            self.ev("response.output_text.done", item_id=item_id, output_index=oi, content_index=0, text=text,
                    logprobs=[])
        self.ev("response.content_part.done", item_id=item_id, output_index=oi, content_index=0, part=part)
        if item_done:
            self.ev("response.output_item.done", output_index=oi, item=copy.deepcopy(item))

    def function_call(self, item_id: str, call_id: str, name: str, chunks: list[str], *,
                      mode: str = "deltas") -> None:
        """A function call. mode: "deltas" (OpenAI), "done_only" (arguments only in
        function_call_arguments.done: LM Studio), "item_only" (only in output_item.done)."""
        oi = len(self.output)
        self.ev("response.output_item.added", output_index=oi,
                item={"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "",
                      "call_id": call_id, "name": name})
        args = "".join(chunks)
        if mode == "deltas":
            for c in chunks:
                self.ev("response.function_call_arguments.delta", item_id=item_id, output_index=oi, delta=c,
                        obfuscation="q1")
        if mode in ("deltas", "done_only"):
            self.ev("response.function_call_arguments.done", item_id=item_id, output_index=oi, arguments=args)
        item = {"id": item_id, "type": "function_call", "status": "completed", "arguments": args,
                "call_id": call_id, "name": name}
        self.output.append(item)
        self.ev("response.output_item.done", output_index=oi, item=copy.deepcopy(item))

    # ---------------------------------------------------------------- endings

    def completed(self, u: dict) -> dict:
        final = self.response("completed", usage=u)
        self.ev("response.completed", response=final)
        return final

    def incomplete(self, reason: str, u: dict) -> dict:
        final = self.response("incomplete", usage=u, incomplete=reason)
        self.ev("response.incomplete", response=final)
        return final

    def failed(self, code: str, message: str) -> dict:
        final = self.response("failed", error={"code": code, "message": message})
        self.ev("response.failed", response=final)
        return final

    def error(self, code: str, message: str) -> dict:
        """A bare `error` event (no response.failed after it); its non-streamed twin is a failed
        response carrying the same error."""
        self.ev("error", code=code, message=message, param=None)
        return self.response("failed", error={"code": code, "message": message})


def sse(events: list[dict]) -> bytes:
    """Wire bytes as OpenAI sends them: `event:` + `data:` lines, blank line, no [DONE]."""
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n".encode("utf-8") for e in events)


@dataclass
class ResponsesFixture:
    events: list[dict]
    final: dict                                # the response object of the terminal event
    ctx: dict = field(default_factory=dict)    # RequestContext overrides
    caps: dict = field(default_factory=dict)   # Capabilities overrides


def _fixture(rec: Recorder, final: dict, **kw: dict) -> ResponsesFixture:
    return ResponsesFixture(rec.events, final, **kw)


def _text() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b", ["Hello", " wörld", " 日本 🎉", "\n"])
    return _fixture(r, r.completed(usage(1200, 12, cached=1024)))


def _reasoning_tool() -> ResponsesFixture:
    r = Recorder()
    r.reasoning("rs_67ccd2c0a6f88190a8fcf3e3e11ee4ea", [["**Reading", " the file**\n\nThe user wants"],
                                                       ["**Planning**\n\n", "Call Read."]])
    r.function_call("fc_67ccd2c3f1a48190b3e2c8a1", "call_4Xq9mQh2sTzD0b1e", "Read",
                    ['{"file', '_path":"', 'src/app.py"}'])
    return _fixture(r, r.completed(usage(2100, 180, cached=1920, reasoning=128)), ctx={"show_thinking": True})


def _reasoning_text_tool() -> ResponsesFixture:
    r = Recorder()
    r.reasoning("rs_b1", [["Check the tests first."]])
    r.message("msg_b2", ["I'll run the tests."])
    r.function_call("fc_b3", "call_b3", "Bash", ['{"command":', '"pytest -q"}'])
    return _fixture(r, r.completed(usage(900, 60, reasoning=20)), ctx={"show_thinking": True})


def _parallel_calls() -> ResponsesFixture:
    r = Recorder()
    r.function_call("fc_p1", "call_p1", "Read", ['{"file_path":', '"a.py"}'])
    r.function_call("fc_p2", "call_p2", "mcp__srv__grep_files_a1b2c3d4", ['{"pattern":"TODO"', ',"path":"."}'])
    return _fixture(r, r.completed(usage(500, 40)),
                    ctx={"name_map": {"mcp__srv__grep_files_a1b2c3d4": "mcp__srv__grep.files"}})


def _args_done_only() -> ResponsesFixture:
    r = Recorder()
    r.function_call("fc_lm1", "call_lm1", "Glob", ['{"pattern":"**/*.py"}'], mode="done_only")
    return _fixture(r, r.completed(usage(300, 15)))


def _args_item_done_only() -> ResponsesFixture:
    r = Recorder()
    r.function_call("fc_it1", "call_it1", "Read", ['{"file_path": "b.py",}'], mode="item_only")  # repaired
    return _fixture(r, r.completed(usage(300, 15)))


def _incomplete_max_tokens() -> ResponsesFixture:
    r = Recorder(max_output_tokens=16)
    r.message("msg_inc", ["The answer is", " long and gets"], status="incomplete")
    return _fixture(r, r.incomplete("max_output_tokens", usage(400, 16)), ctx={"max_tokens": 16})


def _incomplete_content_filter() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_cf", ["Here is how"], status="incomplete")
    return _fixture(r, r.incomplete("content_filter", usage(400, 3)))


def _refusal() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_ref", ["I'm sorry,", " I can't help with that."], refusal=True)
    return _fixture(r, r.completed(usage(50, 9)))


def _stop_sequence() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_stop", ["Step 1 done.\n", "Step 2 done.\nEN", "D_STEPS and more", " text"])
    r.function_call("fc_after", "call_after", "Read", ['{"file_path":"x"}'])  # generated after the stop: dropped
    return _fixture(r, r.completed(usage(80, 30)), ctx={"stop_sequences": ["END_STEPS", "STOP"]})


def _stop_prefix_not_matched() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_nostop", ["Almost EN", "D but not quite: END", "_STEP"])
    return _fixture(r, r.completed(usage(80, 10)), ctx={"stop_sequences": ["END_STEPS"]})


def _failed() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_f", ["Partial"], status="incomplete")
    return _fixture(r, r.failed("server_error", "The server had an error while processing your request. Sorry about that!"))


def _failed_context_overflow() -> ResponsesFixture:
    r = Recorder()
    return _fixture(r, r.failed("context_length_exceeded",
                                "Your input exceeds the context window of this model. Please adjust your input and try again."))


def _error_event() -> ResponsesFixture:
    r = Recorder()
    r.message("msg_e", ["Hi"], status="incomplete")
    return _fixture(r, r.error("rate_limit_exceeded",
                               "Rate limit reached for gpt-5 on tokens per min (TPM): Limit 30000, Used 29000, "
                               "Requested 2000. Please try again in 6s."))


def _interleaved_calls() -> ResponsesFixture:
    """Two calls whose events interleave (a server streaming parallel calls concurrently)."""
    r = Recorder()
    a = {"id": "fc_i1", "type": "function_call", "status": "completed", "arguments": '{"file_path":"a.py"}',
         "call_id": "call_i1", "name": "Read"}
    b = {"id": "fc_i2", "type": "function_call", "status": "completed", "arguments": '{"file_path":"b.py"}',
         "call_id": "call_i2", "name": "Read"}
    r.ev("response.output_item.added", output_index=0, item={**a, "status": "in_progress", "arguments": ""})
    r.ev("response.output_item.added", output_index=1, item={**b, "status": "in_progress", "arguments": ""})
    r.ev("response.function_call_arguments.delta", item_id="fc_i1", output_index=0, delta='{"file_path":')
    r.ev("response.function_call_arguments.delta", item_id="fc_i2", output_index=1, delta='{"file_path":')
    r.ev("response.function_call_arguments.delta", item_id="fc_i2", output_index=1, delta='"b.py"}')
    r.ev("response.function_call_arguments.delta", item_id="fc_i1", output_index=0, delta='"a.py"}')
    r.ev("response.output_item.done", output_index=1, item=b)
    r.ev("response.output_item.done", output_index=0, item=a)
    r.output = [a, b]
    return _fixture(r, r.completed(usage(200, 30)))


def _minimal_server() -> ResponsesFixture:
    """A minimal server: no output_item events, no ids or indices on deltas; the final object
    carries the reasoning item's encrypted_content and the text the deltas did not."""
    r = Recorder()
    r.ev("response.reasoning_summary_text.delta", delta="Thinking ")
    r.ev("response.reasoning_summary_text.delta", delta="about it.")
    r.ev("response.output_text.delta", delta="4")
    r.output = [
        {"type": "reasoning", "id": "rs_min", "encrypted_content": "opaque-enc",
         "summary": [{"type": "summary_text", "text": "Thinking about it."}]},
        {"type": "message", "id": "msg_min", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "42", "annotations": []}]},
    ]
    return _fixture(r, r.completed(usage(20, 5)), ctx={"show_thinking": True})


FIXTURES: dict[str, ResponsesFixture] = {
    "text": _text(),
    "reasoning_tool": _reasoning_tool(),
    "reasoning_text_tool": _reasoning_text_tool(),
    "parallel_calls": _parallel_calls(),
    "args_done_only": _args_done_only(),
    "args_item_done_only": _args_item_done_only(),
    "incomplete_max_tokens": _incomplete_max_tokens(),
    "incomplete_content_filter": _incomplete_content_filter(),
    "refusal": _refusal(),
    "stop_sequence": _stop_sequence(),
    "stop_prefix_not_matched": _stop_prefix_not_matched(),
    "failed": _failed(),
    "failed_context_overflow": _failed_context_overflow(),
    "error_event": _error_event(),
    "interleaved_calls": _interleaved_calls(),
    "minimal_server": _minimal_server(),
}
