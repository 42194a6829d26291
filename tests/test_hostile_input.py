"""Hostile input at both edges of the proxy (issue 12, items 2-4 and 10).

Client side: lone surrogates, deep nesting, NaN/Infinity and malformed fields are a 400
invalid_request_error naming the field, on /v1/messages and count_tokens alike; the upstream
never sees the request; /metrics keeps answering.
Upstream side: deeply nested bodies and stream chunks give a 502 or an `event: error` with a
cleanly finished stream; lone surrogates and NaN in replies still give valid UTF-8 JSON
(U+FFFD / null), streamed or not.
"""

from __future__ import annotations

import json
import logging

import pytest

from clasp.translate.jsontext import (MAX_NESTING, deep_path, has_lone_surrogate_escape, json_utf8,
                                      nesting_exceeds, utf8)
from harness import Proxy, Reply, completion, json_reply, parse_sse, sse_reply, text_chunks

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
TOOL = {"name": "Read", "description": "read a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}


@pytest.fixture
def proxy(lt, upstream):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-max-retries", "0"],
              {"CUSTOM_BASE_URL": upstream.url})
    yield p
    p.stop()


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if the proxy logged an error or a traceback (a 500 does)."""
    caplog.set_level(logging.WARNING)
    yield caplog
    bad = [r for r in caplog.records
           if r.exc_info or (r.levelno >= logging.ERROR and r.name.startswith(("clasp", "asyncio")))]
    assert not bad, "\n".join(f"{r.name}: {r.getMessage()}" for r in bad)


def with_fields(text_fields: str, base: dict = HELLO) -> bytes:
    """HELLO (or `base`) as JSON text with raw JSON `text_fields` ('"k":<raw json>,...') added."""
    return (json.dumps(base)[:-1] + "," + text_fields + "}").encode()


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def assert_rejected(proxy, upstream, body: bytes, *needles: str, path: str = MESSAGES) -> str:
    before = len(upstream.requests)
    status, _, raw = proxy.request("POST", path, body)
    assert status == 400, raw[:300]
    err = json.loads(raw.decode("utf-8"))
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
    message = err["error"]["message"]
    for needle in needles:
        assert needle in message, message
    assert len(upstream.requests) == before, "a rejected request must never reach the upstream"
    return message


def assert_metrics_answer(proxy) -> None:
    status, _, raw = proxy.request("GET", "/metrics")
    assert status == 200
    json.loads(raw.decode("utf-8"))
    status, _, raw = proxy.request("GET", "/metrics/prometheus")
    assert status == 200
    raw.decode("utf-8")


def strict_json(raw: bytes):
    """Parse as the client would, refusing what is not JSON (NaN) or not UTF-8."""
    def no_constant(name):
        raise AssertionError(f"{name} in output")
    return json.loads(raw.decode("utf-8"), parse_constant=no_constant)


# ---------------------------------------------------------------------------------------------
# client: lone surrogates (items 2, 3)

def test_lone_surrogate_in_model_is_a_400_and_metrics_keep_answering(proxy, upstream, no_tracebacks):
    body = b'{"model":"claude-\\udc00","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'
    for path in (MESSAGES, COUNT):
        message = assert_rejected(proxy, upstream, body, "model", "lone surrogate", path=path)
        assert "\\udc00" in message
    assert_metrics_answer(proxy)
    assert proxy.post(HELLO)[0] == 200
    assert_metrics_answer(proxy)


@pytest.mark.parametrize("fields,where", [
    ('"system":"a\\ud800b"', "system"),
    ('"system":[{"type":"text","text":"x\\uDBFF"}]', "system.0.text"),
    ('"metadata":{"user_id":"\\udc00\\ud800"}', "metadata.user_id"),
    ('"metadata":{"a\\ud800":1}', "metadata.a"),
    ('"stop_sequences":["ok","\\ud800\\ud800\\udc00"]', "stop_sequences.1"),
])
def test_lone_surrogate_anywhere_is_a_400_naming_where(proxy, upstream, no_tracebacks, fields, where):
    for path in (MESSAGES, COUNT):
        assert_rejected(proxy, upstream, with_fields(fields), where, "lone surrogate", path=path)


def test_lone_surrogate_in_content_is_rejected_before_the_upstream_is_billed(proxy, upstream, no_tracebacks):
    body = (b'{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"a\\ud800b"}]}')
    assert_rejected(proxy, upstream, body, "messages.0.content", "lone surrogate")
    body = (b'{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[{"role":"user",'
            b'"content":[{"type":"text","text":"\\\\\\\\ud800\\udc00"}]}]}')  # "\\" then text, then a lone low
    assert_rejected(proxy, upstream, body, "messages.0.content.0.text", "lone surrogate")
    assert_metrics_answer(proxy)


def test_bytes_that_are_not_utf8_are_a_400(proxy, upstream, no_tracebacks):
    text = json.dumps(HELLO)
    for body in (text.replace("Hi", "\udcff").encode("utf-8", "surrogatepass"),   # an encoded surrogate
                 text.replace("Hi", "caf\xe9").encode("latin-1"),
                 text.encode("utf-16")):
        assert_rejected(proxy, upstream, body, "UTF-8")


def test_surrogate_pairs_and_escaped_backslashes_are_fine(proxy, upstream):
    body = (b'{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user",'
            b'"content":"\\ud83d\\ude00 \\uD83D\\uDE00 \\\\ud800 \\\\\\\\\\ud83d\\ude00"}]}')
    status, _, msg = proxy.post(body)
    assert status == 200, msg
    assert upstream.requests[-1].json()["messages"][-1]["content"] == "\U0001F600 \U0001F600 \\ud800 \\\\\U0001F600"
    assert proxy.post(b"\xef\xbb\xbf" + json.dumps(HELLO).encode())[0] == 200  # a UTF-8 BOM is tolerated


# ---------------------------------------------------------------------------------------------
# client: deep nesting (item 4)

@pytest.mark.parametrize("depth", [MAX_NESTING + 20, 977, 5000])
@pytest.mark.parametrize("fields", [
    '"x":{N}',                                                     # unknown field
    '"metadata":{{"user_id":{N}}}',
    '"tools":[{{"name":"T","input_schema":{{"type":"object","properties":{{"p":{N}}}}}}}]',
    '"system":[{{"type":"text","text":"s","cache_control":{N}}}]',
])
def test_deep_nesting_is_a_400_naming_the_limit(proxy, upstream, no_tracebacks, fields, depth):
    body = with_fields(fields.format(N=nested(depth)))
    for path in (MESSAGES, COUNT):
        assert_rejected(proxy, upstream, body, "nested", str(MAX_NESTING), path=path)
    assert_metrics_answer(proxy)


@pytest.mark.parametrize("depth", [MAX_NESTING + 20, 977, 5000])
def test_deep_tool_input_in_history_is_a_400(proxy, upstream, no_tracebacks, depth):
    text = ('{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"go"},'
            '{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Read","input":{"a":'
            + nested(depth) + '}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1",'
            '"content":"ok"}]}]}')
    for path in (MESSAGES, COUNT):
        message = assert_rejected(proxy, upstream, text.encode(), "nested", path=path)
        if depth < 900:  # parsed, then measured: the message names where
            assert message.startswith("messages.1.content.0.input.a.0"), message


def test_nesting_up_to_the_limit_is_accepted(proxy, upstream):
    # body(1) > messages(2) > message(3) > content(4) > block(5) > input(6) > lists(7...) > {}(128)
    inner = nested(MAX_NESTING - 7, "{}")
    text = ('{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"go"},'
            '{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Read","input":{"a":'
            + inner + '}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1",'
            '"content":"ok"}]}]}')
    status, _, msg = proxy.post(text.encode())
    assert status == 200, msg
    assert json.loads(upstream.requests[-1].json()["messages"][1]["tool_calls"][0]["function"]["arguments"]) \
        == json.loads('{"a":' + inner + '}')


# ---------------------------------------------------------------------------------------------
# client: NaN / Infinity and malformed fields (item 10)

@pytest.mark.parametrize("fields,needle", [
    ('"temperature":NaN', "NaN"),
    ('"top_p":Infinity', "Infinity"),
    ('"temperature":-Infinity', "-Infinity"),
    ('"temperature":1e999', "out of range"),
    ('"metadata":{"x":[NaN]}', "NaN"),
    ('"tools":[{"name":"T","input_schema":{"type":"object","properties":{"n":{"type":"number",'
     '"maximum":Infinity}}}}]', "Infinity"),
])
def test_non_finite_numbers_are_a_400(proxy, upstream, no_tracebacks, fields, needle):
    for path in (MESSAGES, COUNT):
        assert_rejected(proxy, upstream, with_fields(fields), needle, "not valid JSON", path=path)


def test_non_finite_tool_input_is_never_sent_upstream(proxy, upstream, no_tracebacks):
    text = ('{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"go"},'
            '{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Read","input":{"n":NaN}}]},'
            '{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]}]}')
    assert_rejected(proxy, upstream, text.encode(), "NaN")


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def with_user_blocks(*blocks) -> dict:
    return {**HELLO, "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "see"}]}]}


def tool_result_with(*blocks) -> dict:
    return {**HELLO, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": list(blocks)}]}]}


def image(**source) -> dict:
    return {"type": "image", "source": source}


INVALID_FIELDS = {
    "input_schema not an object": ({**HELLO, "tools": [{"name": "T", "input_schema": "object"}]},
                                   "tools.0.input_schema"),
    "input_schema null": ({**HELLO, "tools": [TOOL, {"name": "T", "input_schema": None}]}, "tools.1.input_schema"),
    "tool_choice a string": ({**HELLO, "tools": [TOOL], "tool_choice": "auto"}, "tool_choice: must be an object"),
    "tool_choice without type": ({**HELLO, "tools": [TOOL], "tool_choice": {}}, "tool_choice.type"),
    "tool_choice bad type, no tools": ({**HELLO, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    "tool_choice tool without name": ({**HELLO, "tools": [TOOL], "tool_choice": {"type": "tool"}},
                                      "tool_choice.name"),
    "tool_choice parallel not bool": ({**HELLO, "tools": [TOOL],
                                       "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
                                      "tool_choice.disable_parallel_tool_use"),
    "image bad base64": (with_user_blocks(image(type="base64", media_type="image/png", data="not base64!")),
                         "messages.0.content.0.source.data"),
    "image base64 bad length": (with_user_blocks(image(type="base64", media_type="image/png", data="iVBORw0")),
                                "messages.0.content.0.source.data"),
    "image base64 not a string": (with_user_blocks(image(type="base64", media_type="image/png", data=7)),
                                  "messages.0.content.0.source.data"),
    "image media type": (with_user_blocks(image(type="base64", media_type="text/html", data="PGI+")),
                         "messages.0.content.0.source.media_type"),
    "image file url": (with_user_blocks(IMAGE, image(type="url", url="file:///etc/passwd")),
                       "messages.0.content.1.source.url"),
    "image data url not base64": (with_user_blocks(image(type="url", url="data:image/png;base64,@@@@")),
                                  "messages.0.content.0.source.url"),
    "image source not an object": (with_user_blocks({"type": "image", "source": "x.png"}),
                                   "messages.0.content.0.source"),
    "image in tool_result": (tool_result_with({"type": "text", "text": "shot"},
                                              image(type="base64", media_type="image/png", data="%%%%")),
                             "messages.2.content.0.content.1.source.data"),
    "document bad base64": (with_user_blocks({"type": "document", "source": {"type": "base64",
                                              "media_type": "application/pdf", "data": "JVBERi0=\n"}}),
                            "messages.0.content.0.source.data"),
    "stream a string": ({**HELLO, "stream": "true"}, "stream: must be a boolean"),
    "stream a number": ({**HELLO, "stream": 1}, "stream: must be a boolean"),
    "thinking a string": ({**HELLO, "thinking": "on"}, "thinking: must be an object"),
    "thinking bad type": ({**HELLO, "thinking": {"type": "on"}}, "thinking.type"),
    "thinking budget a string": ({**HELLO, "thinking": {"type": "enabled", "budget_tokens": "lots"}},
                                 "thinking.budget_tokens"),
    "thinking budget too small": ({**HELLO, "thinking": {"type": "enabled", "budget_tokens": 10}},
                                  "thinking.budget_tokens"),
    "max_tokens absurd": ({**HELLO, "max_tokens": 10 ** 15}, "max_tokens"),
    "max_tokens zero": ({**HELLO, "max_tokens": 0}, "max_tokens"),
    "max_tokens float": ({**HELLO, "max_tokens": 100.5}, "max_tokens"),
    "10k stop sequences": ({**HELLO, "stop_sequences": ["x"] * 10_000}, "stop_sequences"),
}


@pytest.mark.parametrize("name", INVALID_FIELDS)
def test_invalid_fields_are_a_400_naming_the_field(proxy, upstream, no_tracebacks, name):
    body, needle = INVALID_FIELDS[name]
    assert_rejected(proxy, upstream, json.dumps(body).encode(), needle)
    # count_tokens rejects the same body (max_tokens and stream are checked when present)
    assert_rejected(proxy, upstream, json.dumps(body).encode(), needle, path=COUNT)


def test_valid_images_and_options_still_pass(proxy, upstream):
    body = {**with_user_blocks(IMAGE, image(type="url", url="https://example.com/a.png"),
                               image(type="url", url="data:image/gif;base64,R0lGODlh"),
                               image(type="file", file_id="file_1")),
            "stream": False, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
            "stop_sequences": ["a"] * 100, "max_tokens": 128000}
    status, _, msg = proxy.post(body)
    assert status == 200, msg
    parts = upstream.requests[-1].json()["messages"][-1]["content"]
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == [
        "data:image/png;base64,iVBORw0KGgo=", "https://example.com/a.png", "data:image/gif;base64,R0lGODlh"]
    status, _, raw = proxy.request("POST", COUNT, body)
    assert status == 200 and json.loads(raw)["input_tokens"] > 0


# ---------------------------------------------------------------------------------------------
# upstream: deep nesting (item 4)

DEEP = nested(5000).encode()


@pytest.mark.parametrize("body", [
    b'{"choices":' + DEEP + b'}',
    b'{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi","extra":'
    + nested(MAX_NESTING + 20).encode() + b'}}]}',
    DEEP,
], ids=["choices", "extra-field", "bare-list"])
@pytest.mark.parametrize("stream", [False, True])
def test_deeply_nested_upstream_body_is_a_502(proxy, upstream, no_tracebacks, body, stream):
    upstream.script = lambda seen: Reply(200, [("content-type", "application/json")], body)
    status, _, err = proxy.post({**HELLO, "stream": stream})
    assert status == 502 and err["error"]["type"] == "api_error", err
    assert_metrics_answer(proxy)


def test_deeply_nested_tool_arguments_from_upstream_never_500(proxy, upstream, no_tracebacks):
    calls = [{"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": nested(5000)}}]
    upstream.script = lambda seen: json_reply(completion(None, tool_calls=calls, finish="tool_calls"))
    status, _, msg = proxy.post({**HELLO, "tools": [TOOL]})
    assert status == 200, msg
    assert msg["content"][0]["type"] == "tool_use" and msg["content"][0]["input"] == {}  # unparseable


def test_deeply_nested_upstream_error_body_is_mapped(proxy, upstream, no_tracebacks):
    upstream.script = lambda seen: Reply(400, [("content-type", "application/json")], b'{"error":' + DEEP + b'}')
    status, _, err = proxy.post(HELLO)
    assert status == 400 and err["error"]["type"] == "invalid_request_error", err


@pytest.mark.parametrize("deep_first", [False, True])
def test_deeply_nested_stream_chunk_ends_with_an_error_event(proxy, upstream, no_tracebacks, deep_first):
    chunks = text_chunks(["Hel", "lo"])
    # too deep for json.loads on every Python (3.13 parses 5000 levels; see the next test)
    deep = 'data: {"choices":' + nested(100_000) + "}\n\n"
    chunks = [deep, *chunks] if deep_first else [*chunks[:2], deep, *chunks[2:]]
    upstream.script = lambda seen: sse_reply(chunks)
    # Proxy.request reads the whole chunked body: a broken framing raises IncompleteRead here
    status, headers, events = proxy.post({**HELLO, "stream": True})
    assert status == 200
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "error", names
    assert events[-1][1]["error"]["type"] == "api_error" and "nested" in events[-1][1]["error"]["message"]
    assert "message_stop" not in names
    if not deep_first:
        assert [d["delta"]["text"] for n, d in events if n == "content_block_delta"] == ["Hel"]
        assert names.index("content_block_stop") < names.index("error")
    upstream.script = lambda seen: json_reply(completion())
    assert proxy.post(HELLO)[0] == 200
    assert_metrics_answer(proxy)


@pytest.mark.parametrize("chunk", ['{"choices":' + nested(5000) + '}',
                                   '{"choices":[{"index":0,"delta":{"content":' + nested(5000) + '}}]}',
                                   '{"error":{"message":' + nested(5000) + '}}'],
                         ids=["choices", "content", "error"])
def test_stream_chunk_nested_5000_deep_never_breaks_the_stream(proxy, upstream, no_tracebacks, chunk):
    upstream.script = lambda seen: sse_reply([*text_chunks(["a"])[:2], "data: " + chunk + "\n\n",
                                              *text_chunks(["b"])[1:]])
    status, _, events = proxy.post({**HELLO, "stream": True})   # complete chunked framing
    assert status == 200
    assert [n for n, _ in events][-1] in ("message_stop", "error")


def test_deeply_nested_streamed_tool_arguments_end_cleanly(proxy, upstream, no_tracebacks):
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                                  "function": {"name": "Read", "arguments": ""}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                                                                  "function": {"arguments": nested(5000)}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    upstream.script = lambda seen: sse_reply(chunks)
    status, _, events = proxy.post({**HELLO, "stream": True, "tools": [TOOL]})
    assert status == 200
    assert [n for n, _ in events][-1] in ("message_stop", "error")


# ---------------------------------------------------------------------------------------------
# upstream: lone surrogates and NaN in replies (item 3)

LONE_REPLY = (b'{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"a\\ud800b",'
              b'"tool_calls":[{"id":"call_1","type":"function","function":{"name":"Read",'
              b'"arguments":"{\\"file_path\\": \\"x\\\\udc00\\", \\"n\\": NaN}"}}]},"finish_reason":"tool_calls"}],'
              b'"usage":{"prompt_tokens":5,"completion_tokens":NaN}}')


@pytest.mark.parametrize("stream", [False, True])
def test_lone_surrogate_and_nan_in_a_whole_reply_give_valid_json(proxy, upstream, no_tracebacks, stream):
    upstream.script = lambda seen: Reply(200, [("content-type", "application/json")], LONE_REPLY)
    status, _, raw = proxy.request("POST", MESSAGES, {**HELLO, "tools": [TOOL], "stream": stream})
    assert status == 200, raw
    if stream:
        events = [(line.split(b"\n")[0], strict_json(line.split(b"\n")[1][len(b"data: "):]))
                  for line in raw.split(b"\n\n") if line]
        text = "".join(d["delta"].get("text", "") for _, d in events if d["type"] == "content_block_delta")
        args = "".join(d["delta"].get("partial_json", "") for _, d in events if d["type"] == "content_block_delta")
        assert text == "a\ufffdb"
        assert strict_json(args.encode()) == {"file_path": "x\ufffd", "n": None}
    else:
        msg = strict_json(raw)
        assert msg["content"][0] == {"type": "text", "text": "a\ufffdb"}
        assert msg["content"][1]["input"] == {"file_path": "x\ufffd", "n": None}
    # the client can send the reply back as history: it is accepted
    assert proxy.post({**HELLO, "messages": [{"role": "user", "content": "x"},
                                             {"role": "assistant", "content": "a\ufffdb"},
                                             {"role": "user", "content": "y"}]})[0] == 200


def test_lone_surrogates_in_a_stream_become_replacement_characters(proxy, upstream, no_tracebacks):
    chunks = ['data: {"choices":[{"index":0,"delta":{"content":"x\\udc00y"}}]}\n\n',
              'data: {"choices":[{"index":0,"delta":{"reasoning_content":"r\\ud800"}}]}\n\n',
              *text_chunks(["!"])]
    upstream.script = lambda seen: sse_reply(chunks)
    status, _, raw = proxy.request("POST", MESSAGES, {**HELLO, "stream": True,
                                                      "thinking": {"type": "adaptive"}})
    assert status == 200
    raw.decode("utf-8")
    events = parse_sse(raw)
    assert "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta") == "x\ufffdy!"
    assert "".join(d["delta"].get("thinking", "") for n, d in events if n == "content_block_delta") == "r\ufffd"


def test_upstream_error_message_with_lone_surrogate_encodes(proxy, upstream, no_tracebacks):
    upstream.script = lambda seen: Reply(400, [("content-type", "application/json")],
                                         b'{"error":{"message":"bad \\ud800 input","type":"invalid_request_error"}}')
    status, _, raw = proxy.request("POST", MESSAGES, HELLO)
    assert status == 400
    assert strict_json(raw)["error"]["message"].endswith("bad \ufffd input")
    assert_metrics_answer(proxy)


def test_encoded_surrogate_bytes_from_upstream_give_valid_utf8(proxy, upstream, no_tracebacks):
    body = json.dumps(completion("ok \udcff"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    upstream.script = lambda seen: Reply(200, [("content-type", "application/json")], body)
    status, _, raw = proxy.request("POST", MESSAGES, HELLO)
    assert status == 200 and strict_json(raw)["content"][0]["text"] == "ok \ufffd"


# ---------------------------------------------------------------------------------------------
# jsontext units

@pytest.mark.parametrize("text,lone", [
    ('"plain"', False),
    ('"\\ud83d\\ude00"', False),
    ('"\\uD83D\\uDE00\\u00e9"', False),
    ('"\\\\ud800"', False),                  # escaped backslash, then text
    ('"\\\\\\\\ud800"', False),
    ('"\\ud800"', True),
    ('"\\ud800x"', True),
    ('"\\udc00"', True),
    ('"\\ud800\\ud800\\udc00"', True),
    ('"\\ud83d\\ude00\\ude00"', True),
    ('"\\\\\\ud800"', True),                 # "\\" then a real escape
    ('"\\\\ud800\\udc00"', True),            # text "\ud800", then a lone low escape
    ('"\\ud800\\u0041"', True),
])
def test_has_lone_surrogate_escape(text, lone):
    assert has_lone_surrogate_escape(text.encode()) is lone
    parsed = json.loads(text)
    assert any(0xD800 <= ord(c) <= 0xDFFF for c in parsed) is lone


@pytest.mark.parametrize("value,depth", [
    ({}, 1), ([], 1), ({"a": "b"}, 1), ({"a": {"b": 1}}, 2), ([[[]]], 3), ({"a": [{"b": "c"}]}, 3),
    (json.loads(nested(MAX_NESTING - 1, '{"k":"v"}')), MAX_NESTING), (json.loads(nested(MAX_NESTING)), MAX_NESTING),
    (json.loads(nested(MAX_NESTING, "{}")), MAX_NESTING + 1),
    (json.loads('{"a":1,"b":[' + nested(MAX_NESTING) + ']}'), MAX_NESTING + 2),
])
def test_nesting_exceeds_matches_the_exact_depth(value, depth):
    for limit in (depth - 1, depth, depth + 1):
        assert nesting_exceeds(value, limit) is (depth > limit)
        assert (deep_path(value, limit) is not None) is (depth > limit)
    assert nesting_exceeds("text", 0) is False


def test_json_utf8_always_encodes():
    assert json_utf8({"a": "é", "b": [1, 2.5]}) == '{"a":"é","b":[1,2.5]}'.encode()
    assert json_utf8({"a\ud800": ["x\udfff", float("inf"), float("nan")]}) == \
        '{"a\ufffd":["x\ufffd",null,null]}'.encode()
    assert utf8("ok \ud800") == "ok \ufffd".encode()
