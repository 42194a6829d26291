"""StreamTranslator (PROTOCOL.md §3.3, §3.4): exact event lists for upstream chunk sequences,
a grammar check of every list, split-invariance of SSE parsing + translation, and agreement
with the non-streaming translator."""
from __future__ import annotations

import json
import re
import os
import random
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import accumulate  # noqa: E402
from stream_fixtures import FIXTURES, ID, Fixture, chunk, tc, text, tools, usage  # noqa: E402

from clasp.translate.errors import ProxyError  # noqa: E402
from clasp.translate.sse import SSEParser, encode_events  # noqa: E402
from clasp.translate.stream import StreamTranslator  # noqa: E402

MODEL = "claude-sonnet-4-5"
MSG_ID = "msg_test"


def make_ctx(**over: object) -> SimpleNamespace:
    base = dict(requested_model=MODEL, upstream_model="gpt-4.1", stream=True, name_map={},
                stop_sequences=[], show_thinking=False, estimated_input_tokens=100, max_tokens=1000)
    base.update(over)
    return SimpleNamespace(**base)


def make_caps(**over: object) -> SimpleNamespace:
    base = dict(think_tags=False, buffer_tool_args=False)
    base.update(over)
    return SimpleNamespace(**base)


def translator(fx: Fixture | None = None, message_id: str = MSG_ID) -> StreamTranslator:
    fx = fx or Fixture(b"")
    return StreamTranslator(make_ctx(**fx.ctx), make_caps(**fx.caps), message_id)


def run_pieces(pieces: list[bytes], fx: Fixture, message_id: str = MSG_ID) -> list[dict]:
    """What the I/O layer does: parse SSE, json-decode, feed; finish on [DONE] or EOF."""
    tr = translator(fx, message_id)
    parser = SSEParser()
    events = tr.start()
    done = False

    def handle(payloads: list[str]) -> None:
        nonlocal done
        for payload in payloads:
            if done:
                return
            if payload == "[DONE]":
                events.extend(tr.finish())
                done = True
                return
            events.extend(tr.feed(json.loads(payload)))

    for piece in pieces:
        handle(parser.feed(piece))
    handle(parser.close())
    events.extend(tr.finish())
    return events


def run(name: str) -> list[dict]:
    fx = FIXTURES[name]
    return run_pieces([fx.raw], fx)


# ---------------------------------------------------------------- event constructors

def msg_start(input_tokens: int = 100) -> dict:
    return {"type": "message_start", "message": {
        "id": MSG_ID, "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                  "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}}


PING = {"type": "ping"}
MSG_STOP = {"type": "message_stop"}


def head(input_tokens: int = 100) -> list[dict]:
    return [msg_start(input_tokens), PING]


def start_text(i: int) -> dict:
    return {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}


def start_thinking(i: int) -> dict:
    return {"type": "content_block_start", "index": i,
            "content_block": {"type": "thinking", "thinking": ""}}


def start_tool(i: int, tid: str, name: str) -> dict:
    return {"type": "content_block_start", "index": i,
            "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}}}


def text_d(i: int, t: str) -> dict:
    return {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t}}


def think_d(i: int, t: str) -> dict:
    return {"type": "content_block_delta", "index": i,
            "delta": {"type": "thinking_delta", "thinking": t}}


def sig_d(i: int) -> dict:
    return {"type": "content_block_delta", "index": i,
            "delta": {"type": "signature_delta", "signature": ""}}


def json_d(i: int, s: str) -> dict:
    return {"type": "content_block_delta", "index": i,
            "delta": {"type": "input_json_delta", "partial_json": s}}


def stop(i: int) -> dict:
    return {"type": "content_block_stop", "index": i}


