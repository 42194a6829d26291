"""Upstream Chat Completions streams as raw SSE bytes, for tests/test_stream.py.

Each fixture is a name -> Fixture(raw bytes, ctx/caps overrides). The bytes are what an
upstream would put on the wire (comments, CRLF, [DONE] or not), so the same data drives the
SSE parser and the translator, and can be split at any byte.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

ID = "chatcmpl-abc123"
MODEL = "gpt-4.1"


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None,
          **extra: object) -> dict:
    """One chat.completion.chunk with a single choice (or none when delta is None and no finish)."""
    c: dict = {"id": ID, "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}
    if delta is not None or finish is not None:
        choice: dict = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        choice.update(extra)
        c["choices"] = [choice]
    else:
        c["choices"] = []
    if usage is not None:
        c["usage"] = usage
    return c


def text(t: str, **kw: object) -> dict:
    return chunk({"content": t}, **kw)


def tc(index: int | None = None, id: str | None = None, name: str | None = None,
       args: object = None) -> dict:
    """One tool_calls[] fragment."""
    call: dict = {}
    if index is not None:
        call["index"] = index
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    fn: dict = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    call["function"] = fn
    return call


def tools(*calls: dict, **kw: object) -> dict:
    return chunk({"tool_calls": list(calls)}, **kw)


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    u: dict = {"prompt_tokens": prompt, "completion_tokens": completion,
               "total_tokens": prompt + completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def sse(*items: object, eol: bytes = b"\n") -> bytes:
    """Wire bytes: dict -> one data event; str -> raw line(s) copied as-is plus eol."""
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(b"data: " + json.dumps(item, ensure_ascii=False).encode("utf-8") + eol + eol)
        else:
            out.append(str(item).encode("utf-8") + eol)
    return b"".join(out)


DONE = "data: [DONE]\n"


@dataclass
class Fixture:
    raw: bytes
    ctx: dict = field(default_factory=dict)    # RequestContext overrides
    caps: dict = field(default_factory=dict)   # Capabilities overrides


FIXTURES: dict[str, Fixture] = {
    # Plain text, CRLF line ends, an OpenRouter-style comment, non-ASCII, usage chunk after finish.
    "text_only": Fixture(sse(
        ": OPENROUTER PROCESSING\r\n",
        chunk({"role": "assistant", "content": ""}),
        text("Hello"),
        text(" wörld 日本 🎉"),
        chunk({}, finish="stop"),
        chunk(usage=usage(30, 5)),
        "data: [DONE]\r\n",
        eol=b"\r\n",
    )),
    # id+name in the first fragment, arguments over several chunks; cached tokens.
    "tool_fragmented": Fixture(sse(
        chunk({"role": "assistant", "content": None}),
        tools(tc(0, "call_7", "Read", "")),
        tools(tc(0, args='{"file_')),
        tools(tc(0, args='path":')),
        tools(tc(0, args='"b.py"}')),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(2100, 19, cached=1024)),
        DONE,
    )),
    # Two parallel calls, one after the other.
    "parallel_sequential": Fixture(sse(
        tools(tc(0, "call_a", "Read", '{"file_path":')),
        tools(tc(0, args='"a.py"}')),
        tools(tc(1, "call_b", "Read", '{"file_path":')),
        tools(tc(1, args='"b.py"}')),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(100, 20)),
        DONE,
    )),
    # Two parallel calls whose headers and argument pieces interleave by index.
    "parallel_interleaved": Fixture(sse(
        tools(tc(0, "call_a", "Read", "")),
        tools(tc(1, "call_b", "Grep", "")),
        tools(tc(0, args='{"file_path":')),
        tools(tc(1, args='{"pattern":')),
        tools(tc(0, args='"a.py"}')),
        tools(tc(1, args='"TODO"}')),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(100, 20)),
        DONE,
    )),
    "text_then_tool": Fixture(sse(
        text("Let me read "),
        text("the file."),
        tools(tc(0, "call_1", "Read", '{"file_path":"x.py"}')),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(50, 12)),
        DONE,
    )),
    # DeepSeek-style reasoning_content, then text, then a tool; thinking shown.
    "reasoning_text_tool": Fixture(sse(
        chunk({"role": "assistant", "content": None, "reasoning_content": "Need "}),
        chunk({"content": None, "reasoning_content": "the file."}),
        chunk({"content": "Reading.", "reasoning_content": None}),
        tools(tc(0, "call_7", "Read", '{"file_path":"b.py"}')),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(40, 30)),
        DONE,
    ), ctx={"show_thinking": True}),
    # Same reasoning, client did not ask for thinking: no thinking block.
    "reasoning_hidden": Fixture(sse(
        chunk({"reasoning": "secret plan"}),
        text("Done."),
        chunk({}, finish="stop"),
        chunk(usage=usage(40, 30)),
        DONE,
    )),
    # Usage-only chunk (empty choices) arriving after the finish chunk.
    "usage_after_finish": Fixture(sse(
        text("ok"),
        chunk({}, finish="stop"),
        chunk(usage=usage(12, 1)),
        DONE,
    )),
    # finish_reason first, then usage on a later chunk that still has a choice; an earlier usage is replaced.
    "finish_before_usage": Fixture(sse(
        text("ok", usage=usage(1, 1)),
        chunk({}, finish="stop"),
        chunk({}, usage=usage(77, 3, cached=7)),
        DONE,
    )),
    # The upstream closes without [DONE] after a finish_reason.
    "no_done": Fixture(sse(
        text("bye"),
        chunk({}, finish="stop", usage=usage(9, 2)),
    )),
    # The upstream closes without [DONE] or finish_reason mid tool arguments.
    "truncated_tool": Fixture(sse(
        text("Looking."),
        tools(tc(0, "call_1", "Read", '{"file_pa')),
    )),
    # No finish_reason ever, but everything is complete (some gateways): finalize normally.
    "no_finish_complete": Fixture(sse(
        tools(tc(0, "call_1", "Read", '{"file_path":"a"}')),
        DONE,
    )),
    # OpenRouter mid-stream error after HTTP 200.
    "error_mid_stream": Fixture(sse(
        text("partial"),
        {"id": ID, "object": "chat.completion.chunk",
         "error": {"code": 502, "message": "Provider returned error"},
         "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]},
        DONE,
    )),
    # Error while a tool's arguments are half-built: that block must not be closed.
    "error_mid_tool": Fixture(sse(
        tools(tc(0, "call_1", "Bash", '{"command":"rm -rf bui')),
        {"error": {"code": 429, "message": "Rate limit exceeded"}},
    )),
    # Whitespace-only text before a tool call opens no block.
    "whitespace_before_tool": Fixture(sse(
        text("\n\n"),
        text(" "),
        tools(tc(0, "call_1", "Read", '{"file_path":"a"}')),
        text("\n"),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(10, 5)),
        DONE,
    )),
    # Cumulative-snapshot arguments: each fragment repeats everything so far.
    "cumulative_args": Fixture(sse(
        tools(tc(0, "call_1", "Read", '{"file')),
        tools(tc(0, "call_1", "Read", '{"file_path":"a')),
        tools(tc(0, "call_1", "Read", '{"file_path":"a.py"}')),
        tools(tc(0, "call_1", "Read", '{"file_path":"a.py"}')),
        chunk({}, finish="tool_calls"),
        DONE,
    )),
    # A provider that reuses index 0 for every call, telling them apart only by id.
    "index_reuse": Fixture(sse(
        tools(tc(0, "call_a", "Read", '{"file_path":')),
        tools(tc(0, "call_a", None, '"a.py"}')),
        tools(tc(0, "call_b", "Glob", '{"pattern":')),
        tools(tc(0, None, None, '"*.md"}')),
        chunk({}, finish="tool_calls"),
        DONE,
    )),
    # Ollama: whole calls (object arguments) in one chunk with finish_reason "stop" and usage.
    "ollama_whole_calls": Fixture(sse(
        chunk({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_x1", "index": 0, "type": "function",
             "function": {"name": "Read", "arguments": {"file_path": "a.py"}}},
            {"id": "call_x2", "index": 1, "type": "function",
             "function": {"name": "Read", "arguments": '{"file_path":"b.py"}'}},
        ]}, finish="stop", usage=usage(300, 25)),
        DONE,
    )),
    # Role chunk and finish only.
    "nothing_produced": Fixture(sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({}, finish="stop"),
        DONE,
    ), ctx={"estimated_input_tokens": 321}),
    # Azure: first chunk with empty choices and prompt_filter_results.
    "azure_filter_first": Fixture(sse(
        {"id": "", "object": "", "created": 0, "model": "", "choices": [],
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
        text("Hi"),
        chunk({}, finish="stop"),
        DONE,
    )),
    # vLLM: content plus "tool_calls": [] must stay text (LiteLLM#29286).
    "empty_tool_calls_list": Fixture(sse(
        chunk({"content": "plain", "tool_calls": []}),
        chunk({"content": " text", "tool_calls": None}),
        chunk({}, finish="stop"),
        DONE,
    )),
    # vLLM names the matched stop string.
    "stop_sequence": Fixture(sse(
        text("1, 2, 3"),
        chunk({}, finish="stop", stop_reason="END"),
        DONE,
    ), ctx={"stop_sequences": ["END"]}),
    # Truncated by max tokens mid tool-call: max_tokens wins over tool_use.
    "length_in_tool": Fixture(sse(
        tools(tc(0, "call_1", "Write", '{"content":"aaa')),
        chunk({}, finish="length"),
        chunk(usage=usage(10, 4096)),
        DONE,
    )),
    # Text arriving while a tool's arguments are incomplete waits until finalize.
    "text_during_tool_args": Fixture(sse(
        tools(tc(0, "call_1", "Read", '{"file_path":')),
        text("(thinking aloud)"),
        tools(tc(0, args='"a"}')),
        text(" more"),
        chunk({}, finish="tool_calls"),
        DONE,
    )),
    # R1-style <think> in content (flag think_tags), tags split across chunks.
    "think_tags": Fixture(sse(
        text("<thi"),
        text("nk>plan it</th"),
        text("ink>\n\nAnswer"),
        text(" here."),
        chunk({}, finish="stop"),
        DONE,
    ), ctx={"show_thinking": True}, caps={"think_tags": True}),
    # Flag buffer_tool_args: malformed arguments repaired and emitted at finalize; text still streams.
    "buffered_tools": Fixture(sse(
        tools(tc(0, "call_1", "Read", '{"file_path": "a.py",')),
        tools(tc(0, args="}")),
        text("Reading."),
        tools(tc(1, "call_2", "mcp__srv__very_long_na_1a2b", '{"q":1}')),
        chunk({}, finish="tool_calls"),
        DONE,
    ), caps={"buffer_tool_args": True},
        ctx={"name_map": {"mcp__srv__very_long_na_1a2b": "mcp__srv__very_long_name_of_a_tool"}}),
    # ---- provider shapes (PROTOCOL §3.2-3.4, §5)
    # OpenRouter: ": OPENROUTER PROCESSING" keep-alives between events, `reasoning` and
    # `reasoning_details` carrying the same text (shown once), an encrypted detail with no text,
    # and the usage chunk (empty choices, extra cost fields) after the finish chunk.
    "openrouter_reasoning": Fixture(sse(
        ": OPENROUTER PROCESSING",
        "",
        ": OPENROUTER PROCESSING",
        "",
        chunk({"role": "assistant", "content": "", "reasoning": "Plan",
               "reasoning_details": [{"type": "reasoning.text", "text": "Plan", "index": 0}]}),
        chunk({"content": "", "reasoning": " it.",
               "reasoning_details": [{"type": "reasoning.text", "text": " it.", "index": 0}]}),
        chunk({"content": "", "reasoning": None,
               "reasoning_details": [{"type": "reasoning.encrypted", "data": "gAAAA", "index": 1}]}),
        ": OPENROUTER PROCESSING",
        "",
        text("Done."),
        chunk({"content": ""}, finish="stop", native_finish_reason="STOP"),
        chunk(usage={"prompt_tokens": 60, "completion_tokens": 9, "total_tokens": 69, "cost": 0.0001,
                     "prompt_tokens_details": {"cached_tokens": 20}}),
        DONE,
    ), ctx={"show_thinking": True}),
    # OpenRouter mid-stream error with a string code, after a complete tool call: the complete
    # call's block is closed, then the error (no message_stop).
    "openrouter_error_after_tool": Fixture(sse(
        tools(tc(0, "call_1", "Read", '{"file_path":"a"}')),
        {"id": ID, "object": "chat.completion.chunk", "provider": "Foo",
         "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
         "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]},
        DONE,
    )),
    # Ollama: an error mid-stream is a bare string.
    "ollama_error_string": Fixture(sse(
        text("par"),
        {"error": "an error was encountered while running the model: unexpected EOF"},
    )),
    # Ollama thinking models: `reasoning` field, no usage at all (estimated), no index on calls.
    "ollama_reasoning_no_usage": Fixture(sse(
        chunk({"role": "assistant", "content": "", "reasoning": "Think."}),
        chunk({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_o1", "function": {"name": "Read", "arguments": {"file_path": "a.py"}}}]}),
        chunk({"role": "assistant", "content": ""}, finish="tool_calls"),
        DONE,
    ), ctx={"show_thinking": True}),
    # Gemini OpenAI-compat: whole calls without `index`, two in one chunk, a third later, finish "stop".
    "gemini_no_index": Fixture(sse(
        chunk({"role": "assistant", "tool_calls": [
            {"id": "function-call-1", "type": "function", "function": {"name": "Read", "arguments": '{"p":"a"}'}},
            {"id": "function-call-2", "type": "function", "function": {"name": "Read", "arguments": '{"p":"b"}'}}]}),
        chunk({"tool_calls": [
            {"id": "function-call-3", "type": "function", "function": {"name": "Glob", "arguments": '{"p":"c"}'}}]},
            finish="stop", usage=usage(80, 24)),
        DONE,
    )),
    # vLLM: `reasoning` and `reasoning_content` both set to the same text (shown once),
    # stop_reason an int token id (not a stop string), usage only in the final chunk.
    "vllm_reasoning_both_fields": Fixture(sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "hm", "reasoning_content": "hm"}),
        text("4"),
        chunk({"content": ""}, finish="stop", stop_reason=151645),
        chunk(usage=usage(20, 5)),
        DONE,
    ), ctx={"show_thinking": True, "stop_sequences": ["END"]}),
    # Moonshot/Kimi: usage inside the final choice instead of at the top level.
    "usage_inside_choice": Fixture(sse(
        text("hi"),
        {"id": ID, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop",
             "usage": {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52, "cached_tokens": 0}}]},
        DONE,
    )),
    # LiteLLM-style gateway: the call id on every fragment, then a summary chunk repeating the
    # call with double-encoded arguments (must not be appended to the complete JSON).
    "id_every_chunk_and_summary": Fixture(sse(
        tools(tc(0, "call_s", "Grep", '{"pat')),
        tools(tc(0, "call_s", None, 'tern":"x"}')),
        tools(tc(0, "call_s", "Grep", json.dumps('{"pattern":"x"}'))),
        chunk({}, finish="tool_calls"),
        DONE,
    )),
    # Groq-style: every call whole in its own chunk, all at index 0, told apart by id.
    "index0_whole_calls_distinct_ids": Fixture(sse(
        tools(tc(0, "call_g1", "Read", '{"file_path":"a"}')),
        tools(tc(0, "call_g2", "Read", '{"file_path":"b"}')),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(70, 30)),
        DONE,
    )),
    # Poolside-style: the id changes after the first fragment (the name does not come again).
    "id_changes_after_first_fragment": Fixture(sse(
        tools(tc(0, "call_first", "Bash", "")),
        tools(tc(0, "call_other", None, '{"command":')),
        tools(tc(0, "call_other", None, '"ls"}')),
        chunk({}, finish="tool_calls"),
        DONE,
    )),
    # llama.cpp: id/name in the first fragment, incremental argument diffs, usage and timings on
    # the finish chunk.
    "llamacpp_tool_stream": Fixture(sse(
        chunk({"role": "assistant", "content": None}),
        tools(tc(0, "sNa6Kq9Z0QvBwK4o", "Bash", "")),
        tools(tc(0, args='{"command":"')),
        tools(tc(0, args='make test"}')),
        {"id": ID, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
         "usage": {"prompt_tokens": 900, "completion_tokens": 14, "total_tokens": 914},
         "timings": {"prompt_n": 900, "predicted_n": 14}},
        DONE,
    )),
    # LM Studio without a reasoning parser: <think> and </think> as their own chunks, the answer's
    # "\n\n" separate; the answer has no leading whitespace (as in the non-streaming path).
    "lmstudio_think_tags_own_chunks": Fixture(sse(
        text("<think>"),
        text("\nweigh options\n"),
        text("</think>"),
        text("\n\n"),
        text("Answer."),
        chunk({}, finish="stop"),
        DONE,
    ), ctx={"show_thinking": True}, caps={"think_tags": True}),
    # Azure: filter-results chunk first, filter annotations on content chunks, a choice with no
    # delta at all (content_filter_offsets), then finish "content_filter".
    "azure_content_filter": Fixture(sse(
        {"id": "", "object": "", "created": 0, "model": "", "choices": [],
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False}}}]},
        chunk({"content": "Part"}, content_filter_results={"hate": {"filtered": False}}),
        {"id": ID, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "finish_reason": None,
             "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 4}}]},
        chunk({}, finish="content_filter"),
        chunk(usage=usage(25, 1)),
        DONE,
    )),
    # DeepSeek: reasoning_content then content; cache hits as prompt_cache_hit_tokens.
    "deepseek_reasoning_cache": Fixture(sse(
        chunk({"role": "assistant", "content": None, "reasoning_content": "Check."}),
        chunk({"content": "Yes.", "reasoning_content": None}),
        chunk({"content": ""}, finish="stop"),
        chunk(usage={"prompt_tokens": 1000, "completion_tokens": 8, "total_tokens": 1008,
                     "prompt_cache_hit_tokens": 896, "prompt_cache_miss_tokens": 104,
                     "completion_tokens_details": {"reasoning_tokens": 3}}),
        DONE,
    ), ctx={"show_thinking": True}),
    # Multi-line data field (joined with "\n" by the SSE parser) and event:/id: lines ignored.
    "multiline_data": Fixture(
        b"event: chunk\nid: 1\ndata: {\"id\":\"x\",\"choices\":[{\"index\":0,\ndata: \"delta\":{\"content\":\"split\"}}]}\n\n"
        + sse(chunk({}, finish="stop"), DONE)
    ),
    # Lone-CR line ends (legal SSE) and a final event with no blank line before EOF.
    "cr_line_ends_no_trailing_blank": Fixture(
        sse(text("cr"), chunk({}, finish="stop"), eol=b"\r") + b"data: [DONE]"
    ),
}
