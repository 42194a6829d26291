"""Streaming end to end through sockets: event grammar, tools, errors, disconnects, concurrency."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from harness import FakeUpstream, LoopThread, Proxy, Reply, completion, json_reply, parse_sse, sse_reply, text_chunks


@pytest.fixture
def proxy(lt, upstream):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-max-retries", "0"],
              {"CUSTOM_BASE_URL": upstream.url})
    yield p
    p.stop()


STREAM = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
          "messages": [{"role": "user", "content": "Hi"}],
          "tools": [{"name": "Read", "description": "read a file",
                     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]}


def names(events):
    return [name for name, _ in events]


def test_text_stream_event_sequence(proxy, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks(["Hel", "lo", "!"]))
    status, headers, events = proxy.post(STREAM)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert names(events) == ["message_start", "ping", "content_block_start", "content_block_delta",
                             "content_block_delta", "content_block_delta", "content_block_stop",
                             "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["model"] == "claude-sonnet-4-5" and start["content"] == []
    assert start["usage"]["input_tokens"] > 0
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello!"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 20 and delta["usage"]["output_tokens"] == 3
    sent = upstream.requests[-1].json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert upstream.requests[-1].headers["accept"] == "text/event-stream"


def test_no_stream_options_flag(lt, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks(["ok"]))
    p = Proxy(lt, ["-provider", "custom", "-model-flags", "no_stream_options"], {"CUSTOM_BASE_URL": upstream.url})
    try:
        status, _, events = p.post(STREAM)
    finally:
        p.stop()
    assert status == 200 and "stream_options" not in upstream.requests[-1].json()


def tool_chunks():
    return [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Reading."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_A", "type": "function", "function": {"name": "Read", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"file_'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'path": "a.py"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_B", "type": "function", "function": {"name": "Read", "arguments": '{"file_path": "b.py"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},   # OpenAI may say stop with tools
        {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 30,
                                  "prompt_tokens_details": {"cached_tokens": 10}}},
    ]


def test_text_then_parallel_tool_calls(proxy, upstream):
    upstream.script = lambda seen: sse_reply(tool_chunks())
    status, _, events = proxy.post(STREAM)
    assert status == 200
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[0]["content_block"]["type"] == "text"
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_A", "name": "Read", "input": {}}
    assert starts[2]["content_block"]["id"] == "call_B"
    args = {}
    for n, d in events:
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            args[d["index"]] = args.get(d["index"], "") + d["delta"]["partial_json"]
    assert json.loads(args[1]) == {"file_path": "a.py"} and json.loads(args[2]) == {"file_path": "b.py"}
    # each block closed before the next opens
    order = [(n, d.get("index")) for n, d in events if n.startswith("content_block_") and n != "content_block_delta"]
    assert order == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                     ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2)]
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"]["input_tokens"] == 40 and final["usage"]["cache_read_input_tokens"] == 10
    assert names(events)[-1] == "message_stop"


def test_upstream_error_before_stream_is_plain_json(proxy, upstream):
    upstream.script = lambda seen: json_reply({"error": {"message": "no such model"}}, status=404)
    status, headers, body = proxy.post(STREAM)
    assert status == 404 and headers["content-type"] == "application/json"
    assert body["error"]["type"] == "not_found_error"


def test_mid_stream_disconnect_gives_error_event_and_closes(proxy, upstream):
    upstream.script = lambda seen: sse_reply(tool_chunks(), drop_after=3)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("POST", "/v1/messages", json.dumps(STREAM), {"content-type": "application/json"})
    r = conn.getresponse()
    raw = r.read()  # ends: the proxy closes the connection after the error event
    events = parse_sse(raw)
    assert names(events)[0] == "message_start"
    assert names(events)[-1] == "error"
    assert "message_stop" not in names(events)
    assert events[-1][1]["error"]["type"] in ("api_error", "overloaded_error", "timeout_error")
    # the half-built tool block (args incomplete) was never closed
    opened = {d["index"] for n, d in events if n == "content_block_start" and d["content_block"]["type"] == "tool_use"}
    closed = {d["index"] for n, d in events if n == "content_block_stop"}
    assert not (opened & closed)
    assert len(upstream.requests) == 1   # never retried after the stream started
    upstream.script = lambda seen: json_reply(completion())
    assert proxy.post({**STREAM, "stream": False})[0] == 200  # and the proxy keeps serving


def test_error_payload_mid_stream(proxy, upstream):
    chunks = text_chunks(["partial"])[:2] + [{"error": {"message": "upstream overloaded", "code": 503}}]
    upstream.script = lambda seen: sse_reply(chunks, done=False)
    status, _, raw = proxy.request("POST", "/v1/messages", STREAM)
    events = parse_sse(raw)
    assert status == 200 and names(events)[-1] == "error"
    assert "upstream overloaded" in events[-1][1]["error"]["message"]


def test_stream_without_done_still_finishes(proxy, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"]), done=False)
    status, _, events = proxy.post(STREAM)
    assert status == 200 and names(events)[-2:] == ["message_delta", "message_stop"]


def test_upstream_answering_json_to_a_stream_request_is_converted(proxy, upstream):
    upstream.script = lambda seen: json_reply(completion("whole", tool_calls=[
        {"id": "call_9", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"x"}'}}]))
    status, _, events = proxy.post(STREAM)
    assert status == 200
    assert names(events)[0] == "message_start" and names(events)[-1] == "message_stop"
    blocks = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert blocks == ["text", "tool_use"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_events_are_relayed_as_they_arrive(proxy, upstream):
    chunks = text_chunks(["first"] + ["x"] * 3)
    upstream.script = lambda seen: sse_reply(chunks, delay=0.3)
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    body = json.dumps(STREAM).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    start = time.monotonic()
    got = b""
    while b"text_delta" not in got:
        got += s.recv(65536)
    first_delta_after = time.monotonic() - start
    # the whole stream takes ~1.5 s upstream; the first delta must not wait for the end
    assert first_delta_after < 1.0
    s.close()


def test_client_disconnect_cancels_upstream_and_pool_stays_healthy(proxy, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks(["x"] * 50), delay=0.05)
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    body = json.dumps(STREAM).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while b"text_delta" not in got:
        got += s.recv(65536)
    s.close()
    deadline = time.monotonic() + 3
    while upstream.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.cancelled >= 1   # the upstream connection was closed, not left streaming
    upstream.script = lambda seen: sse_reply(text_chunks(["after"]))
    status, _, events = proxy.post(STREAM)
    assert status == 200 and names(events)[-1] == "message_stop"


def test_ping_sent_while_upstream_is_silent(lt, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks(["late"]), delay=0.5)
    p = Proxy(lt, ["-provider", "custom", "-stream-ping-interval", "0.2"], {"CUSTOM_BASE_URL": upstream.url})
    try:
        status, _, events = p.post(STREAM)
    finally:
        p.stop()
    assert status == 200
    assert names(events).count("ping") >= 2   # the initial one and at least one keep-alive
    assert names(events)[-1] == "message_stop"


def test_fifty_concurrent_streams(proxy, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks([f"w{i} " for i in range(20)]), delay=0.01)
    results = [None] * 50

    def run(i):
        try:
            status, _, events = proxy.post(STREAM, timeout=30)
            text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
            results[i] = (status, names(events)[-1], text)
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = "".join(f"w{i} " for i in range(20))
    assert all(r == (200, "message_stop", expected) for r in results), [r for r in results if r != (200, "message_stop", expected)][:3]


def test_thinking_stream_from_reasoning_content(proxy, upstream):
    chunks = [
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Need "}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "the file."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Done."}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    upstream.script = lambda seen: sse_reply(chunks)
    body = {**STREAM, "thinking": {"type": "adaptive"}}
    status, _, events = proxy.post(body)
    assert status == 200
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert deltas == ["thinking_delta", "thinking_delta", "signature_delta"]
    # no usage from upstream: estimates, never zero
    usage = events[-2][1]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


def test_upstream_connection_reused_across_streams(proxy, upstream):
    upstream.script = lambda seen: sse_reply(text_chunks(["a"]))
    before = upstream.connections
    for _ in range(3):
        status, _, events = proxy.post(STREAM)
        assert status == 200 and names(events)[-1] == "message_stop"
    assert upstream.connections - before <= 1   # one pooled keep-alive connection served all three