def msg_delta(reason: str, inp: int, out: int, cached: int = 0, seq: str | None = None) -> dict:
    return {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq},
            "usage": {"input_tokens": inp, "output_tokens": out,
                      "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}}


def error(etype: str, message: str) -> dict:
    return {"type": "error", "error": {"type": etype, "message": message}}


def tail(reason: str, inp: int, out: int, cached: int = 0, seq: str | None = None) -> list[dict]:
    return [msg_delta(reason, inp, out, cached, seq), MSG_STOP]


EXPECTED: dict[str, list[dict]] = {
    "text_only": head() + [
        start_text(0), text_d(0, "Hello"), text_d(0, " wörld 日本 🎉"), stop(0),
    ] + tail("end_turn", 30, 5),
    "tool_fragmented": head() + [
        start_tool(0, "call_7", "Read"),
        json_d(0, '{"file_'), json_d(0, 'path":'), json_d(0, '"b.py"}'), stop(0),
    ] + tail("tool_use", 1076, 19, cached=1024),
    "parallel_sequential": head() + [
        start_tool(0, "call_a", "Read"), json_d(0, '{"file_path":'), json_d(0, '"a.py"}'), stop(0),
        start_tool(1, "call_b", "Read"), json_d(1, '{"file_path":'), json_d(1, '"b.py"}'), stop(1),
    ] + tail("tool_use", 100, 20),
    # call_b's header arrives while call_a has no arguments yet: it waits, then streams as one
    # delta once call_a's JSON is complete.
    "parallel_interleaved": head() + [
        start_tool(0, "call_a", "Read"), json_d(0, '{"file_path":'), json_d(0, '"a.py"}'), stop(0),
        start_tool(1, "call_b", "Grep"), json_d(1, '{"pattern":"TODO"}'), stop(1),
    ] + tail("tool_use", 100, 20),
    "text_then_tool": head() + [
        start_text(0), text_d(0, "Let me read "), text_d(0, "the file."), stop(0),
        start_tool(1, "call_1", "Read"), json_d(1, '{"file_path":"x.py"}'), stop(1),
    ] + tail("tool_use", 50, 12),
    "reasoning_text_tool": head() + [
        start_thinking(0), think_d(0, "Need "), think_d(0, "the file."), sig_d(0), stop(0),
        start_text(1), text_d(1, "Reading."), stop(1),
        start_tool(2, "call_7", "Read"), json_d(2, '{"file_path":"b.py"}'), stop(2),
    ] + tail("tool_use", 40, 30),
    "reasoning_hidden": head() + [
        start_text(0), text_d(0, "Done."), stop(0),
    ] + tail("end_turn", 40, 30),
    "usage_after_finish": head() + [
        start_text(0), text_d(0, "ok"), stop(0),
    ] + tail("end_turn", 12, 1),
    "finish_before_usage": head() + [
        start_text(0), text_d(0, "ok"), stop(0),
    ] + tail("end_turn", 70, 3, cached=7),
    "no_done": head() + [
        start_text(0), text_d(0, "bye"), stop(0),
    ] + tail("end_turn", 9, 2),
    # No finish_reason, tool JSON cut: error, and the half-built tool block is never stopped.
    "truncated_tool": head() + [
        start_text(0), text_d(0, "Looking."), stop(0),
        start_tool(1, "call_1", "Read"), json_d(1, '{"file_pa'),
        error("api_error", "upstream: upstream stream ended unexpectedly"),
    ],
    # No usage at all: output estimated from 17 emitted argument characters.
    "no_finish_complete": head() + [
        start_tool(0, "call_1", "Read"), json_d(0, '{"file_path":"a"}'), stop(0),
    ] + tail("tool_use", 100, 5),
    "error_mid_stream": head() + [
        start_text(0), text_d(0, "partial"), stop(0),
        error("api_error", "upstream: Provider returned error"),
    ],
    "error_mid_tool": head() + [
        start_tool(0, "call_1", "Bash"), json_d(0, '{"command":"rm -rf bui'),
        error("rate_limit_error", "upstream: Rate limit exceeded"),
    ],
    "whitespace_before_tool": head() + [
        start_tool(0, "call_1", "Read"), json_d(0, '{"file_path":"a"}'), stop(0),
    ] + tail("tool_use", 10, 5),
    "cumulative_args": head() + [
        start_tool(0, "call_1", "Read"),
        json_d(0, '{"file'), json_d(0, '_path":"a'), json_d(0, '.py"}'), stop(0),
    ] + tail("tool_use", 100, 5),
    "index_reuse": head() + [
        start_tool(0, "call_a", "Read"), json_d(0, '{"file_path":'), json_d(0, '"a.py"}'), stop(0),
        start_tool(1, "call_b", "Glob"), json_d(1, '{"pattern":'), json_d(1, '"*.md"}'), stop(1),
    ] + tail("tool_use", 100, 10),
    # finish_reason "stop" with tool calls still means tool_use.
    "ollama_whole_calls": head() + [
        start_tool(0, "call_x1", "Read"), json_d(0, '{"file_path":"a.py"}'), stop(0),
        start_tool(1, "call_x2", "Read"), json_d(1, '{"file_path":"b.py"}'), stop(1),
    ] + tail("tool_use", 300, 25),
    "nothing_produced": head(321) + tail("end_turn", 321, 0),
    "azure_filter_first": head() + [
        start_text(0), text_d(0, "Hi"), stop(0),
    ] + tail("end_turn", 100, 1),
    "empty_tool_calls_list": head() + [
        start_text(0), text_d(0, "plain"), text_d(0, " text"), stop(0),
    ] + tail("end_turn", 100, 3),
    "stop_sequence": head() + [
        start_text(0), text_d(0, "1, 2, 3"), stop(0),
    ] + tail("stop_sequence", 100, 2, seq="END"),
    "length_in_tool": head() + [
        start_tool(0, "call_1", "Write"), json_d(0, '{"content":"aaa'), stop(0),
    ] + tail("max_tokens", 10, 4096),
    "text_during_tool_args": head() + [
        start_tool(0, "call_1", "Read"), json_d(0, '{"file_path":'), json_d(0, '"a"}'), stop(0),
        start_text(1), text_d(1, "(thinking aloud) more"), stop(1),
    ] + tail("tool_use", 100, 10),
    "think_tags": head() + [
        start_thinking(0), think_d(0, "plan it"), sig_d(0), stop(0),
        start_text(1), text_d(1, "Answer"), text_d(1, " here."), stop(1),
    ] + tail("end_turn", 100, 9),
    # Text streams live; tools come at finalize with repaired JSON and restored names.
    "buffered_tools": head() + [
        start_text(0), text_d(0, "Reading."), stop(0),
        start_tool(1, "call_1", "Read"), json_d(1, '{"file_path":"a.py"}'), stop(1),
        start_tool(2, "call_2", "mcp__srv__very_long_name_of_a_tool"), json_d(2, '{"q":1}'), stop(2),
    ] + tail("tool_use", 100, 10),
    # ---- provider shapes
    # reasoning and reasoning_details carry the same text: shown once; encrypted details add nothing.
    "openrouter_reasoning": head() + [
        start_thinking(0), think_d(0, "Plan"), think_d(0, " it."), sig_d(0), stop(0),
        start_text(1), text_d(1, "Done."), stop(1),
    ] + tail("end_turn", 40, 9, cached=20),
    "openrouter_error_after_tool": head() + [
        start_tool(0, "call_1", "Read"), json_d(0, '{"file_path":"a"}'), stop(0),
        error("api_error", "upstream: Provider disconnected unexpectedly"),
    ],
    "ollama_error_string": head() + [
        start_text(0), text_d(0, "par"), stop(0),
        error("api_error", "upstream: an error was encountered while running the model: unexpected EOF"),
    ],
    # No usage: input from the estimate, output from 6 reasoning + 19 argument characters.
    "ollama_reasoning_no_usage": head() + [
        start_thinking(0), think_d(0, "Think."), sig_d(0), stop(0),
        start_tool(1, "call_o1", "Read"), json_d(1, '{"file_path":"a.py"}'), stop(1),
    ] + tail("tool_use", 100, 7),
    "gemini_no_index": head() + [
        start_tool(0, "function-call-1", "Read"), json_d(0, '{"p":"a"}'), stop(0),
        start_tool(1, "function-call-2", "Read"), json_d(1, '{"p":"b"}'), stop(1),
        start_tool(2, "function-call-3", "Glob"), json_d(2, '{"p":"c"}'), stop(2),
    ] + tail("tool_use", 80, 24),
    # An int stop_reason is a token id, not a stop string: end_turn.
    "vllm_reasoning_both_fields": head() + [
        start_thinking(0), think_d(0, "hm"), sig_d(0), stop(0),
        start_text(1), text_d(1, "4"), stop(1),
    ] + tail("end_turn", 20, 5),
    "usage_inside_choice": head() + [
        start_text(0), text_d(0, "hi"), stop(0),
    ] + tail("end_turn", 50, 2),
    # The double-encoded summary repeat is not appended: the client gets {"pattern":"x"}.
    "id_every_chunk_and_summary": head() + [
        start_tool(0, "call_s", "Grep"), json_d(0, '{"pat'), json_d(0, 'tern":"x"}'), stop(0),
    ] + tail("tool_use", 100, 4),
    "index0_whole_calls_distinct_ids": head() + [
        start_tool(0, "call_g1", "Read"), json_d(0, '{"file_path":"a"}'), stop(0),
        start_tool(1, "call_g2", "Read"), json_d(1, '{"file_path":"b"}'), stop(1),
    ] + tail("tool_use", 70, 30),
    "id_changes_after_first_fragment": head() + [
        start_tool(0, "call_first", "Bash"), json_d(0, '{"command":'), json_d(0, '"ls"}'), stop(0),
    ] + tail("tool_use", 100, 4),
    "llamacpp_tool_stream": head() + [
        start_tool(0, "sNa6Kq9Z0QvBwK4o", "Bash"), json_d(0, '{"command":"'), json_d(0, 'make test"}'), stop(0),
    ] + tail("tool_use", 900, 14),
    "lmstudio_think_tags_own_chunks": head() + [
        start_thinking(0), think_d(0, "\nweigh options\n"), sig_d(0), stop(0),
        start_text(1), text_d(1, "Answer."), stop(1),
    ] + tail("end_turn", 100, 10),
    # content_filter -> end_turn, the text so far kept.
    "azure_content_filter": head() + [
        start_text(0), text_d(0, "Part"), stop(0),
    ] + tail("end_turn", 25, 1),
    "deepseek_reasoning_cache": head() + [
        start_thinking(0), think_d(0, "Check."), sig_d(0), stop(0),
        start_text(1), text_d(1, "Yes."), stop(1),
    ] + tail("end_turn", 104, 8, cached=896),
    "multiline_data": head() + [
        start_text(0), text_d(0, "split"), stop(0),
    ] + tail("end_turn", 100, 2),
    "cr_line_ends_no_trailing_blank": head() + [
        start_text(0), text_d(0, "cr"), stop(0),
    ] + tail("end_turn", 100, 1),
}


# ---------------------------------------------------------------- grammar checker

_DELTA_FOR = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"},
              "tool_use": {"input_json_delta"}}


