"""Hostile or broken upstreams, and shutdown: every stream still ends with `message_stop` or an
explicit `event: error`, every error is an Anthropic error with a sane status, and the proxy keeps
serving (issue 12: items 5, 6, 11, 12, 13)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from clasp.config import load_config
from clasp.routing.providers import build_target
from harness import (FakeUpstream, LoopThread, Proxy, Reply, completion, json_reply, parse_sse, spawn_clasp,
                     sse_reply, text_chunks)

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
STREAM = {**HELLO, "stream": True}
CAP = 4 * 1024 * 1024      # the SSE event cap these tests run with
HOSTILE = 40 * 1024 * 1024  # ten times the cap
PIECE = 256 * 1024
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
ROLE = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
DELTA = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"partial"}}]}\n\n'


def names(events):
    return [name for name, _ in events]


@pytest.fixture
def proxy(lt, upstream):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-max-retries", "0",
                   "-max-sse-event-size", str(CAP)], {"CUSTOM_BASE_URL": upstream.url})
    yield p
    p.stop()


def _still_serves(proxy, upstream) -> None:
    upstream.script = lambda seen: json_reply(completion("still here"))
    status, _, body = proxy.post(HELLO)
    assert status == 200 and body["content"][0]["text"] == "still here"


def _wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# ------------------------------------------------------------------ 5. unbounded upstream SSE

def _one_line() -> "iter[bytes]":
    """One SSE line that never ends."""
    yield b"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\""
    for _ in range(HOSTILE // PIECE):
        yield b"x" * PIECE


def _one_event() -> "iter[bytes]":
    """One complete but huge event (a single data line, then the blank line)."""
    yield from _one_line()
    yield b"\"}}]}\n\n"


def _data_lines() -> "iter[bytes]":
    """data: lines without end, never a blank line that would dispatch them."""
    line = b"data: " + b"y" * (PIECE - 7) + b"\n"
    for _ in range(HOSTILE // PIECE):
        yield line


def _hostile(body, chunked: bool) -> Reply:
    def script():
        if chunked:
            yield SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n"
            yield b"%x\r\n%s\r\n" % (len(ROLE), ROLE)
            for piece in body():
                yield b"%x\r\n%s\r\n" % (len(piece), piece)
            yield b"0\r\n\r\n"
        else:
            yield SSE_HEAD + b"connection: close\r\n\r\n" + ROLE
            yield from body()
    return Reply(raw=script())


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
@pytest.mark.parametrize("body", [_one_line, _one_event, _data_lines], ids=["line", "event", "data-lines"])
def test_oversized_upstream_sse_ends_the_stream_with_an_error(proxy, upstream, body, chunked):
    upstream.script = lambda seen: _hostile(body, chunked)
    status, _, events = proxy.post(STREAM)
    assert status == 200
    assert names(events)[-1] == "error" and "message_stop" not in names(events)
    error = events[-1][1]["error"]
    assert error["type"] == "api_error" and str(CAP) in error["message"]
    _still_serves(proxy, upstream)


class _Client(Proxy):
    """Proxy's client helpers, against a clasp started elsewhere."""

    def __init__(self, port: int) -> None:  # noqa: super().__init__ would start an in-process proxy
        self.port = port


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
def test_oversized_upstream_sse_does_not_grow_the_process():
    """The peak RSS of a real `python -m clasp` stays far below the 40 MB an upstream throws at it."""
    lt = LoopThread()
    up = FakeUpstream(lt)
    proc = None
    try:
        proc, port = spawn_clasp(["-provider", "custom", "-model", "gpt-test", "-max-retries", "0",
                                  "-max-sse-event-size", str(CAP)], {"CUSTOM_BASE_URL": up.url})
        client = _Client(port)
        up.script = lambda seen: sse_reply(text_chunks(["warm"]))
        assert client.post(STREAM)[0] == 200  # imports and buffers of a normal stream are in the baseline
        before = _vm_hwm(proc.pid)
        for body in (_one_line, _data_lines):
            up.script = lambda seen: _hostile(body, False)
            status, _, events = client.post(STREAM)
            assert status == 200 and names(events)[-1] == "error"
        grown = _vm_hwm(proc.pid) - before
        assert grown < 24 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.1f} MiB"
        up.script = lambda seen: json_reply(completion("still here"))
        assert client.post(HELLO)[2]["content"][0]["text"] == "still here"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        up.close()
        lt.stop()


