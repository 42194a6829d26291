"""ResponsesStreamTranslator (issue 13): Responses API stream events -> Anthropic SSE events.

For every recorded-shape fixture (tests/responses_stream_fixtures.py): the event grammar is
what Claude Code's SDK accepts, and the streamed message equals the non-streamed translation of
the final response object (or, for a failed response, the same error). Plus the cases the
fixtures do not pin down: stop-sequence hold-back, cut streams, errors, buffering, ids.
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import accumulate  # noqa: E402
from responses_stream_fixtures import ENC, FIXTURES, Recorder, ResponsesFixture, sse, usage  # noqa: E402

from clasp.translate.errors import ProxyError, error_event  # noqa: E402
from clasp.translate.responses_common import decode_reasoning_signature  # noqa: E402
from clasp.translate.responses_response import translate_responses_response  # noqa: E402
from clasp.translate.responses_stream import ResponsesStreamTranslator  # noqa: E402
from clasp.translate.sse import SSEParser  # noqa: E402

MODEL = "claude-sonnet-4-5"
MSG_ID = "msg_test"


def make_ctx(**over: object) -> SimpleNamespace:
    base = dict(requested_model=MODEL, upstream_model="gpt-5", stream=True, name_map={},
                stop_sequences=[], show_thinking=False, estimated_input_tokens=100, max_tokens=32000)
    base.update(over)
    return SimpleNamespace(**base)


def make_caps(**over: object) -> SimpleNamespace:
    base = dict(buffer_tool_args=False)
    base.update(over)
    return SimpleNamespace(**base)


def translator(fx: ResponsesFixture | None = None, provider: str = "upstream", **ctx: object) -> ResponsesStreamTranslator:
    over = dict(fx.ctx) if fx else {}
    over.update(ctx)
    return ResponsesStreamTranslator(make_ctx(**over), make_caps(**(fx.caps if fx else {})), MSG_ID,
                                     provider=provider)


def run_events(tr: ResponsesStreamTranslator, events: list[dict], finish: bool = True) -> list[dict]:
    out = tr.start()
    for ev in events:
        out.extend(tr.feed(copy.deepcopy(ev)))
    if finish:
        out.extend(tr.finish())
    return out


def run(name: str, **caps: object) -> list[dict]:
    fx = FIXTURES[name]
    if caps:
        fx = ResponsesFixture(fx.events, fx.final, fx.ctx, {**fx.caps, **caps})
    return run_events(translator(fx), fx.events)


def run_sse_pieces(fx: ResponsesFixture, pieces: list[bytes]) -> list[dict]:
    """What the relay does: parse SSE reads, json-decode each payload, feed; finish at EOF."""
    tr = translator(fx)
    parser = SSEParser()
    out = tr.start()
    for piece in pieces:
        for payload in parser.feed(piece):
            out.extend(tr.feed(json.loads(payload)))
    for payload in parser.close():
        out.extend(tr.feed(json.loads(payload)))
    out.extend(tr.finish())
    return out


# ---------------------------------------------------------------- grammar and accumulation

_DELTA_FOR = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"},
              "tool_use": {"input_json_delta"}}
_STOP_REASONS = ("end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal", "model_context_window_exceeded")


def check_grammar(events: list[dict], tool_json: bool = True) -> None:
    """message_start first; blocks opened and closed in index order, one at a time, deltas of
    the block's type; then message_delta + message_stop, or an error event, last. With
    tool_json, every closed tool block's input is valid JSON."""
    assert events and events[0]["type"] == "message_start"
    assert events[0]["message"]["content"] == []
    next_index = 0
    open_index: int | None = None
    open_type = ""
    acc = ""
    ended = False
    for pos, ev in enumerate(events[1:], 1):
        assert not ended, f"event after the terminal event: {ev}"
        et = ev["type"]
        if et == "ping":
            continue
        if et == "content_block_start":
            assert open_index is None, f"start at {pos} while block {open_index} is open"
            assert ev["index"] == next_index
            block = ev["content_block"]
            open_type = block["type"]
            if open_type == "tool_use":
                assert block["input"] == {} and block["id"] and block["name"]
            elif open_type == "text":
                assert block["text"] == ""
            else:
                assert open_type == "thinking" and block["thinking"] == ""
            open_index = next_index
            next_index += 1
            acc = ""
        elif et == "content_block_delta":
            assert ev["index"] == open_index, "delta for no open block"
            assert ev["delta"]["type"] in _DELTA_FOR[open_type]
            acc += ev["delta"].get("text") or ev["delta"].get("partial_json") or ""
        elif et == "content_block_stop":
            assert ev["index"] == open_index, "stop for no open block"
            if open_type == "text":
                assert acc.strip(), "empty or whitespace-only text block"
            if open_type == "tool_use" and tool_json:
                json.loads(acc or "{}")
            open_index = None
        elif et == "message_delta":
            assert open_index is None, "message_delta with a block open"
            assert events[pos + 1:] == [{"type": "message_stop"}]
            assert ev["delta"]["stop_reason"] in _STOP_REASONS and "stop_sequence" in ev["delta"]
            for k in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
                assert isinstance(ev["usage"][k], int) and ev["usage"][k] >= 0
        elif et == "message_stop":
            ended = True
        elif et == "error":
            assert isinstance(ev["error"]["type"], str) and ev["error"]["message"]
            if open_index is not None:
                assert open_type == "tool_use", "only a half-built tool may stay unclosed on error"
            ended = True
        else:
            raise AssertionError(f"unknown event {et}")
    assert ended, "stream not terminated by message_stop or error"