def check_grammar(events: list[dict]) -> None:
    """Assert the event list is something Claude Code's SDK accepts (PROTOCOL §3.1)."""
    assert events, "no events"
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["content"] == []
    next_index = 0
    open_block: dict | None = None
    open_type = ""
    acc = ""
    ended = False
    for pos, ev in enumerate(events[1:], 1):
        assert not ended, f"event after the terminal event: {ev}"
        et = ev["type"]
        assert et != "message_start", "second message_start"
        if et == "ping":
            continue
        if et == "content_block_start":
            assert open_block is None, f"start at {pos} while block {open_block} is open"
            assert ev["index"] == next_index, f"index {ev['index']} != expected {next_index}"
            block = ev["content_block"]
            open_type = block["type"]
            if open_type == "tool_use":
                assert block["input"] == {}, "tool input must travel in deltas"
                assert block["id"] and block["name"]
            elif open_type == "text":
                assert block["text"] == ""
            else:
                assert open_type == "thinking" and block["thinking"] == ""
            open_block = {"index": next_index}
            next_index += 1
            acc = ""
        elif et == "content_block_delta":
            assert open_block is not None and ev["index"] == open_block["index"], "delta for no open block"
            dt = ev["delta"]["type"]
            assert dt in _DELTA_FOR[open_type], f"{dt} in a {open_type} block"
            acc += ev["delta"].get("text") or ev["delta"].get("partial_json") or ""
        elif et == "content_block_stop":
            assert open_block is not None and ev["index"] == open_block["index"], "stop for no open block"
            if open_type == "text":
                assert acc.strip(), "empty or whitespace-only text block"
            open_block = None
        elif et == "message_delta":
            assert open_block is None, "message_delta with a block open"
            assert events[pos + 1:] == [{"type": "message_stop"}], "message_delta must be followed by message_stop only"
            d = ev["delta"]
            assert d["stop_reason"] in ("end_turn", "tool_use", "max_tokens", "stop_sequence")
            assert "stop_sequence" in d
            u = ev["usage"]
            for k in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
                assert isinstance(u[k], int) and u[k] >= 0
        elif et == "message_stop":
            ended = True
        elif et == "error":
            assert isinstance(ev["error"]["type"], str) and ev["error"]["message"]
            if open_block is not None:
                assert open_type == "tool_use", "only a half-built tool may stay unclosed on error"
            ended = True
        else:
            raise AssertionError(f"unknown event {et}")
    assert ended, "stream not terminated by message_stop or error"


