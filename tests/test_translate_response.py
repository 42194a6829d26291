"""Non-streaming response translation (PROTOCOL §2) and the shared helpers in common.py."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from clasp.translate.common import (
    anthropic_usage,
    content_text,
    message_id,
    parse_tool_arguments,
    random_id,
    reasoning_text,
    stop_reason_for,
    tool_use_id,
)
from clasp.translate.errors import ProxyError
from clasp.translate.response import split_think_tags, translate_response

TOOLU = re.compile(r"^toolu_[A-Za-z0-9]{24}$")


def make_ctx(**kw):
    base = dict(
        requested_model="claude-sonnet-4-5",
        upstream_model="gpt-4.1",
        stream=False,
        name_map={},
        stop_sequences=[],
        show_thinking=False,
        estimated_input_tokens=500,
        max_tokens=4096,
    )
    base.update(kw)
    return SimpleNamespace(**base)


CAPS = SimpleNamespace(think_tags=False)
THINK_CAPS = SimpleNamespace(think_tags=True)


def completion(message=None, finish="stop", usage=None, **extra):
    choice = {"index": 0, "finish_reason": finish, "message": message or {"role": "assistant", "content": ""}}
    choice.update(extra)
    body = {"id": "chatcmpl-1", "model": "gpt-4.1", "choices": [choice]}
    if usage is not None:
        body["usage"] = usage
    return body


# ---------------------------------------------------------------------------------------------
# §2.6 example, exactly


def test_section_2_6_example_exactly():
    upstream = json.loads(
        """{"id":"chatcmpl-9x","model":"gpt-4.1","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,
 "tool_calls":[{"id":"call_7","type":"function","function":{"name":"Read","arguments":"{\\"file_path\\":\\"b.py\\"}"}}]}}],
 "usage":{"prompt_tokens":2100,"completion_tokens":19,"prompt_tokens_details":{"cached_tokens":1024}}}"""
    )
    expected = json.loads(
        """{"id":"msg_chatcmpl-9x","type":"message","role":"assistant","model":"claude-sonnet-4-5",
 "content":[{"type":"tool_use","id":"call_7","name":"Read","input":{"file_path":"b.py"}}],
 "stop_reason":"tool_use","stop_sequence":null,
 "usage":{"input_tokens":1076,"output_tokens":19,"cache_read_input_tokens":1024,"cache_creation_input_tokens":0}}"""
    )
    out = translate_response(upstream, make_ctx(), CAPS)
    # the id is the one deviation from §2.6: one scheme streamed and not (a stream's
    # message_start goes out before the upstream's id is known), so never the upstream's id
    assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", out["id"])
    assert out == {**expected, "id": out["id"]}
    assert list(out) == list(expected)  # key order as in the spec (stable, readable logs)


# ---------------------------------------------------------------------------------------------
# Envelope and blocks


def test_plain_text_response_envelope():
    out = translate_response(
        completion({"role": "assistant", "content": "Hello there."}, usage={"prompt_tokens": 10, "completion_tokens": 3}),
        make_ctx(requested_model="claude-haiku-4-5"),
        CAPS,
    )
    assert out["type"] == "message" and out["role"] == "assistant"
    assert out["model"] == "claude-haiku-4-5"  # requested name, not the upstream model
    assert out["content"] == [{"type": "text", "text": "Hello there."}]
    assert out["stop_reason"] == "end_turn" and out["stop_sequence"] is None
    assert out["usage"]["input_tokens"] == 10 and out["usage"]["output_tokens"] == 3


@pytest.mark.parametrize("content", [None, "", "   \n\t", [], [{"type": "text", "text": "  "}]])
def test_no_empty_text_block_before_tool_call(content):
    msg = {"role": "assistant", "content": content,
           "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(), CAPS)
    assert [b["type"] for b in out["content"]] == ["tool_use"]
    assert out["content"][0]["input"] == {"command": "ls"}


def test_text_then_tools_in_order_with_parallel_calls():
    msg = {"role": "assistant", "content": "Reading both.", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "Read", "arguments": "{\"file_path\":\"a.py\"}"}},
        {"id": "call_b", "type": "function", "function": {"name": "Read", "arguments": {"file_path": "b.py"}}},
    ]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(), CAPS)
    assert out["content"] == [
        {"type": "text", "text": "Reading both."},
        {"type": "tool_use", "id": "call_a", "name": "Read", "input": {"file_path": "a.py"}},
        {"type": "tool_use", "id": "call_b", "name": "Read", "input": {"file_path": "b.py"}},
    ]
    assert out["stop_reason"] == "tool_use"


def test_content_as_list_of_parts_and_refusal():
    msg = {"role": "assistant", "content": [{"type": "text", "text": "Part one. "}, "part two."], "refusal": None}
    out = translate_response(completion(msg), make_ctx(), CAPS)
    assert out["content"] == [{"type": "text", "text": "Part one. part two."}]
    out = translate_response(completion({"role": "assistant", "content": None, "refusal": "I can't help with that."}), make_ctx(), CAPS)
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]


def test_long_tool_name_restored_from_name_map():
    original = "mcp__some_very_long_server_name__with_an_even_longer_tool_name_that_exceeds_64_chars"
    short = original[:55] + "_deadbeef"
    msg = {"role": "assistant", "content": None,
           "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": short, "arguments": "{}"}},
                          {"id": "call_2", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(name_map={short: original}), CAPS)
    assert [b["name"] for b in out["content"]] == [original, "Read"]


def test_duplicate_and_invalid_tool_ids_replaced():
    msg = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "A", "arguments": "{}"}},
        {"id": "call_1", "type": "function", "function": {"name": "B", "arguments": "{}"}},
        {"id": "call 3/with spaces", "type": "function", "function": {"name": "C", "arguments": "{}"}},
        {"type": "function", "function": {"name": "D", "arguments": "{}"}},
        {"id": "", "type": "function", "function": {"name": "E", "arguments": "{}"}},
    ]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(), CAPS)
    ids = [b["id"] for b in out["content"]]
    assert ids[0] == "call_1"
    assert all(TOOLU.match(i) for i in ids[1:]), ids
    assert len(set(ids)) == 5


def test_tool_call_without_name_is_dropped():
    msg = {"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": "{}"}}]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(), CAPS)
    assert out["content"] == [{"type": "text", "text": "x"}]
    assert out["stop_reason"] == "end_turn"  # tool_calls finish without a block


def test_legacy_function_call():
    msg = {"role": "assistant", "content": None, "function_call": {"name": "Read", "arguments": "{\"file_path\":\"c.py\"}"}}
    out = translate_response(completion(msg, finish="function_call"), make_ctx(), CAPS)
    (block,) = out["content"]
    assert block["type"] == "tool_use" and block["name"] == "Read" and block["input"] == {"file_path": "c.py"}
    assert TOOLU.match(block["id"])
    assert out["stop_reason"] == "tool_use"


def test_tool_calls_with_finish_stop_still_tool_use():
    msg = {"role": "assistant", "content": "ok", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "A", "arguments": ""}}]}
    out = translate_response(completion(msg, finish="stop"), make_ctx(), CAPS)
    assert out["stop_reason"] == "tool_use"
    assert out["content"][1]["input"] == {}


def test_empty_tool_calls_list_is_no_tool():
    out = translate_response(completion({"role": "assistant", "content": "hi", "tool_calls": []}), make_ctx(), CAPS)
    assert out["content"] == [{"type": "text", "text": "hi"}] and out["stop_reason"] == "end_turn"


@pytest.mark.parametrize("body", [
    {"id": "x", "choices": []},
    {"id": "x"},
    {"id": "x", "choices": None},
    {"id": "x", "choices": [{"index": 0, "finish_reason": None}]},
    {"id": "x", "choices": [{"index": 0, "message": None, "finish_reason": "stop"}]},
])
def test_missing_or_empty_choices_gives_empty_end_turn_message(body):
    out = translate_response(body, make_ctx(estimated_input_tokens=321), CAPS)
    assert out["content"] == []
    assert out["stop_reason"] == "end_turn" and out["stop_sequence"] is None
    assert out["usage"]["input_tokens"] == 321  # estimated, never 0
    assert out["usage"]["output_tokens"] == 0


def test_error_payload_under_2xx_raises_proxy_error():
    body = {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-min"}}
    with pytest.raises(ProxyError) as ei:
        translate_response(body, make_ctx(), CAPS)
    assert ei.value.status == 429 and ei.value.error_type == "rate_limit_error"
    assert "free-models-per-min" in ei.value.message


def test_stop_sequence_from_vllm_stop_reason():
    ctx = make_ctx(stop_sequences=["END", "###"])
    out = translate_response(completion({"role": "assistant", "content": "abc"}, finish="stop", stop_reason="###"), ctx, CAPS)
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "###")
    # vLLM reports an EOS token id as an int: not a stop sequence.
    out = translate_response(completion({"role": "assistant", "content": "abc"}, finish="stop", stop_reason=151645), ctx, CAPS)
    assert (out["stop_reason"], out["stop_sequence"]) == ("end_turn", None)


def test_length_maps_to_max_tokens():
    out = translate_response(completion({"role": "assistant", "content": "cut"}, finish="length"), make_ctx(), CAPS)
    assert out["stop_reason"] == "max_tokens"


def test_message_id_random_when_absent():
    body = completion({"role": "assistant", "content": "x"})
    del body["id"]
    out = translate_response(body, make_ctx(), CAPS)
    assert re.match(r"^msg_[A-Za-z0-9]{24}$", out["id"])


# ---------------------------------------------------------------------------------------------
# Thinking


def test_reasoning_content_shown_only_when_requested():
    msg = {"role": "assistant", "content": "Answer.", "reasoning_content": "Let me think."}
    hidden = translate_response(completion(msg), make_ctx(show_thinking=False), CAPS)
    assert hidden["content"] == [{"type": "text", "text": "Answer."}]
    shown = translate_response(completion(msg), make_ctx(show_thinking=True), CAPS)
    assert shown["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "Answer."},
    ]


def test_reasoning_field_precedence():
    assert reasoning_text({"reasoning_content": "a", "reasoning": "b"}) == "a"
    assert reasoning_text({"reasoning_content": "", "reasoning": "b"}) == "b"
    assert reasoning_text({"reasoning": None, "reasoning_details": [
        {"type": "reasoning.text", "text": "x"}, {"type": "reasoning.encrypted", "data": "zz"}, {"type": "reasoning.text", "text": "y"}]}) == "xy"
    assert reasoning_text({"reasoning_details": [{"type": "reasoning.summary", "summary": "sum"}]}) == "sum"
    assert reasoning_text({"reasoning_content": "\n"}) == "\n"  # streamed newlines are kept
    assert reasoning_text({}) == ""


def test_think_tags_extracted_when_flagged():
    msg = {"role": "assistant", "content": "<think>\nstep 1\nstep 2\n</think>\n\nThe answer is 4."}
    out = translate_response(completion(msg), make_ctx(show_thinking=True), THINK_CAPS)
    assert out["content"] == [
        {"type": "thinking", "thinking": "step 1\nstep 2", "signature": ""},
        {"type": "text", "text": "The answer is 4."},
    ]
    # Not shown: the tags are still removed from the visible text.
    out = translate_response(completion(msg), make_ctx(show_thinking=False), THINK_CAPS)
    assert out["content"] == [{"type": "text", "text": "The answer is 4."}]
    # Without the flag, content is left alone.
    out = translate_response(completion(msg), make_ctx(show_thinking=True), CAPS)
    assert out["content"] == [{"type": "text", "text": msg["content"]}]


def test_think_tags_variants():
    assert split_think_tags("reasoning only</think>answer") == ("reasoning only", "answer")
    assert split_think_tags("<think>cut off while reasoning") == ("cut off while reasoning", "")
    assert split_think_tags("plain answer") == ("", "plain answer")
    assert split_think_tags("  <think></think>answer") == ("", "answer")


def test_think_tags_only_thinking_then_tool_call_no_text_block():
    msg = {"role": "assistant", "content": "<think>need file</think>\n\n",
           "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(show_thinking=True), THINK_CAPS)
    assert [b["type"] for b in out["content"]] == ["thinking", "tool_use"]


def test_whitespace_only_reasoning_gives_no_thinking_block():
    msg = {"role": "assistant", "content": "hi", "reasoning_content": "\n\n"}
    out = translate_response(completion(msg), make_ctx(show_thinking=True), CAPS)
    assert [b["type"] for b in out["content"]] == ["text"]


# ---------------------------------------------------------------------------------------------
# Usage (§2.5)


def test_usage_deepseek_cache_hits():
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "prompt_cache_hit_tokens": 800, "prompt_cache_miss_tokens": 200}
    out = translate_response(completion({"role": "assistant", "content": "x"}, usage=usage), make_ctx(), CAPS)
    assert out["usage"] == {"input_tokens": 200, "output_tokens": 50, "cache_read_input_tokens": 800, "cache_creation_input_tokens": 0}


def test_usage_missing_is_estimated_from_output():
    msg = {"role": "assistant", "content": "x" * 10,
           "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "Read", "arguments": "{\"file_path\":\"abc\"}"}}]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(estimated_input_tokens=1234), CAPS)
    u = out["usage"]
    assert u["input_tokens"] == 1234 and u["cache_read_input_tokens"] == 0
    # 10 text chars + "Read" + the serialized input: well above the 10-char text alone.
    assert u["output_tokens"] >= 6


def test_anthropic_usage_rules():
    assert anthropic_usage({"prompt_tokens": 2100, "completion_tokens": 19, "prompt_tokens_details": {"cached_tokens": 1024}}, 9, 0) == {
        "input_tokens": 1076, "output_tokens": 19, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 0}
    # No usage: estimate input; output = ceil(chars/4), at least 1 for any output.
    assert anthropic_usage(None, 700, 9) == {"input_tokens": 700, "output_tokens": 3, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    assert anthropic_usage(None, 700, 1)["output_tokens"] == 1
    assert anthropic_usage(None, 700, 0)["output_tokens"] == 0
    # prompt_tokens 0 / missing for a real prompt: estimated instead of 0.
    assert anthropic_usage({"prompt_tokens": 0, "completion_tokens": 5}, 42, 10)["input_tokens"] == 42
    assert anthropic_usage({"completion_tokens": 5}, 42, 10) == {"input_tokens": 42, "output_tokens": 5, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    # completion 0 while text came out: estimated.
    assert anthropic_usage({"prompt_tokens": 10, "completion_tokens": 0}, 1, 40)["output_tokens"] == 10
    # Fully cached prompt: input 0 is legitimate because cache_read carries the context.
    assert anthropic_usage({"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 100}}, 5, 0)["input_tokens"] == 0
    # Garbage values are ignored, never negative.
    u = anthropic_usage({"prompt_tokens": "12", "completion_tokens": -3, "prompt_tokens_details": None}, 30, 8)
    assert u["input_tokens"] == 30 and u["output_tokens"] == 2
    # cached_tokens 0 falls through to DeepSeek's field.
    assert anthropic_usage({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}, "prompt_cache_hit_tokens": 4}, 0, 0)["cache_read_input_tokens"] == 4


# ---------------------------------------------------------------------------------------------
# §2.4 table, every row


@pytest.mark.parametrize(
    "finish, has_tool, matched, seqs, expected",
    [
        # any but length + tool_use produced -> tool_use
        ("stop", True, None, [], ("tool_use", None)),
        ("tool_calls", True, None, [], ("tool_use", None)),
        ("content_filter", True, None, [], ("tool_use", None)),
        (None, True, None, [], ("tool_use", None)),
        ("stop", True, "END", ["END"], ("tool_use", None)),
        # tool_calls / function_call without a tool block -> end_turn
        ("tool_calls", False, None, [], ("end_turn", None)),
        ("function_call", False, None, [], ("end_turn", None)),
        # stop with the matched string named and requested -> stop_sequence
        ("stop", False, "END", ["END", "###"], ("stop_sequence", "END")),
        # stop naming a string the client did not request -> end_turn
        ("stop", False, "STOP", ["END"], ("end_turn", None)),
        # plain stop -> end_turn
        ("stop", False, None, ["END"], ("end_turn", None)),
        # length -> max_tokens (even with tool calls: the call may be truncated)
        ("length", False, None, [], ("max_tokens", None)),
        ("length", True, None, [], ("max_tokens", None)),
        # content_filter -> end_turn
        ("content_filter", False, None, [], ("end_turn", None)),
        # null, error, unknown -> end_turn
        (None, False, None, [], ("end_turn", None)),
        ("error", False, None, [], ("end_turn", None)),
        ("eos_token", False, None, [], ("end_turn", None)),
    ],
)
def test_stop_reason_table(finish, has_tool, matched, seqs, expected):
    assert stop_reason_for(finish, has_tool, matched, seqs) == expected


# ---------------------------------------------------------------------------------------------
# §2.2 argument repair, each case


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"a": 1}, {"a": 1}),                                        # dict as-is
        ("", {}),                                                    # empty
        ("  \n\t ", {}),                                             # whitespace
        (None, {}),                                                  # null
        ("null", {}),                                                # JSON null
        ('{"path": "a.py", "n": 2}', {"path": "a.py", "n": 2}),      # plain JSON
        ('```json\n{"path": "a.py"}\n```', {"path": "a.py"}),        # code fence with language
        ('```\n{"path": "a.py"}\n```', {"path": "a.py"}),            # bare code fence
        ('Sure: ```json\n{"x": [1, 2]}\n``` done', {"x": [1, 2]}),   # fence inside prose
        ('{"a": 1}{"a": 2}', {"a": 1}),                              # cut after first balanced object
        ('{"a": "}{"} trailing text', {"a": "}{"}),                  # braces inside strings respected
        ('Here you go: {"cmd": "ls"} hope it helps', {"cmd": "ls"}),  # prose around an object
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),          # trailing commas
        ('{"s": "x,}", "t": 1,}', {"s": "x,}", "t": 1}),             # comma inside a string kept
        ('"{\\"path\\": \\"a.py\\"}"', {"path": "a.py"}),            # JSON string containing JSON
        ('"\\"{\\\\\\"k\\\\\\": 1}\\""', {"k": 1}),                  # doubly encoded
        ('{"path": "a.py"', {}),                                     # truncated: unrepairable -> {}
        ("not json at all", {}),                                     # garbage -> {}
        ("[1, 2]", {"value": [1, 2]}),                               # non-object JSON
        ("42", {"value": 42}),
        ('"hello"', {"value": "hello"}),
        ("true", {"value": True}),
        ([1, 2], {"value": [1, 2]}),                                 # non-string, non-dict
        (b'{"a": 1}', {"a": 1}),                                     # bytes
    ],
)
def test_parse_tool_arguments(raw, expected):
    assert parse_tool_arguments(raw) == expected


def test_parse_tool_arguments_dict_not_copied():
    d = {"a": 1}
    assert parse_tool_arguments(d) is d  # hot path: no copies


def test_repaired_arguments_in_response():
    msg = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "Edit", "arguments": '```json\n{"old": "a", "new": "b",}\n```'}}]}
    out = translate_response(completion(msg, finish="tool_calls"), make_ctx(), CAPS)
    assert out["content"][0]["input"] == {"old": "a", "new": "b"}


# ---------------------------------------------------------------------------------------------
# ids and content helpers


def test_random_and_message_ids():
    a, b = random_id("toolu_"), random_id("toolu_")
    assert TOOLU.match(a) and a != b
    assert re.match(r"^x[A-Za-z0-9]{5}$", random_id("x", 5))
    ids = {message_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.match(r"^msg_[A-Za-z0-9]{24}$", i) for i in ids)


def test_tool_use_id_rules():
    seen: set[str] = set()
    assert tool_use_id("call_1", seen) == "call_1"
    assert "call_1" in seen
    dup = tool_use_id("call_1", seen)
    assert TOOLU.match(dup) and dup in seen
    assert TOOLU.match(tool_use_id("bad id!", seen))
    assert TOOLU.match(tool_use_id(None, seen))
    assert len(seen) == 4


def test_content_text_shapes():
    assert content_text("abc") == "abc"
    assert content_text(None) == ""
    assert content_text([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, "b"]) == "ab"
    assert content_text({"type": "text", "text": "solo"}) == "solo"
    assert content_text(12) == ""


# ---------------------------------------------------------------------------------------------
# length: the output limit, or the server's context window


@pytest.mark.parametrize("completion_tokens, sent_max, expected", [
    (40, 40, "max_tokens"),                          # the requested limit was reached
    (4096, 4096, "max_tokens"),                      # clasp's own output cap was reached
    (7885, 128000, "model_context_window_exceeded"),  # llama.cpp: context full long before the limit
    (0, 128000, "model_context_window_exceeded"),     # the prompt alone filled it
])
def test_length_short_of_the_limit_is_the_context_window(completion_tokens, sent_max, expected):
    body = completion({"role": "assistant", "content": "cut"}, finish="length",
                      usage={"prompt_tokens": 300, "completion_tokens": completion_tokens})
    out = translate_response(body, make_ctx(max_tokens=sent_max), CAPS)
    assert out["stop_reason"] == expected and out["stop_sequence"] is None


def test_length_without_an_upstream_count_stays_max_tokens():
    # no usage: nothing says the limit was not reached (the estimate is no evidence)
    out = translate_response(completion({"role": "assistant", "content": "cut " * 50}, finish="length"),
                             make_ctx(max_tokens=100000), CAPS)
    assert out["stop_reason"] == "max_tokens"