def test_sse_parser_caps_lines_and_events():
    from clasp.translate.sse import SSEEventTooLarge, SSEParser
    limit = 1000
    # exactly at the limit is fine, in one read or many
    parser = SSEParser(limit)
    assert parser.feed(b"data: " + b"a" * limit + b"\n\n") == ["a" * limit]
    for _ in range(10):
        assert parser.feed(b"data: " + b"b" * 99 + b"\n") == []
    assert parser.feed(b"\n") == ["\n".join(["b" * 99] * 10)]
    # an unterminated line, a huge line, data lines without a blank line: all stop at the cap
    for reads in ([b"data: " + b"x" * 600, b"x" * 600],
                  [b"data: " + b"x" * 2000 + b"\n"],
                  [b"data: " + b"y" * 300 + b"\n"] * 4,
                  [b": " + b"z" * 2000]):
        parser = SSEParser(limit)
        with pytest.raises(SSEEventTooLarge) as caught:
            for data in reads:
                parser.feed(data)
        assert caught.value.limit == limit
    # events the same read completed before the oversized part are handed over, not lost
    with pytest.raises(SSEEventTooLarge) as caught:
        SSEParser(limit).feed(b"data: one\n\ndata: two\n\ndata: " + b"x" * 2000)
    assert caught.value.payloads == ["one", "two"]


def test_sse_event_cap_is_a_setting():
    cfg, _ = load_config([], {"HOME": "/nonexistent-clasp-test-home", "CLASP_MAX_SSE_EVENT_SIZE": "1048576"})
    assert cfg.max_sse_event_size == 1048576
    assert load_config([], {"HOME": "/nonexistent-clasp-test-home"})[0].max_sse_event_size == 8 * 1024 * 1024


# ------------------------------------------------------------------ 6. a cut stream is not a complete one

@pytest.mark.parametrize("cut", [
    ROLE + DELTA + b'data: {"id":"c1","choi',   # stops in the middle of an event
    ROLE + DELTA + DELTA,                        # stops after some deltas: no finish_reason, no [DONE]
], ids=["mid-event", "after-deltas"])
def test_close_delimited_stream_cut_short_is_an_error(proxy, upstream, cut):
    upstream.script = lambda seen: Reply(raw=[SSE_HEAD + b"connection: close\r\n\r\n" + cut])
    status, _, events = proxy.post(STREAM)
    assert status == 200
    assert names(events)[-1] == "error" and "message_stop" not in names(events)
    assert "message_delta" not in names(events)  # never a stop_reason for a cut answer
    assert events[-1][1]["error"]["type"] == "api_error"
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert texts == ["partial"] * cut.count(DELTA)    # the text that did arrive was relayed
    assert names(events)[-2] == "content_block_stop"  # and its block closed before the error
    _still_serves(proxy, upstream)


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_stream_ending_without_finish_reason_is_an_error(proxy, upstream, framing):
    chunks = text_chunks(["a", "b"])[:3]  # role + two deltas; neither finish_reason nor [DONE]
    upstream.script = lambda seen: sse_reply(chunks, done=False, framing=framing)
    status, _, events = proxy.post(STREAM)
    assert status == 200 and names(events)[-1] == "error" and "message_stop" not in names(events)
    # A finish_reason without [DONE] is a complete answer (PROTOCOL §3.3: some servers end so).
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"]), done=False, framing=framing)
    status, _, events = proxy.post(STREAM)
    assert status == 200 and names(events)[-2:] == ["message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


# ------------------------------------------------------------------ 11. upstream status and shape

@pytest.mark.parametrize("body", [HELLO, STREAM], ids=["whole", "stream"])
@pytest.mark.parametrize("status", [999, 600, 700])
def test_upstream_status_outside_100_599_is_a_502(proxy, upstream, status, body):
    upstream.script = lambda seen: json_reply({"error": {"message": "weird"}}, status=status)
    got, headers, answer = proxy.post(body)
    assert got == 502, got
    assert answer["type"] == "error" and answer["error"]["type"] == "api_error"
    assert str(status) in answer["error"]["message"]
    _still_serves(proxy, upstream)


@pytest.mark.parametrize("body", [HELLO, STREAM], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream_body", [
    {"id": "x", "object": "chat.completion"},
    {"id": "x", "choices": None},
    {"id": "x", "choices": {"0": {"message": {"role": "assistant", "content": "hi"}}}},
    {"id": "x", "choices": "hi"},
    {"id": "x", "choices": []},
    {"id": "x", "choices": [None]},
], ids=["missing", "null", "object", "string", "empty", "not-an-object"])
def test_2xx_without_a_choices_list_is_a_502(proxy, upstream, upstream_body, body):
    upstream.script = lambda seen: json_reply(upstream_body)
    status, _, answer = proxy.post(body)
    assert status == 502
    assert answer["type"] == "error" and answer["error"]["type"] == "api_error"
    assert "choices" in answer["error"]["message"]
    _still_serves(proxy, upstream)


