"""Issue 12's fuzz pass: a corpus of hostile client bodies and hostile upstream replies, plus seeded
random mutations of a real Claude Code request, thrown at a running `python -m clasp`.

Whatever comes in, every answer is a well-formed Anthropic message, stream or error (never a 500
for client input), the server keeps serving, /metrics keeps answering and memory stays bounded.
Bounded: a fixed corpus and a fixed number of mutations, loopback only.
"""

from __future__ import annotations

import copy
import http.client
import json
import random
from pathlib import Path

import pytest

from harness import Reply, completion, json_reply, sse_reply, spawn_clasp, text_chunks

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "claude-code" / "first_request.json"
DEEP = 977
MUTATIONS = 60


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _hello(**over) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], **over}


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%not base64%%%"}}
HOSTILE_BODIES: list[bytes] = [
    b"", b"{", b"[]", b"null", b'"x"', b"{}", b"\xff\xfe{}",
    b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":'
    + b"[" * DEEP + b'"x"' + b"]" * DEEP + b"}]}",
    b'{"model":"claude-\\udc00","max_tokens":5,"messages":[{"role":"user","content":"x"}]}',
    b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"a\\ud800b"}]}',
    b'{"model":"claude-sonnet-4-5","max_tokens":5,"temperature":NaN,"messages":[{"role":"user","content":"x"}]}',
    b'{"model":"claude-sonnet-4-5","max_tokens":Infinity,"messages":[{"role":"user","content":"x"}]}',
    json.dumps(_hello(model="claude-" + "m" * 100_000)).encode(),
    json.dumps(_hello(stream="yes")).encode(),
    json.dumps(_hello(thinking="on")).encode(),
    json.dumps(_hello(tool_choice="auto", tools=[])).encode(),
    json.dumps(_hello(tools=[{"name": "t", "input_schema": "not an object"}])).encode(),
    json.dumps(_hello(tool_choice={"type": "tool"}, tools=[{"name": "t", "input_schema": {}}])).encode(),
    json.dumps(_hello(messages=[{"role": "user", "content": [IMAGE]}])).encode(),
    json.dumps(_hello(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}]}])).encode(),
    json.dumps(_hello(max_tokens=10 ** 12)).encode(),
    json.dumps(_hello(max_tokens=-1)).encode(),
    json.dumps(_hello(stop_sequences=["s"] * 10_000)).encode(),
    json.dumps(_hello(messages="hi")).encode(),
    json.dumps(_hello(messages=[{"role": "robot", "content": "x"}])).encode(),
    json.dumps(_hello(system=[{"type": "text", "text": 5}])).encode(),
]

# Hostile upstream replies, chosen by a marker in the request's last user message.
UPSTREAM: dict[str, Reply] = {
    "deep-body": Reply(200, [("content-type", "application/json")], b"[" * 5000 + b"]" * 5000),
    "deep-chunk": sse_reply(['data: {"choices":' + "[" * 5000 + "]" * 5000 + "}\n\n"]),
    "surrogate": json_reply(completion("bad \ud800 text")),
    "surrogate-stream": sse_reply(text_chunks(["bad \ud800 text"])),
    "status-999": json_reply({"error": {"message": "odd"}}, 999),
    "choices-not-list": json_reply({"id": "x", "choices": {"0": "no"}}),
    "not-json": Reply(200, [("content-type", "application/json")], b"<html>oops</html>"),
    "cut-mid-event": Reply(raw=[b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                                b'data: {"id":"c1","choi']),
    "no-finish": sse_reply(text_chunks(["partial"])[:-2], done=False, framing="close"),
    "huge-event": sse_reply(["data: " + "x" * (2 * 1024 * 1024) + "\n\n"]),
    "nan-usage": Reply(200, [("content-type", "application/json")],
                       b'{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
                       b'"finish_reason":"stop"}],"usage":{"prompt_tokens":NaN}}'),
}


def _script(seen) -> Reply:
    try:
        last = seen.json()["messages"][-1]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return json_reply(completion("ok"))
    return UPSTREAM.get(last if isinstance(last, str) else "", json_reply(completion("ok")))