# ---------------------------------------------------------------- tests

def test_every_fixture_has_an_expectation() -> None:
    assert set(EXPECTED) == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_exact_events(name: str) -> None:
    events = run(name)
    assert events == EXPECTED[name]
    check_grammar(events)
    # The wire form is one event per "event:" + "data:" pair, with the name equal to data.type.
    wire = encode_events(events).decode("utf-8")
    frames = wire.split("\n\n")
    assert frames[-1] == "" and len(frames) == len(events) + 1
    for frame, ev in zip(frames, events):
        name_line, data_line = frame.split("\n")
        assert name_line == "event: " + ev["type"]
        assert json.loads(data_line[len("data: "):]) == ev


def _split_cases(raw: bytes) -> list[list[bytes]]:
    cases = [[raw[:i], raw[i:]] for i in range(len(raw) + 1)]
    rng = random.Random(len(raw))  # seeded: reproducible
    for _ in range(20):
        pieces, pos = [], 0
        while pos < len(raw):
            n = rng.randint(1, 7)
            pieces.append(raw[pos:pos + n])
            pos += n
        cases.append(pieces)
    cases.append([raw[i:i + 1] for i in range(len(raw))])  # byte by byte
    return cases


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_split_anywhere_gives_same_events(name: str) -> None:
    fx = FIXTURES[name]
    whole = run_pieces([fx.raw], fx)
    for pieces in _split_cases(fx.raw):
        assert run_pieces(pieces, fx) == whole, [p for p in pieces]