# ------------------------------------------------------------------ 12. shutdown cuts with an error

def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not piece:
            break
        data += piece
    return data


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    """(payload, whether the chunked terminator arrived)."""
    out = b""
    while body:
        line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out, rest.startswith(b"\r\n")
        out += rest[:size]
        body = rest[size + 2:]
    return out, False


def _send(port: int, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(data), data))
    return s


def test_shutdown_expiry_ends_running_streams_with_an_overloaded_error(lt, upstream):
    # A stream that would take 20 s; the proxy is told to stop and gives it 0.5 s.
    upstream.script = lambda seen: sse_reply(text_chunks(["tick"] * 100), delay=0.2)
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-shutdown-timeout", "0.5"],
              {"CUSTOM_BASE_URL": upstream.url})
    s = _send(p.port, STREAM)
    try:
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        _wait_for(lambda: len(upstream.requests) == 1)
        p.stop()
        raw = first + _read_all(s)
    finally:
        s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    payload, terminated = _dechunk(body)
    assert terminated, "the chunked body must end with its terminator"
    events = parse_sse(payload)
    assert names(events)[-1] == "error" and "message_stop" not in names(events)
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    if "content_block_start" in names(events):  # an open text block is closed before the error
        assert names(events)[-2] == "content_block_stop"
    _wait_for(lambda: upstream.cancelled >= 1)  # and the upstream stream was abandoned


@pytest.mark.parametrize("body", [HELLO, STREAM], ids=["whole", "stream"])
def test_shutdown_expiry_answers_requests_still_waiting_with_529(lt, upstream, body):
    upstream.script = lambda seen: Reply(hold=30)  # the upstream never answers
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-shutdown-timeout", "0.5"],
              {"CUSTOM_BASE_URL": upstream.url})
    s = _send(p.port, body)
    try:
        _wait_for(lambda: len(upstream.requests) == 1)
        p.stop()
        raw = _read_all(s)
    finally:
        s.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 529"), raw[:200]
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    answer = json.loads(rest[:int(headers[b"content-length"])])
    assert answer["type"] == "error" and answer["error"]["type"] == "overloaded_error"
    _wait_for(lambda: upstream.hangups == 1)  # the pending upstream call was cancelled


# ------------------------------------------------------------------ 13. base URL query, first-byte deadline

@pytest.mark.parametrize("base,expected", [
    ("http://h/v1?api-version=2024-06-01", "http://h/v1/chat/completions?api-version=2024-06-01"),
    ("http://h/v1/?api-version=1", "http://h/v1/chat/completions?api-version=1"),
    ("http://h?x=1", "http://h/chat/completions?x=1"),
    ("http://h/v1/chat/completions?x=1", "http://h/v1/chat/completions?x=1"),
    ("http://h/v1", "http://h/v1/chat/completions"),
])
def test_base_url_query_stays_after_the_path(base, expected):
    cfg, _ = load_config(["-provider", "custom"], {"HOME": "/nonexistent-clasp-test-home", "CUSTOM_BASE_URL": base})
    assert build_target("custom", cfg).url == expected