def texts(events: list[dict]) -> str:
    return "".join(e["delta"]["text"] for e in events
                   if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta")


# ---------------------------------------------------------------- every fixture


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_grammar_and_streamed_equals_non_streamed(name: str) -> None:
    fx = FIXTURES[name]
    events = run(name)
    check_grammar(events)
    ctx = make_ctx(**fx.ctx)
    if fx.final["status"] == "failed":
        with pytest.raises(ProxyError) as info:
            translate_responses_response(copy.deepcopy(fx.final), ctx, make_caps(**fx.caps))
        assert events[-1] == error_event(info.value)
        return
    expected = translate_responses_response(copy.deepcopy(fx.final), ctx, make_caps(**fx.caps))
    streamed = accumulate(events)
    assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", expected.pop("id"))
    assert streamed.pop("id") == MSG_ID
    assert streamed == expected


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_with_buffered_tool_arguments_gives_the_same_message(name: str) -> None:
    fx = FIXTURES[name]
    events = run(name, buffer_tool_args=True)
    check_grammar(events)
    assert accumulate(events) == accumulate(run(name))
    for e in events:  # buffered: each call's input arrives whole, once
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            json.loads(e["delta"]["partial_json"])


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_sse_reads_split_anywhere_give_the_same_events(name: str) -> None:
    fx = FIXTURES[name]
    raw = sse(fx.events)
    whole = run_sse_pieces(fx, [raw])
    assert whole == run(name)
    rnd = random.Random(name)
    for _ in range(3):
        cuts = sorted(rnd.sample(range(1, len(raw)), min(40, len(raw) - 1)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        assert run_sse_pieces(fx, pieces) == whole


def test_every_fixture_ends_the_way_its_final_object_says() -> None:
    for name, fx in FIXTURES.items():
        last = fx.events[-1]["type"]
        assert last in ("response.completed", "response.incomplete", "response.failed", "error"), name
        assert [e["sequence_number"] for e in fx.events] == list(range(len(fx.events))), name


# ---------------------------------------------------------------- exact events


def test_text_fixture_exact_events() -> None:
    events = run("text")
    assert events == [
        {"type": "message_start", "message": {
            "id": MSG_ID, "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 1, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " wörld"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " 日本 🎉"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "\n"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"input_tokens": 176, "output_tokens": 12, "cache_read_input_tokens": 1024,
                   "cache_creation_input_tokens": 0}},
        {"type": "message_stop"},
    ]


def test_reasoning_and_tool_call_stream_live_with_clasp_signature() -> None:
    events = run("reasoning_tool")
    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in events]
    assert kinds == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "thinking_delta"), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", None),
        ("content_block_delta", "input_json_delta"), ("content_block_delta", "input_json_delta"),
        ("content_block_delta", "input_json_delta"),
        ("content_block_stop", None),
        ("message_delta", None), ("message_stop", None),
    ]
    # the second summary part starts after a blank line
    assert events[4]["delta"]["thinking"] == "\n\n**Planning**\n\n"
    sig = events[6]["delta"]["signature"]
    assert sig.startswith("clasp.r1.")
    assert decode_reasoning_signature(sig) == ("rs_67ccd2c0a6f88190a8fcf3e3e11ee4ea", ENC)
    assert events[8]["content_block"] == {"type": "tool_use", "id": "call_4Xq9mQh2sTzD0b1e", "name": "Read",
                                          "input": {}}
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_arguments_only_on_done_arrive_whole() -> None:
    for name in ("args_done_only", "args_item_done_only"):
        deltas = [e for e in run(name) if e["type"] == "content_block_delta"]
        assert len(deltas) == 1, name
        assert json.loads(deltas[0]["delta"]["partial_json"]) in ({"pattern": "**/*.py"}, {"file_path": "b.py"})