def test_grammar_checker_rejects_broken_streams() -> None:
    good = EXPECTED["text_then_tool"]
    broken = [
        good[1:],                                              # no message_start first
        good[:2] + [start_text(1)] + good[3:],                 # index gap
        good[:3] + [json_d(0, "{}")] + good[4:],               # delta type != block type
        good[:5] + good[6:],                                   # missing stop before next start
        good[:-1],                                             # no message_stop
        good + [PING],                                         # event after message_stop
        head() + [start_text(0), text_d(0, " \n"), stop(0)] + tail("end_turn", 1, 1),  # ws-only text
        head() + [start_text(0), text_d(0, "x"), error("api_error", "boom")],  # open text at error
    ]
    for events in broken:
        with pytest.raises(AssertionError):
            check_grammar(events)


# ---- behaviour details beyond the fixtures

def feed_all(tr: StreamTranslator, chunks: list[dict]) -> list[dict]:
    events = tr.start()
    for c in chunks:
        events.extend(tr.feed(c))
    return events


def test_nothing_after_done_and_start_is_idempotent() -> None:
    tr = translator()
    events = feed_all(tr, [text("a"), chunk({}, finish="stop")]) + tr.finish()
    assert tr.done
    assert tr.start() == [] and tr.feed(text("late")) == [] and tr.finish() == []
    assert tr.fail({"type": "api_error", "message": "x"}) == []
    assert events[-1] == MSG_STOP


def test_feed_without_start_still_begins_with_message_start() -> None:
    tr = translator()
    events = tr.feed(text("hi"))
    assert events[:3] == head() + [start_text(0)]


def test_fail_closes_text_but_not_incomplete_tool_and_accepts_error_forms() -> None:
    tr = translator()
    feed_all(tr, [text("hello")])
    assert tr.fail(ProxyError(504, "timeout_error", "upstream read timeout")) == [
        stop(0), error("timeout_error", "upstream read timeout")]
    assert tr.done

    tr = translator()
    feed_all(tr, [tools(tc(0, "call_1", "Read", '{"a":'))])
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert tr.fail(body) == [error("overloaded_error", "busy")]

    tr = translator()
    feed_all(tr, [tools(tc(0, "call_1", "Read", '{"a":1}'))])
    assert tr.fail({"type": "api_error", "message": "reset"}) == [stop(0), error("api_error", "reset")]


def test_finish_reason_error_without_error_object_is_an_error() -> None:
    tr = translator()
    events = feed_all(tr, [text("x"), chunk({}, finish="error")])
    assert events[-2:] == [stop(0), error("api_error", 'upstream: upstream reported finish_reason "error"')]
    assert tr.done and tr.finish() == []


def test_provider_name_prefixes_mid_stream_errors() -> None:
    tr = StreamTranslator(make_ctx(), make_caps(), MSG_ID, provider="openrouter")
    events = feed_all(tr, [{"error": {"message": "Internal error", "code": 500}}])
    assert events[-1] == error("api_error", "openrouter: Internal error")