def test_base_url_query_reaches_the_upstream(lt, upstream, proxies):
    proxies.append(Proxy(lt, ["-provider", "custom", "-model", "gpt-test"],
                         {"CUSTOM_BASE_URL": upstream.url + "?api-version=2024-06-01"}))
    assert proxies[0].post(HELLO)[0] == 200
    assert upstream.requests[-1].target == "/v1/chat/completions?api-version=2024-06-01"


@pytest.mark.parametrize("body", [HELLO, STREAM], ids=["whole", "stream"])
def test_first_byte_deadline_bounds_a_hanging_upstream(lt, upstream, proxies, body):
    # Per read the upstream may take 60 s, and there are 2 retries: without an overall deadline the
    # client would wait minutes. The deadline answers after 1 s and hangs up on the upstream.
    upstream.script = lambda seen: Reply(hold=60)
    proxies.append(Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-read-timeout", "60",
                              "-max-retries", "2", "-first-byte-timeout", "1"], {"CUSTOM_BASE_URL": upstream.url}))
    status, _, answer = proxies[0].post(body, timeout=15)
    assert status == 504
    assert answer["type"] == "error" and answer["error"]["type"] == "timeout_error"
    assert "first-byte" in answer["error"]["message"]
    assert len(upstream.requests) == 1
    _wait_for(lambda: upstream.hangups == 1)  # the pending upstream call was cancelled


def test_first_byte_deadline_covers_retries(lt, upstream, proxies):
    # Each attempt times out after 2 s; the second starts at about 2 s, a third would at about 4 s,
    # but the deadline ends the request at 3 s.
    upstream.script = lambda seen: Reply(hold=30)
    proxies.append(Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-read-timeout", "2",
                              "-max-retries", "2", "-retry-base-delay-ms", "10", "-first-byte-timeout", "3"],
                         {"CUSTOM_BASE_URL": upstream.url}))
    status, _, answer = proxies[0].post(HELLO, timeout=15)
    assert status == 504 and answer["error"]["type"] == "timeout_error"
    assert len(upstream.requests) == 2  # the third attempt never started


def test_first_byte_deadline_does_not_limit_a_slow_stream(lt, upstream, proxies):
    # Once the response head arrived, only the per-read timeout governs.
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b", "c", "d"]), delay=0.4)
    proxies.append(Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-first-byte-timeout", "1"],
                         {"CUSTOM_BASE_URL": upstream.url}))
    status, _, events = proxies[0].post(STREAM)
    assert status == 200 and names(events)[-1] == "message_stop"


def test_first_byte_timeout_is_a_setting():
    env = {"HOME": "/nonexistent-clasp-test-home"}
    assert load_config([], {**env, "CLASP_FIRST_BYTE_TIMEOUT": "42"})[0].first_byte_timeout == 42.0
    assert load_config([], env)[0].first_byte_timeout == 300.0


def test_an_unexpected_failure_mid_stream_ends_it_with_an_error_event(proxy, upstream, monkeypatch):
    """Nothing is lost silently: even a bug in the translation ends the stream explicitly."""
    from clasp.translate.stream import StreamTranslator
    real_feed = StreamTranslator.feed
    fed = []

    def feed(self, chunk):
        fed.append(chunk)
        if len(fed) == 3:
            raise RuntimeError("a bug")
        return real_feed(self, chunk)

    monkeypatch.setattr(StreamTranslator, "feed", feed)
    upstream.script = lambda seen: sse_reply(text_chunks(["one ", "two ", "three"]))
    status, _, events = proxy.post(STREAM)
    assert status == 200
    assert names(events)[0] == "message_start" and names(events)[-1] == "error"
    assert events[-1][1]["error"]["type"] == "api_error" and "message_stop" not in names(events)
    monkeypatch.setattr(StreamTranslator, "feed", real_feed)
    assert proxy.post(STREAM)[2][-1][0] == "message_stop"  # and the proxy keeps serving