def test_interleaved_parallel_calls_become_two_whole_blocks_in_order() -> None:
    events = run("interleaved_calls")
    starts = [e["content_block"]["id"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["call_i1", "call_i2"]
    msg = accumulate(events)
    assert [b["input"] for b in msg["content"]] == [{"file_path": "a.py"}, {"file_path": "b.py"}]
    assert msg["stop_reason"] == "tool_use"


def test_parallel_calls_restore_shortened_names() -> None:
    msg = accumulate(run("parallel_calls"))
    assert [b["name"] for b in msg["content"]] == ["Read", "mcp__srv__grep.files"]
    assert [b["id"] for b in msg["content"]] == ["call_p1", "call_p2"]


def test_minimal_server_is_caught_up_from_the_final_object() -> None:
    msg = accumulate(run("minimal_server"))
    assert msg["content"][0]["thinking"] == "Thinking about it."
    assert decode_reasoning_signature(msg["content"][0]["signature"]) == ("rs_min", "opaque-enc")
    assert msg["content"][1] == {"type": "text", "text": "42"}


def test_incomplete_and_refusal_stop_reasons() -> None:
    assert accumulate(run("incomplete_max_tokens"))["stop_reason"] == "max_tokens"
    msg = accumulate(run("incomplete_content_filter"))
    assert msg["stop_reason"] == "refusal" and msg["content"] == [{"type": "text", "text": "Here is how"}]
    msg = accumulate(run("refusal"))
    assert msg["content"] == [{"type": "text", "text": "I'm sorry, I can't help with that."}]
    assert msg["stop_reason"] == "end_turn"


def test_max_output_tokens_short_of_the_limit_is_the_context_window() -> None:
    fx = FIXTURES["incomplete_max_tokens"]
    tr = ResponsesStreamTranslator(make_ctx(max_tokens=32000), make_caps(), MSG_ID)
    assert accumulate(run_events(tr, fx.events))["stop_reason"] == "model_context_window_exceeded"


# ---------------------------------------------------------------- stop sequences


def test_stop_sequence_split_across_deltas_trims_and_drops_the_rest() -> None:
    fx = FIXTURES["stop_sequence"]
    tr = translator(fx)
    out = tr.start()
    emitted: list[str] = []
    for ev in fx.events:
        got = tr.feed(copy.deepcopy(ev))
        out.extend(got)
        emitted.append(texts(got))
        assert "EN" not in texts(out), "the possible start of a stop sequence must be held back"
    check_grammar(out)
    assert texts(out) == "Step 1 done.\nStep 2 done.\n"
    assert "" in emitted and "Step 2 done.\n" in emitted  # the tail waited for the next delta
    assert out[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END_STEPS"}
    assert tr.tool_count == 0  # the call after the stop was never "generated"
    assert tr.done and tr.finish() == []


def test_held_back_prefix_is_released_when_it_does_not_complete() -> None:
    events = run("stop_prefix_not_matched")
    assert texts(events) == "Almost END but not quite: END_STEP"
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_earliest_completed_stop_sequence_wins_and_text_before_it_stays() -> None:
    r = Recorder()
    r.message("msg_x", ["ab", "cd", "ef"])
    final = r.completed(usage(10, 3))
    tr = ResponsesStreamTranslator(make_ctx(stop_sequences=["bcdef", "cd"]), make_caps(), MSG_ID)
    events = run_events(tr, r.events)
    assert texts(events) == "ab"
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "cd"}
    expected = translate_responses_response(final, make_ctx(stop_sequences=["bcdef", "cd"]), make_caps())
    assert expected["content"] == [{"type": "text", "text": "ab"}] and expected["stop_sequence"] == "cd"


def test_stop_sequence_at_the_very_start_gives_no_text_block() -> None:
    r = Recorder()
    r.message("msg_x", ["STOP", " then more"])
    r.completed(usage(10, 3))
    events = run_events(translator(stop_sequences=["STOP"]), r.events)
    check_grammar(events)
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1]["delta"]["stop_reason"] == "stop_sequence"


def test_no_stop_sequences_takes_the_text_hot_path() -> None:
    tr = translator()
    r = Recorder()
    r.message("msg_x", ["a", "b"])
    tr.start()
    for ev in r.events[:-3]:
        tr.feed(ev)
    out = tr.feed({"type": "response.output_text.delta", "item_id": "msg_x", "output_index": 0,
                   "content_index": 0, "delta": "c", "sequence_number": 99})
    assert out == [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "c"}}]