def test_usage_and_output_chars_exposed() -> None:
    tr = translator()
    feed_all(tr, [text("abcdefgh"), chunk({}, finish="stop")])
    tr.finish()
    assert tr.output_chars == 8
    assert tr.usage == {"input_tokens": 100, "output_tokens": 2,
                        "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def test_deepseek_cache_hit_usage() -> None:
    tr = translator()
    feed_all(tr, [text("x"), chunk({}, finish="stop",
                                   usage={"prompt_tokens": 500, "completion_tokens": 3,
                                          "prompt_cache_hit_tokens": 400})])
    assert tr.finish()[-2] == msg_delta("end_turn", 100, 3, cached=400)


def test_random_ids_when_upstream_gives_none() -> None:
    tr = StreamTranslator(make_ctx(), make_caps())
    events = feed_all(tr, [tools(tc(0, None, "Read", '{"a":1}')),
                           tools(tc(1, "bad id!", "Read", '{"a":2}')),
                           tools(tc(2, "dup", "Read", "{}")), tools(tc(3, "dup", "Read", "{}")),
                           chunk({}, finish="tool_calls")]) + tr.finish()
    assert events[0]["message"]["id"].startswith("msg_") and len(events[0]["message"]["id"]) == 28
    ids = [e["content_block"]["id"] for e in events if e["type"] == "content_block_start"]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert ids[0].startswith("toolu_") and ids[1].startswith("toolu_")
    assert ids[2] == "dup" and ids[3].startswith("toolu_")
    check_grammar(events)


def test_name_arriving_after_id_is_merged_and_restored() -> None:
    tr = StreamTranslator(make_ctx(name_map={"short_1": "mcp__very__long"}), make_caps(), MSG_ID)
    events = feed_all(tr, [tools(tc(0, "call_1", None, "")),
                           tools(tc(0, None, "short_1", '{"x":')),
                           tools(tc(0, None, None, "1}")),
                           chunk({}, finish="tool_calls")]) + tr.finish()
    assert events[2:5] == [start_tool(0, "call_1", "mcp__very__long"), json_d(0, '{"x":'), json_d(0, "1}")]
    check_grammar(events)


def test_reasoning_details_and_refusal() -> None:
    tr = StreamTranslator(make_ctx(show_thinking=True), make_caps(), MSG_ID)
    events = feed_all(tr, [chunk({"reasoning_details": [{"type": "reasoning.text", "text": "a"},
                                                        {"type": "reasoning.text", "text": "b"}]}),
                           chunk({"content": None, "refusal": "I can't help with that."}),
                           chunk({}, finish="content_filter")]) + tr.finish()
    assert events[2:8] == [start_thinking(0), think_d(0, "ab"), sig_d(0), stop(0),
                           start_text(1), text_d(1, "I can't help with that.")]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_content_as_list_of_parts_and_message_instead_of_delta() -> None:
    tr = translator()
    events = feed_all(tr, [{"choices": [{"index": 0, "message": {"content": [
        {"type": "text", "text": "one "}, {"type": "text", "text": "two"}]}, "finish_reason": "stop"}]}])
    assert events[2:4] == [start_text(0), text_d(0, "one two")]


def test_only_choice_index_zero_is_used() -> None:
    tr = translator()
    events = feed_all(tr, [{"choices": [{"index": 1, "delta": {"content": "other"}},
                                        {"index": 0, "delta": {"content": "mine"}}]},
                           {"choices": [{"index": 1, "delta": {"content": "only other"}}]}])
    assert events[2:] == [start_text(0), text_d(0, "mine")]


def test_whitespace_between_text_chunks_is_kept_and_leading_ws_joins_text() -> None:
    tr = StreamTranslator(make_ctx(show_thinking=True), make_caps(), MSG_ID)
    events = feed_all(tr, [chunk({"reasoning_content": "r"}), text("\n\n"), text("Hi"), text("  "),
                           text("there")])
    assert events[2:] == [start_thinking(0), think_d(0, "r"), sig_d(0), stop(0),
                          start_text(1), text_d(1, "\n\nHi"), text_d(1, "  "), text_d(1, "there")]


def test_legacy_function_call_delta() -> None:
    tr = translator()
    events = feed_all(tr, [chunk({"function_call": {"name": "Read", "arguments": '{"a":'}}),
                           chunk({"function_call": {"arguments": "1}"}}),
                           chunk({}, finish="function_call")]) + tr.finish()
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert len(starts) == 1 and starts[0]["content_block"]["name"] == "Read"
    assert accumulate(events)["content"][0]["input"] == {"a": 1}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_three_interleaved_calls_keep_first_seen_order() -> None:
    tr = translator()
    events = feed_all(tr, [tools(tc(0, "c0", "A", "")), tools(tc(1, "c1", "B", "")),
                           tools(tc(2, "c2", "C", "")), tools(tc(2, args='{"z":3}')),
                           tools(tc(1, args='{"y":2}')), tools(tc(0, args='{"x":1}')),
                           chunk({}, finish="tool_calls")]) + tr.finish()
    check_grammar(events)
    msg = accumulate(events)
    assert [(b["id"], b["input"]) for b in msg["content"]] == [
        ("c0", {"x": 1}), ("c1", {"y": 2}), ("c2", {"z": 3})]


def test_truncated_without_finish_but_complete_tool_finalizes() -> None:
    tr = translator()
    events = feed_all(tr, [tools(tc(0, "c0", "A", '{"x":1}'))]) + tr.finish()
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    check_grammar(events)


def test_live_tool_with_incomplete_args_at_eof_is_an_error() -> None:
    tr = translator()
    events = feed_all(tr, [tools(tc(0, "c0", "A", '{"x":1}')), text("t"),
                           tools(tc(1, "c1", "B", '{"y"'))]) + tr.finish()
    assert events[-2:] == [json_d(2, '{"y"'), error("api_error", "upstream: upstream stream ended unexpectedly")]
    assert tr.done and stop(2) not in events


def test_buffered_tool_with_incomplete_args_at_eof_is_an_error_without_a_block() -> None:
    tr = StreamTranslator(make_ctx(), make_caps(buffer_tool_args=True), MSG_ID)
    events = feed_all(tr, [text("ok"), tools(tc(0, "c0", "A", '{"x":'))]) + tr.finish()
    assert events[2:] == [start_text(0), text_d(0, "ok"), stop(0),
                          error("api_error", "upstream: upstream stream ended unexpectedly")]


def test_think_tags_without_show_thinking_drops_reasoning() -> None:
    tr = StreamTranslator(make_ctx(show_thinking=False), make_caps(think_tags=True), MSG_ID)
    events = feed_all(tr, [text("<think>secret</think>"), text("Visible")]) + tr.finish()
    assert events[2:5] == [start_text(0), text_d(0, "Visible"), stop(0)]


def test_think_tags_content_without_tag_and_prefix_at_eof() -> None:
    tr = StreamTranslator(make_ctx(), make_caps(think_tags=True), MSG_ID)
    assert feed_all(tr, [text("<b>bold</b>")])[2:] == [start_text(0), text_d(0, "<b>bold</b>")]
    tr = StreamTranslator(make_ctx(), make_caps(think_tags=True), MSG_ID)
    events = feed_all(tr, [text("<th")]) + tr.finish()
    assert events[2:5] == [start_text(0), text_d(0, "<th"), stop(0)]


def test_unclosed_think_tag_at_eof_flushes_held_back_tail_as_thinking() -> None:
    tr = StreamTranslator(make_ctx(show_thinking=True), make_caps(think_tags=True), MSG_ID)
    events = feed_all(tr, [text("<think>abc</thi")]) + tr.finish()
    assert events[2:7] == [start_thinking(0), think_d(0, "abc"), think_d(0, "</thi"), sig_d(0), stop(0)]


def test_text_delta_hot_path_builds_one_event() -> None:
    tr = translator()
    feed_all(tr, [text("a")])
    assert tr.feed(text("b")) == [text_d(0, "b")]
    assert tr.feed(chunk({"content": ""})) == []
    assert tr.feed(chunk(usage=usage(1, 1))) == []


# ---- agreement with the non-streaming translator

NON_STREAMING = {
    "text_only": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "Hello wörld 日本 🎉"}}], "usage": usage(30, 5)},
    "tool_fragmented": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
        "tool_calls": [{"id": "call_7", "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path":"b.py"}'}}]}}],
        "usage": usage(2100, 19, cached=1024)},
    "parallel_interleaved": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"a.py"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "Grep", "arguments": '{"pattern":"TODO"}'}}]}}],
        "usage": usage(100, 20)},
    "text_then_tool": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
        "content": "Let me read the file.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path":"x.py"}'}}]}}],
        "usage": usage(50, 12)},
    "reasoning_text_tool": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
        "reasoning_content": "Need the file.", "content": "Reading.",
        "tool_calls": [{"id": "call_7", "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path":"b.py"}'}}]}}],
        "usage": usage(40, 30)},
    "openrouter_reasoning": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Done.",
        "reasoning": "Plan it.", "reasoning_details": [{"type": "reasoning.text", "text": "Plan it."},
                                                       {"type": "reasoning.encrypted", "data": "gAAAA"}]}}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 20}}},
    "gemini_no_index": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "tool_calls": [
            {"id": "function-call-1", "type": "function", "function": {"name": "Read", "arguments": '{"p":"a"}'}},
            {"id": "function-call-2", "type": "function", "function": {"name": "Read", "arguments": '{"p":"b"}'}},
            {"id": "function-call-3", "type": "function", "function": {"name": "Glob", "arguments": '{"p":"c"}'}}]}}],
        "usage": usage(80, 24)},
    "deepseek_reasoning_cache": {"id": ID, "object": "chat.completion", "model": "gpt-4.1", "choices": [{
        "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Yes.",
        "reasoning_content": "Check."}}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 8, "prompt_cache_hit_tokens": 896,
                  "prompt_cache_miss_tokens": 104}},
}