def _request(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body, {"content-type": content_type})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_well_formed(status: int, headers: dict, raw: bytes, what: str) -> None:
    assert status != 500 and 200 <= status <= 599, (what, status, raw[:300])
    if "text/event-stream" in headers.get("content-type", ""):
        events = [json.loads(line[5:]) for line in raw.decode().splitlines() if line.startswith("data:")]
        assert events and events[0]["type"] == "message_start", (what, raw[:300])
        assert events[-1]["type"] in ("message_stop", "error"), (what, raw[-300:])
        if events[-1]["type"] == "error":
            assert isinstance(events[-1]["error"]["message"], str)
        return
    data = json.loads(raw)
    if status == 200:
        assert data["type"] == "message" and isinstance(data["content"], list), (what, data)
    else:
        assert data["type"] == "error" and set(data["error"]) >= {"type", "message"}, (what, data)
        assert isinstance(data["error"]["message"], str) and len(data["error"]["message"]) < 4096, what


def _mutations(seed: int) -> list[bytes]:
    """Seeded: a node of the real Claude Code request replaced by a hostile value."""
    rng = random.Random(seed)
    base = json.loads(FIXTURE.read_text())
    hostile = [None, True, -1, 10 ** 30, 1.5, "", "\x00", [], {}, _nested(120), "\ud800", "x" * 100_000,
               {"type": "text"}, [{"type": "nope"}]]
    out = []
    for _ in range(MUTATIONS):
        body = copy.deepcopy(base)
        node, path = body, []
        for _depth in range(rng.randint(1, 6)):
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys:
                break
            key = rng.choice(keys)
            if not isinstance(node[key], (dict, list)) or rng.random() < 0.3:
                node[key] = rng.choice(hostile)
                break
            node = node[key]
        body["stream"] = rng.random() < 0.5
        out.append(json.dumps(body).encode("utf-8", "surrogatepass"))
    return out


@pytest.fixture(scope="module")
def proxy(lt):
    from harness import FakeUpstream
    upstream = FakeUpstream(lt, _script)
    proc, port = spawn_clasp(["-provider", "custom", "-model", "m", "-max-retries", "0",
                              "-max-sse-event-size", "1048576", "-access-log=false"],
                             {"CUSTOM_BASE_URL": upstream.url})
    yield proc, port, upstream
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
    upstream.close()


def test_hostile_client_bodies_get_clean_errors_and_never_reach_the_upstream(proxy):
    proc, port, upstream = proxy
    for body in HOSTILE_BODIES:
        before = len(upstream.requests)
        status, headers, raw = _request(port, body)
        assert_well_formed(status, headers, raw, body[:80])
        if status >= 400:
            assert len(upstream.requests) == before, ("rejected input reached the upstream", body[:80])
    assert _request(port, json.dumps(_hello()).encode(), "text/plain")[0] == 415


@pytest.mark.parametrize("stream", [False, True])
def test_hostile_upstream_replies_become_clean_errors(proxy, stream):
    proc, port, upstream = proxy
    for marker in UPSTREAM:
        body = json.dumps(_hello(stream=stream, messages=[{"role": "user", "content": marker}])).encode()
        status, headers, raw = _request(port, body)
        assert_well_formed(status, headers, raw, marker)
        assert not (status == 200 and b'"stop_reason":"end_turn"' in raw and marker in ("cut-mid-event", "no-finish")), \
            f"{marker}: a cut stream was relayed as complete"


def test_mutated_claude_code_requests_never_break_the_proxy(proxy):
    proc, port, upstream = proxy
    for i, body in enumerate(_mutations(seed=12)):
        status, headers, raw = _request(port, body)
        assert_well_formed(status, headers, raw, f"mutation {i}")


def test_after_the_fuzz_the_proxy_serves_metrics_answer_and_memory_is_bounded(proxy):
    proc, port, upstream = proxy
    for path in ("/metrics", "/metrics/prometheus", "/health"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        assert r.status == 200 and len(data) < 256 * 1024, (path, r.status, len(data))
    status, headers, raw = _request(port, json.dumps(_hello()).encode())
    assert status == 200 and json.loads(raw)["content"][0]["text"] == "ok"
    assert _rss_kib(proc.pid) < 120 * 1024  # ~20 MiB idle; 100 KB names and 2 MB events must not pile up