# ---------------------------------------------------------------- cut streams and errors


def test_stream_cut_without_a_terminal_event_is_an_error() -> None:
    fx = FIXTURES["text"]
    tr = translator(fx)
    events = run_events(tr, fx.events[:-1])  # everything but response.completed
    check_grammar(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert "upstream: upstream stream ended" in events[-1]["error"]["message"]
    assert events[-2] == {"type": "content_block_stop", "index": 0}  # the text block is closed first
    assert tr.done and tr.finish_reason is None
    assert tr.usage is not None


def test_stream_cut_mid_arguments_leaves_the_half_built_call_unclosed() -> None:
    fx = FIXTURES["reasoning_tool"]
    cut = next(i for i, e in enumerate(fx.events) if e["type"] == "response.function_call_arguments.delta") + 1
    events = run_events(translator(fx), fx.events[:cut])
    check_grammar(events)
    assert events[-1]["type"] == "error"
    assert events[-2]["type"] == "content_block_delta"  # no content_block_stop for the tool


def test_cut_before_anything_is_still_an_error_after_message_start() -> None:
    tr = translator()
    events = tr.finish()
    assert [e["type"] for e in events] == ["message_start", "error"]


def test_failed_server_error_maps_like_chat_errors() -> None:
    events = run("failed")
    assert events[-1] == {"type": "error", "error": {
        "type": "api_error",
        "message": "upstream: The server had an error while processing your request. Sorry about that!"}}
    assert events[-2] == {"type": "content_block_stop", "index": 0}


def test_context_overflow_becomes_the_anthropic_prompt_too_long_message() -> None:
    events = run("failed_context_overflow")
    assert events[-1]["error"]["type"] == "invalid_request_error"
    assert events[-1]["error"]["message"].startswith("prompt is too long")


def test_error_event_rate_limit_and_nested_form() -> None:
    events = run("error_event")
    assert events[-1]["error"]["type"] == "rate_limit_error"
    tr = translator(provider="openai")
    out = tr.feed({"type": "error", "sequence_number": 2,
                   "error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "Incorrect API key"}})
    assert out[-1] == {"type": "error", "error": {"type": "authentication_error",
                                                  "message": "openai: Incorrect API key"}}
    assert tr.done and tr.finish_reason == "error" and tr.feed({"type": "response.completed"}) == []


def test_failed_without_an_error_object_and_error_after_error_is_ignored() -> None:
    tr = translator()
    out = tr.feed({"type": "response.failed", "sequence_number": 5, "response": {"status": "failed", "error": None}})
    assert out[-1]["error"]["type"] == "api_error" and "response failed" in out[-1]["error"]["message"]
    assert tr.finish_reason == "failed"
    assert tr.feed({"type": "error", "message": "again"}) == [] and tr.finish() == []


def test_fail_accepts_the_relay_error_forms() -> None:
    for err in (ProxyError(504, "timeout_error", "upstream read timeout"),
                {"type": "overloaded_error", "message": "shutting down"},
                {"type": "error", "error": {"type": "api_error", "message": "x"}}):
        tr = translator()
        run_events(tr, FIXTURES["text"].events[:6], finish=False)
        out = tr.fail(err)
        assert out[0] == {"type": "content_block_stop", "index": 0} and out[-1]["type"] == "error"
        assert tr.done and tr.fail(err) == []


# ---------------------------------------------------------------- attributes and odd input


def test_public_attributes_track_the_stream() -> None:
    fx = FIXTURES["reasoning_tool"]
    tr = translator(fx)
    run_events(tr, fx.events[:-1], finish=False)
    assert tr.finish_reason is None and not tr.has_upstream_usage and tr.usage is None and not tr.done
    assert tr.tool_count == 1
    out = tr.feed(copy.deepcopy(fx.events[-1]))
    assert [e["type"] for e in out] == ["message_delta", "message_stop"]
    assert tr.done and tr.finish_reason == "completed" and tr.has_upstream_usage
    assert tr.usage == {"input_tokens": 180, "output_tokens": 180, "cache_read_input_tokens": 1920,
                        "cache_creation_input_tokens": 0}
    assert tr.finish() == [] and tr.feed(fx.events[3]) == []


def test_feed_before_start_begins_with_message_start_and_start_is_idempotent() -> None:
    tr = translator()
    out = tr.feed({"type": "response.created", "sequence_number": 0, "response": {"status": "in_progress"}})
    assert [e["type"] for e in out] == ["message_start"]
    assert tr.start() == []


def test_unknown_and_malformed_events_are_ignored() -> None:
    tr = translator()
    tr.start()
    for ev in ({"type": "response.web_search_call.searching", "output_index": 0, "item_id": "ws_1"},
               {"type": "response.output_item.added", "output_index": 0, "item": {"id": "ws_1", "type": "web_search_call"}},
               {"type": "response.output_text.annotation.added", "output_index": 1},
               {"type": "response.output_text.delta", "output_index": 1, "delta": None},
               {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": 5},
               {"type": "response.output_item.added", "item": "junk"},
               {"no": "type"}, ["not", "a", "dict"], None):
        assert tr.feed(ev) == []  # type: ignore[arg-type]
    out = tr.feed({"type": "response.completed", "response": {"status": "completed", "output": "junk"}})
    assert [e["type"] for e in out] == ["message_delta", "message_stop"]
    assert out[0]["usage"]["input_tokens"] == 100  # estimated: the upstream sent no usage


def test_thinking_hidden_unless_requested() -> None:
    fx = FIXTURES["reasoning_tool"]
    tr = ResponsesStreamTranslator(make_ctx(show_thinking=False), make_caps(), MSG_ID)
    msg = accumulate(run_events(tr, fx.events))
    assert [b["type"] for b in msg["content"]] == ["tool_use"]
    assert tr.output_chars > len('{"file_path":"src/app.py"}')  # hidden reasoning still counts as output


def test_reasoning_without_encrypted_content_has_an_empty_signature() -> None:
    r = Recorder()
    r.reasoning("rs_noenc", [["Short."]], enc=None)
    r.message("msg_x", ["Done."])
    final = r.completed(usage(10, 4))
    msg = accumulate(run_events(translator(show_thinking=True), r.events))
    assert msg["content"][0] == {"type": "thinking", "thinking": "Short.", "signature": ""}
    expected = translate_responses_response(final, make_ctx(show_thinking=True), make_caps())
    assert expected["content"] == msg["content"]


def test_reasoning_with_only_encrypted_content_still_round_trips() -> None:
    r = Recorder()
    r.reasoning("rs_silent", [])
    r.message("msg_x", ["Done."])
    final = r.completed(usage(10, 4))
    msg = accumulate(run_events(translator(show_thinking=True), r.events))
    assert msg["content"][0]["thinking"] == ""
    assert decode_reasoning_signature(msg["content"][0]["signature"]) == ("rs_silent", ENC)
    msg.pop("id")
    expected = translate_responses_response(final, make_ctx(show_thinking=True), make_caps())
    expected.pop("id")
    assert msg == expected


def test_whitespace_only_message_makes_no_block() -> None:
    r = Recorder()
    r.message("msg_ws", ["\n", "  "])
    r.function_call("fc_1", "call_1", "Read", ['{"file_path":"a"}'])
    final = r.completed(usage(10, 4))
    events = run_events(translator(), r.events)
    check_grammar(events)
    msg = accumulate(events)
    assert [b["type"] for b in msg["content"]] == ["tool_use"]
    assert translate_responses_response(final, make_ctx(), make_caps())["content"] == msg["content"]


def test_duplicate_or_invalid_call_ids_get_fresh_tool_ids() -> None:
    r = Recorder()
    r.function_call("fc_1", "call_same", "Read", ['{"a":1}'])
    r.function_call("fc_2", "call_same", "Read", ['{"a":2}'])
    r.function_call("fc_3", "bad id!", "Read", ['{"a":3}'])
    r.completed(usage(10, 4))
    ids = [b["id"] for b in accumulate(run_events(translator(), r.events))["content"]]
    assert ids[0] == "call_same" and re.fullmatch(r"toolu_[A-Za-z0-9]{24}", ids[1])
    assert re.fullmatch(r"toolu_[A-Za-z0-9]{24}", ids[2]) and len(set(ids)) == 3


def test_function_call_without_a_name_is_dropped() -> None:
    tr = translator()
    run_events(tr, [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": "", "call_id": "call_1"}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '{"a":1}'},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": '{"a":1}', "call_id": "call_1"}},
    ], finish=False)
    out = tr.feed({"type": "response.completed", "response": {"status": "completed", "output": []}})
    assert [e["type"] for e in out] == ["message_delta", "message_stop"]
    assert out[0]["delta"]["stop_reason"] == "end_turn" and tr.tool_count == 0


def test_name_arriving_only_with_the_arguments_done_event_opens_the_block() -> None:
    tr = translator()
    events = run_events(tr, [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": "", "call_id": "call_1"}},
        {"type": "response.function_call_arguments.done", "output_index": 0, "item_id": "fc_1",
         "name": "Grep", "arguments": '{"pattern":"x"}'},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": '{"pattern":"x"}', "call_id": "call_1",
                  "name": "Grep"}},
        {"type": "response.completed", "response": {"status": "completed"}},
    ])
    check_grammar(events)
    assert accumulate(events)["content"] == [{"type": "tool_use", "id": "call_1", "name": "Grep",
                                              "input": {"pattern": "x"}}]