def _translate_response():
    try:
        from clasp.translate.response import translate_response
    except ImportError:
        return None
    return translate_response


@pytest.mark.parametrize("name", sorted(NON_STREAMING))
def test_streamed_message_equals_non_streaming_translation(name: str) -> None:
    translate_response = _translate_response()
    if translate_response is None:
        pytest.skip("clasp/translate/response.py (translate_response) does not exist yet")
    fx = FIXTURES[name]
    streamed = accumulate(run_pieces([fx.raw], fx))
    expected = translate_response(NON_STREAMING[name], make_ctx(**fx.ctx), make_caps(**fx.caps))
    # one id scheme both ways: new msg_ + 24 base62 characters, never the upstream's id
    assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", expected.pop("id")) and ID not in streamed.pop("id")
    assert streamed == expected


def test_finish_reason_and_usage_visible_for_early_finalize() -> None:
    tr = translator()
    feed_all(tr, [text("x")])
    assert tr.finish_reason is None and not tr.has_upstream_usage
    tr.feed(chunk({}, finish="stop"))
    assert tr.finish_reason == "stop" and not tr.has_upstream_usage
    tr.feed(chunk(usage=usage(5, 1)))
    assert tr.has_upstream_usage


def test_events_from_message_rebuild_the_message() -> None:
    from clasp.translate.response import translate_response
    from clasp.translate.stream import events_from_message
    upstream = {"id": "chatcmpl-x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "reasoning_content": "think", "content": "Reading.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"p": 1}'}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3}}
    message = translate_response(upstream, make_ctx(show_thinking=True), make_caps())
    tr = translator()
    events = tr.start() + events_from_message(message)
    check_grammar(events)
    rebuilt = accumulate(events)
    assert rebuilt["content"] == message["content"]
    assert rebuilt["stop_reason"] == "tool_use"