def test_text_delta_for_a_later_item_waits_for_the_live_one() -> None:
    """A message item that starts while a call is mid-arguments is held, not interleaved."""
    tr = translator()
    events = run_events(tr, [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": "", "call_id": "call_1", "name": "Read"}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '{"a":'},
        {"type": "response.output_text.delta", "output_index": 1, "item_id": "msg_1", "content_index": 0,
         "delta": "Meanwhile."},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '1}'},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": '{"a":1}', "call_id": "call_1", "name": "Read"}},
        {"type": "response.completed", "response": {"status": "completed"}},
    ])
    check_grammar(events)
    msg = accumulate(events)
    assert msg["content"] == [{"type": "tool_use", "id": "call_1", "name": "Read", "input": {"a": 1}},
                              {"type": "text", "text": "Meanwhile."}]
    assert msg["stop_reason"] == "tool_use"


_JUNK = (None, 0, -1, 2**40, 1.5, True, "", "x", [], [1], {}, {"type": "message"}, "rs_67ccd2c0a6f88190a8fcf3e3e11ee4ea")


def _mutate(value: object, rnd: random.Random) -> object:
    if isinstance(value, dict) and value and rnd.random() < 0.7:
        value = dict(value)
        key = rnd.choice(list(value))
        value[key] = _mutate(value[key], rnd) if rnd.random() < 0.5 else rnd.choice(_JUNK)
        return value
    return rnd.choice(_JUNK)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_hostile_event_fields_never_break_the_grammar(name: str) -> None:
    """Any field of any event replaced by junk (wrong types, unknown ids, odd indices): no
    exception, and the client still gets a well-formed stream."""
    rnd = random.Random(f"hostile-{name}")
    fx = FIXTURES[name]
    for _ in range(60):
        events = [copy.deepcopy(e) for e in fx.events]
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(events))
            events[i] = _mutate(events[i], rnd)  # type: ignore[assignment]
        tr = translator(fx)
        out = tr.start()
        for ev in events:
            out.extend(tr.feed(ev))
        out.extend(tr.finish())
        # (a lost or junk arguments delta of a call already streaming can still break its JSON,
        # as on the chat path: what was sent cannot be taken back)
        check_grammar(out, tool_json=False)


def test_deltas_before_the_item_is_announced_still_stream_once_the_name_is_known() -> None:
    tr = translator()
    events = run_events(tr, [
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '{"a":'},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": "", "call_id": "call_1", "name": "Read"}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '1}'},
        {"type": "response.completed", "response": {"status": "completed"}},
    ])
    check_grammar(events)
    deltas = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ['{"a":', "1}"]  # caught up at the block start, then live


def test_buffered_arguments_take_the_final_text_when_deltas_disagree() -> None:
    tr = ResponsesStreamTranslator(make_ctx(), make_caps(buffer_tool_args=True), MSG_ID)
    events = run_events(tr, [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "arguments": "", "call_id": "call_1", "name": "Read"}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '{"a":'},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": '"lost'},
        {"type": "response.function_call_arguments.done", "output_index": 0, "item_id": "fc_1",
         "arguments": '{"a":"b","c":2}'},
        {"type": "response.completed", "response": {"status": "completed"}},
    ])
    check_grammar(events)
    assert accumulate(events)["content"][0]["input"] == {"a": "b", "c": 2}