def test_streamed_call_without_a_name_is_dropped_like_the_non_streaming_path() -> None:
    # A nameless tool_use is useless to the client ("No such tool"); non-streaming drops it too.
    tr = translator()
    events = feed_all(tr, [tools(tc(0, "call_1", None, '{"a":1}')),
                           tools(tc(1, "call_2", "Read", '{"file_path":"x"}')),
                           chunk({}, finish="tool_calls")]) + tr.finish()
    check_grammar(events)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("call_2", "Read")]
    assert accumulate(events)["content"][0]["input"] == {"file_path": "x"}


def test_second_json_object_on_a_complete_call_is_not_appended() -> None:
    # A nameless, id-less whole call reusing index 0 (or a repeated summary) after complete
    # arguments: appending it would give the client '{"a":1}{"b":2}', which is not JSON.
    tr = translator()
    events = feed_all(tr, [tools(tc(0, "call_1", "A", '{"a":1}')),
                           tools(tc(0, None, None, ' {"b":2}')),
                           chunk({}, finish="tool_calls")]) + tr.finish()
    check_grammar(events)
    assert accumulate(events)["content"] == [{"type": "tool_use", "id": "call_1", "name": "A", "input": {"a": 1}}]


def test_braces_inside_string_arguments_still_stream() -> None:
    # The guard above must not eat ordinary pieces that follow a "}" inside a string value.
    tr = translator()
    events = feed_all(tr, [tools(tc(0, "call_1", "Write", '{"content":"int f() {}')),
                           tools(tc(0, args='"}')),
                           chunk({}, finish="tool_calls")]) + tr.finish()
    assert accumulate(events)["content"][0]["input"] == {"content": "int f() {}"}


def test_streamed_length_short_of_the_limit_is_the_context_window() -> None:
    tr = StreamTranslator(make_ctx(max_tokens=128000), make_caps(), MSG_ID)
    events = feed_all(tr, [text("partial"), chunk({}, finish="length"), chunk(usage=usage(8000, 191))])
    events += tr.finish()
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "model_context_window_exceeded"
    assert delta["usage"]["output_tokens"] == 191
    tr = StreamTranslator(make_ctx(max_tokens=191), make_caps(), MSG_ID)
    events = feed_all(tr, [text("partial"), chunk({}, finish="length"), chunk(usage=usage(8000, 191))])
    events += tr.finish()
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "max_tokens"
