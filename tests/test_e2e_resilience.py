"""End to end through real sockets: retries, circuit breaker, request queue, fallback, tier routing.

The fake upstream injects faults (refused connections, hangs, 5xx/429 sequences, mid-stream drops);
the proxy is the real server with small delays so every scenario runs in well under a second.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import (FakeUpstream, LoopThread, Proxy, Reply, completion, json_reply, parse_sse, sse_reply,
                     text_chunks)

ROOT = Path(__file__).resolve().parent.parent
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
FAST = ["-retry-base-delay-ms", "10"]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=8) as ex:
        yield ex


def start(proxies: list, lt, upstream, *argv, **env) -> Proxy:
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *FAST, *argv],
              {"CUSTOM_BASE_URL": upstream.url, **env})
    proxies.append(p)
    return p


class Script:
    """Replies served in order, then `then` for every later request (N failures in a row, 503 then 200)."""

    def __init__(self, *replies: Reply, then: Reply | None = None) -> None:
        self.replies = list(replies)
        self.then = then or json_reply(completion())

    def __call__(self, seen) -> Reply:
        return self.replies.pop(0) if self.replies else self.then


def err(status: int, message: str = "upstream trouble", headers: list | None = None) -> Reply:
    return json_reply({"error": {"message": message}}, status=status, headers=headers)


def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    """Poll (bounded) until predicate() is true: no fixed sleeps, no timing assertions."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def refuse(lt, up: FakeUpstream) -> None:
    """Stop listening: new connections to the upstream's port are refused."""
    async def _close():
        up.server.close()
        await up.server.wait_closed()
    lt.run(_close())


def listen_again(lt, up: FakeUpstream) -> None:
    """The upstream comes back on the same port (the provider recovered)."""
    up.server = lt.run(asyncio.start_server(up._conn, "127.0.0.1", up.port))


# ------------------------------------------------------------------------------------------ retries


def test_503_then_200_is_retried_transparently(lt, upstream, proxies):
    upstream.script = Script(err(503), err(503))
    p = start(proxies, lt, upstream, "-max-retries", "2")
    status, headers, msg = p.post(HELLO)
    assert status == 200 and msg["content"] == [{"type": "text", "text": "Hello!"}]
    assert headers["x-clasp-provider"] == "custom"
    assert len(upstream.requests) == 3
    assert all(r.json() == upstream.requests[0].json() for r in upstream.requests)  # same request re-sent
    assert p.metrics()["retries"] == 2


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_every_transient_status_is_retried(lt, upstream, proxies, status):
    upstream.script = Script(err(status))
    p = start(proxies, lt, upstream, "-max-retries", "1")
    got, _, msg = p.post(HELLO)
    assert got == 200 and msg["type"] == "message"
    assert len(upstream.requests) == 2


def test_retry_after_ms_replaces_the_backoff(lt, upstream, proxies):
    # A 5 s base delay would wait 2.5-5 s before the retry; the upstream's retry-after-ms: 50
    # wins, so the request completes well within the client's 2 s timeout.
    upstream.script = Script(err(429, "slow down", [("retry-after-ms", "50")]))
    p = start(proxies, lt, upstream, "-max-retries", "1", "-retry-base-delay-ms", "5000")
    status, _, msg = p.post(HELLO, timeout=2)
    assert status == 200 and msg["type"] == "message"
    assert len(upstream.requests) == 2


def test_retry_exhaustion_returns_the_mapped_upstream_error(lt, upstream, proxies):
    upstream.script = lambda seen: err(503, "no capacity")
    p = start(proxies, lt, upstream, "-max-retries", "2")
    status, headers, body = p.post(HELLO)
    assert status == 529
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "no capacity" in body["error"]["message"]
    assert headers["request-id"].startswith("req_")
    assert len(upstream.requests) == 3   # 1 attempt + 2 retries, then the error


def test_retry_exhaustion_on_dropped_connections_is_502(lt, upstream, proxies):
    upstream.script = lambda seen: Reply(drop=True)
    # no probe: its pooled connection would add the client's one free retry on a reused
    # connection that dropped, and this test counts the policy's attempts
    p = start(proxies, lt, upstream, "-max-retries", "2", "-probe-upstream=false")
    status, _, body = p.post(HELLO)
    assert status == 502 and body["error"]["type"] == "api_error"
    assert len(upstream.requests) == 3


def test_refused_connections_are_retried_until_the_upstream_listens(lt, upstream, proxies):
    refuse(lt, upstream)
    p = start(proxies, lt, upstream, "-max-retries", "8", "-retry-base-delay-ms", "20")
    # the upstream comes back while the proxy is retrying: the retry loop (not the client) absorbs it
    calls: list = []
    upstream.script = lambda seen: calls.append(1) or json_reply(completion())

    def later():
        time.sleep(0.05)
        listen_again(lt, upstream)
    with ThreadPoolExecutor(1) as ex:
        ex.submit(later)
        status, _, msg = p.post(HELLO)
    assert status == 200 and msg["type"] == "message"
    assert len(calls) == 1
    assert p.metrics()["retries"] >= 1


def test_timeout_before_the_first_byte_is_retried(lt, upstream, proxies):
    upstream.script = Script(Reply(hang=1.0))
    p = start(proxies, lt, upstream, "-max-retries", "1", "-read-timeout", "0.1")
    status, _, msg = p.post(HELLO)
    assert status == 200 and msg["type"] == "message"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status, etype", [(400, "invalid_request_error"), (401, "authentication_error"),
                                           (403, "permission_error"), (404, "not_found_error")])
def test_client_errors_are_never_retried(lt, upstream, proxies, status, etype):
    # even when the upstream claims they are retryable
    upstream.script = lambda seen: err(status, "nope", [("x-should-retry", "true"), ("retry-after-ms", "1")])
    p = start(proxies, lt, upstream, "-max-retries", "3")
    got, headers, body = p.post(HELLO)
    assert got == status and body["error"]["type"] == etype
    assert headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 1
    assert p.metrics()["retries"] == 0


def test_upstream_saying_do_not_retry_is_obeyed_and_passed_on(lt, upstream, proxies):
    upstream.script = lambda seen: err(500, "broken for good", [("x-should-retry", "false")])
    p = start(proxies, lt, upstream, "-max-retries", "3", "-retry-base-delay-ms", "1")
    status, headers, body = p.post(HELLO)
    assert status == 500 and body["error"]["type"] == "api_error"
    assert headers["x-should-retry"] == "false"   # Claude Code does not retry it either
    assert len(upstream.requests) == 1


def test_upstream_may_allow_retrying_a_501(lt, upstream, proxies):
    upstream.script = Script(err(501, "try again", [("x-should-retry", "true")]))
    p = start(proxies, lt, upstream, "-max-retries", "1", "-retry-base-delay-ms", "1")
    status, _, msg = p.post(HELLO)
    assert status == 200 and msg["type"] == "message"
    assert len(upstream.requests) == 2


def _read_stream(p: Proxy, body: dict) -> tuple[int, list]:
    """POST a streaming request; tolerate the connection closing right after an error event."""
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    try:
        raw = r.read()
    except http.client.IncompleteRead as e:
        raw = e.partial
    conn.close()
    return r.status, parse_sse(raw)


def test_no_retry_after_the_stream_started(lt, upstream, proxies):
    upstream.script = lambda seen: sse_reply(text_chunks(["Hel", "lo", " there"]), drop_after=2)
    p = start(proxies, lt, upstream, "-max-retries", "3")
    status, events = _read_stream(p, {**HELLO, "stream": True})
    names = [name for name, _ in events]
    assert status == 200
    assert names[0] == "message_start"
    assert ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "Hel"}}) in events
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] in ("api_error", "overloaded_error")
    assert len(upstream.requests) == 1      # the upstream saw exactly one request
    assert p.metrics()["retries"] == 0


def test_streaming_request_is_retried_before_any_byte(lt, upstream, proxies):
    upstream.script = Script(err(502), then=sse_reply(text_chunks(["ok"])))
    p = start(proxies, lt, upstream, "-max-retries", "1")
    status, events = _read_stream(p, {**HELLO, "stream": True})
    names = [name for name, _ in events]
    assert status == 200 and names[0] == "message_start" and names[-1] == "message_stop"
    assert "error" not in names
    assert len(upstream.requests) == 2


# ------------------------------------------------------------------------------------------ breaker


def test_breaker_opens_fails_fast_then_half_opens_and_closes(lt, upstream, proxies):
    upstream.script = lambda seen: err(500, "boom")
    p = start(proxies, lt, upstream, "-max-retries", "0", "-circuit-breaker", "-cb-threshold", "2",
              "-cb-recovery", "2", "-cb-timeout", "0.2")
    assert p.metrics()["circuit_breakers"] == {"custom": "closed"}
    for _ in range(2):
        assert p.post(HELLO)[0] == 500
    assert p.metrics()["circuit_breakers"] == {"custom": "open"}
    # open: fail fast without touching the upstream
    status, headers, body = p.post(HELLO)
    assert status == 503 and body["error"]["type"] == "overloaded_error"
    assert "circuit breaker" in body["error"]["message"]
    assert int(headers["retry-after"]) >= 1
    assert len(upstream.requests) == 2
    # after the timeout: half-open; a failing probe re-opens the circuit
    wait_for(lambda: p.metrics()["circuit_breakers"]["custom"] == "half_open", "half-open")
    assert p.post(HELLO)[0] == 500
    assert len(upstream.requests) == 3
    assert p.metrics()["circuit_breakers"]["custom"] == "open"
    assert p.post(HELLO)[0] == 503 and len(upstream.requests) == 3
    # the provider recovers: two successful probes close the circuit
    upstream.script = lambda seen: json_reply(completion())
    wait_for(lambda: p.metrics()["circuit_breakers"]["custom"] == "half_open", "half-open again")
    assert p.post(HELLO)[0] == 200
    assert p.metrics()["circuit_breakers"]["custom"] == "half_open"   # 1 of 2 successes
    assert p.post(HELLO)[0] == 200
    assert p.metrics()["circuit_breakers"]["custom"] == "closed"
    assert len(upstream.requests) == 5


def test_half_open_lets_only_a_limited_number_of_probes_through(lt, upstream, proxies, pool):
    upstream.script = lambda seen: err(503)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-circuit-breaker", "-cb-threshold", "1",
              "-cb-recovery", "1", "-cb-timeout", "0.1")
    assert p.post(HELLO)[0] == 529
    wait_for(lambda: p.metrics()["circuit_breakers"]["custom"] == "half_open", "half-open")
    upstream.script = lambda seen: Reply(200, [("content-type", "application/json")],
                                         json.dumps(completion()).encode(), hang=0.3)
    probe = pool.submit(p.post, HELLO)
    wait_for(lambda: len(upstream.requests) == 2, "the probe to reach the upstream")
    status, _, body = p.post(HELLO)           # while the probe is in flight
    assert status == 503 and "circuit breaker" in body["error"]["message"]
    assert probe.result(5)[0] == 200
    assert p.metrics()["circuit_breakers"]["custom"] == "closed"
    assert len(upstream.requests) == 2


def test_client_errors_do_not_open_the_breaker(lt, upstream, proxies):
    upstream.script = lambda seen: err(400, "bad request")
    p = start(proxies, lt, upstream, "-max-retries", "0", "-circuit-breaker", "-cb-threshold", "2")
    for _ in range(4):
        assert p.post(HELLO)[0] == 400
    assert p.metrics()["circuit_breakers"]["custom"] == "closed"
    assert len(upstream.requests) == 4


# ------------------------------------------------------------------------------------------ queue


def test_queued_request_completes_after_the_provider_recovers(lt, upstream, proxies, pool):
    refuse(lt, upstream)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-queue", "-queue-retry-delay", "20",
              "-queue-max-wait", "10", "-queue-max-retries", "1000")
    waiting = pool.submit(p.post, HELLO)
    wait_for(lambda: p.metrics()["queue"]["depth"] == 1, "the request to be queued")
    assert not waiting.done()
    listen_again(lt, upstream)
    status, headers, msg = waiting.result(5)
    assert status == 200 and msg["content"] == [{"type": "text", "text": "Hello!"}]
    assert headers["x-clasp-provider"] == "custom"
    q = p.metrics()["queue"]
    assert q["depth"] == 0 and q["enqueued"] == 1 and q["served"] == 1


def test_full_queue_answers_529_overloaded(lt, upstream, proxies, pool):
    upstream.script = lambda seen: err(503)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-queue", "-queue-max-size", "1",
              "-queue-retry-delay", "20", "-queue-max-wait", "10", "-queue-max-retries", "1000")
    first = pool.submit(p.post, HELLO)
    wait_for(lambda: p.metrics()["queue"]["depth"] == 1, "the first request to be queued")
    status, headers, body = p.post(HELLO)
    assert status == 529 and body["error"]["type"] == "overloaded_error"
    assert "queue is full" in body["error"]["message"]
    assert int(headers["retry-after"]) > 0
    # the queued request was not dropped: it completes once the provider is back
    upstream.script = lambda seen: json_reply(completion())
    assert first.result(5)[0] == 200
    q = p.metrics()["queue"]
    assert q["rejected_full"] == 1 and q["served"] == 1 and q["depth"] == 0


def test_queue_wait_expiry_answers_529_overloaded(lt, upstream, proxies):
    upstream.script = lambda seen: err(502, "bad gateway")
    p = start(proxies, lt, upstream, "-max-retries", "0", "-queue", "-queue-retry-delay", "20",
              "-queue-max-wait", "0.15", "-queue-max-retries", "1000")
    status, headers, body = p.post(HELLO)
    assert status == 529 and body["error"]["type"] == "overloaded_error"
    assert "waited in the queue" in body["error"]["message"] and "bad gateway" in body["error"]["message"]
    assert int(headers["retry-after"]) > 0
    assert len(upstream.requests) >= 2     # the first try, then at least one try from the queue
    q = p.metrics()["queue"]
    assert q["timeouts"] == 1 and q["depth"] == 0


def test_queue_retries_used_up_answer_529_overloaded(lt, upstream, proxies):
    refuse(lt, upstream)   # connection refused: a 502 api_error without the queue
    p = start(proxies, lt, upstream, "-max-retries", "0", "-queue", "-queue-retry-delay", "20",
              "-queue-max-wait", "10", "-queue-max-retries", "2")
    status, headers, body = p.post(HELLO)
    assert status == 529 and body["error"]["type"] == "overloaded_error"
    assert "after 2 retries in the queue" in body["error"]["message"]
    assert "could not connect" in body["error"]["message"]
    assert int(headers["retry-after"]) > 0
    q = p.metrics()["queue"]
    assert q["exhausted"] == 1 and q["depth"] == 0


def test_client_errors_skip_the_queue(lt, upstream, proxies):
    upstream.script = lambda seen: err(401, "Incorrect API key")
    p = start(proxies, lt, upstream, "-queue", "-queue-retry-delay", "20", "-queue-max-wait", "5")
    status, _, body = p.post(HELLO)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert len(upstream.requests) == 1 and p.metrics()["queue"]["enqueued"] == 0


def test_client_leaving_the_queue_is_removed(lt, upstream, proxies):
    upstream.script = lambda seen: err(503)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-queue", "-queue-max-size", "1",
              "-queue-retry-delay", "20", "-queue-max-wait", "10", "-queue-max-retries", "1000")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    body = json.dumps(HELLO).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: p.metrics()["queue"]["depth"] == 1, "the request to be queued")
    s.close()
    wait_for(lambda: p.metrics()["queue"]["depth"] == 0, "the departed client to leave the queue")
    assert p.metrics()["queue"]["cancelled"] == 1
    seen = len(upstream.requests)
    time.sleep(0.1)   # five queue rounds: a departed request is no longer re-tried upstream
    assert len(upstream.requests) == seen
    # its slot is free again (max size 1): the next request queues instead of being rejected
    upstream.script = Script(err(503), err(503))
    status, _, msg = p.post(HELLO)
    assert status == 200 and msg["type"] == "message"
    assert p.metrics()["queue"]["rejected_full"] == 0


def test_queue_with_breaker_open_waits_for_recovery(lt, upstream, proxies, pool):
    upstream.script = lambda seen: err(503)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-circuit-breaker", "-cb-threshold", "1",
              "-cb-recovery", "1", "-cb-timeout", "0.1", "-queue", "-queue-retry-delay", "20",
              "-queue-max-wait", "10", "-queue-max-retries", "1000")
    futures = [pool.submit(p.post, HELLO) for _ in range(4)]
    wait_for(lambda: p.metrics()["queue"]["depth"] == 4, "four queued requests")
    assert p.metrics()["circuit_breakers"]["custom"] in ("open", "half_open")
    upstream.script = lambda seen: json_reply(completion())
    results = [f.result(5) for f in futures]
    assert [r[0] for r in results] == [200] * 4
    assert p.metrics()["circuit_breakers"]["custom"] == "closed"
    assert p.metrics()["queue"]["served"] == 4


# ------------------------------------------------------------------------------------------ fallback


@pytest.fixture
def second(lt):
    up = FakeUpstream(lt)
    yield up
    up.close()


def test_fallback_to_a_second_upstream(lt, upstream, second, proxies):
    upstream.script = lambda seen: err(503)
    p = start(proxies, lt, upstream, "-max-retries", "1", "-fallback",
              CLASP_FALLBACK_PROVIDER="custom", CLASP_FALLBACK_BASE_URL=second.url,
              CLASP_FALLBACK_MODEL="backup-model", CLASP_FALLBACK_API_KEY="fb-key")
    status, headers, msg = p.post(HELLO)
    assert status == 200 and msg["model"] == "claude-sonnet-4-5"
    assert headers["x-clasp-provider"] == "fallback:custom"
    assert len(upstream.requests) == 2          # the primary was retried first
    assert len(second.requests) == 1
    assert second.requests[0].json()["model"] == "backup-model"
    assert second.requests[0].headers["authorization"] == "Bearer fb-key"
    assert "authorization" not in upstream.requests[0].headers
    assert p.metrics()["fallbacks"] == 1
    # healthy primary again: no fallback
    upstream.script = lambda seen: json_reply(completion())
    status, headers, _ = p.post(HELLO)
    assert status == 200 and headers["x-clasp-provider"] == "custom"
    assert len(second.requests) == 1 and p.metrics()["fallbacks"] == 1


def test_default_fallback_uses_other_providers_with_credentials(lt, upstream, second, proxies):
    refuse(lt, upstream)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-fallback",
              OPENAI_API_KEY="sk-fallback", OPENAI_BASE_URL=second.url)
    status, headers, _ = p.post(HELLO)
    assert status == 200 and headers["x-clasp-provider"] == "fallback:openai"
    assert second.requests[0].headers["authorization"] == "Bearer sk-fallback"
    assert second.requests[0].json()["model"] == "gpt-4o"


def test_fallback_is_not_used_for_client_errors(lt, upstream, second, proxies):
    upstream.script = lambda seen: err(400, "bad request")
    p = start(proxies, lt, upstream, "-fallback", CLASP_FALLBACK_PROVIDER="custom",
              CLASP_FALLBACK_BASE_URL=second.url)
    assert p.post(HELLO)[0] == 400
    assert second.requests == [] and p.metrics()["fallbacks"] == 0


def test_open_breaker_goes_straight_to_the_fallback(lt, upstream, second, proxies):
    upstream.script = lambda seen: err(500)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-fallback", "-circuit-breaker", "-cb-threshold", "1",
              "-cb-timeout", "30", CLASP_FALLBACK_PROVIDER="custom", CLASP_FALLBACK_BASE_URL=second.url)
    for _ in range(3):
        status, headers, _ = p.post(HELLO)
        assert status == 200 and headers["x-clasp-provider"] == "fallback:custom"
    assert len(upstream.requests) == 1          # opened after one failure; later requests skip it
    assert len(second.requests) == 3
    m = p.metrics()
    assert m["circuit_breakers"] == {"custom": "open", "fallback:custom": "closed"}
    assert m["fallbacks"] == 3


def test_all_targets_down_reports_the_last_error(lt, upstream, second, proxies):
    upstream.script = lambda seen: err(503)
    second.script = lambda seen: err(500, "fallback broke")
    p = start(proxies, lt, upstream, "-max-retries", "0", "-fallback", CLASP_FALLBACK_PROVIDER="custom",
              CLASP_FALLBACK_BASE_URL=second.url)
    status, _, body = p.post(HELLO)
    assert status == 500 and "fallback broke" in body["error"]["message"]
    assert len(upstream.requests) == 1 and len(second.requests) == 1


# ------------------------------------------------------------------------------------------ tiers


@pytest.fixture
def three(lt):
    ups = [FakeUpstream(lt) for _ in range(3)]
    yield ups
    for up in ups:
        up.close()


def test_tier_routing_to_three_upstreams(lt, three, proxies):
    opus, sonnet, haiku = three
    p = Proxy(lt, ["-provider", "openai", "-multi-provider", *FAST], {
        "OPENAI_API_KEY": "sk-main", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",   # never used
        "CUSTOM_API_KEY": "ck-custom",
        "CLASP_OPUS_PROVIDER": "custom", "CLASP_OPUS_BASE_URL": opus.url, "CLASP_OPUS_MODEL": "big",
        "CLASP_SONNET_PROVIDER": "openai", "CLASP_SONNET_BASE_URL": sonnet.url, "CLASP_SONNET_MODEL": "mid",
        "CLASP_HAIKU_PROVIDER": "openrouter", "CLASP_HAIKU_BASE_URL": haiku.url,
        "CLASP_HAIKU_MODEL": "small", "CLASP_HAIKU_API_KEY": "sk-haiku"})
    proxies.append(p)
    expected = [("claude-opus-4-1", opus, "opus:custom", "big", "Bearer ck-custom"),
                ("claude-sonnet-4-5", sonnet, "sonnet:openai", "mid", "Bearer sk-main"),
                ("claude-haiku-4-5", haiku, "haiku:openrouter", "small", "Bearer sk-haiku")]
    for model, up, name, upstream_model, auth in expected:
        status, headers, msg = p.post({**HELLO, "model": model})
        assert status == 200 and msg["model"] == model
        assert headers["x-clasp-provider"] == name
        assert len(up.requests) == 1
        assert up.requests[0].json()["model"] == upstream_model
        assert up.requests[0].headers["authorization"] == auth   # keys inherit from the provider's variables


def test_tiers_have_independent_breakers_and_retries(lt, three, proxies):
    opus, sonnet, haiku = three
    opus.script = lambda seen: err(503)
    sonnet.script = Script(err(503))
    p = Proxy(lt, ["-provider", "custom", "-multi-provider", "-circuit-breaker", "-cb-threshold", "1",
                   "-max-retries", "1", *FAST], {
        "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1",
        "CLASP_OPUS_PROVIDER": "custom", "CLASP_OPUS_BASE_URL": opus.url,
        "CLASP_SONNET_PROVIDER": "custom", "CLASP_SONNET_BASE_URL": sonnet.url,
        "CLASP_HAIKU_PROVIDER": "custom", "CLASP_HAIKU_BASE_URL": haiku.url})
    proxies.append(p)
    assert p.post({**HELLO, "model": "claude-opus-4-1"})[0] == 529
    assert len(opus.requests) == 2
    status, _, body = p.post({**HELLO, "model": "claude-opus-4-1"})
    assert status == 503 and "opus:custom" in body["error"]["message"] and len(opus.requests) == 2
    # sonnet's own retry budget absorbs its single failure; haiku is untouched by opus's outage
    assert p.post({**HELLO, "model": "claude-sonnet-4-5"})[0] == 200
    assert p.post({**HELLO, "model": "claude-haiku-4-5"})[0] == 200
    assert len(sonnet.requests) == 2 and len(haiku.requests) == 1
    assert p.metrics()["circuit_breakers"] == {"custom": "closed", "opus:custom": "open",
                                              "sonnet:custom": "closed", "haiku:custom": "closed"}


# ------------------------------------------------------------------------------------------ combined


def test_queue_breaker_fallback_as_one_pipeline(lt, upstream, second, proxies, pool):
    # both targets down: requests queue and both breakers open; when only the fallback
    # recovers, the queued requests complete there
    upstream.script = lambda seen: err(503)
    refuse(lt, second)
    p = start(proxies, lt, upstream, "-max-retries", "0", "-queue", "-circuit-breaker", "-fallback",
              "-cb-threshold", "2", "-cb-timeout", "0.1", "-queue-retry-delay", "20", "-queue-max-wait", "10",
              "-queue-max-retries", "1000",
              CLASP_FALLBACK_PROVIDER="custom", CLASP_FALLBACK_BASE_URL=second.url)
    futures = [pool.submit(p.post, HELLO) for _ in range(3)]
    wait_for(lambda: p.metrics()["queue"]["depth"] == 3, "three queued requests")
    wait_for(lambda: p.metrics()["circuit_breakers"]["fallback:custom"] == "open", "the fallback breaker to open")
    assert p.metrics()["circuit_breakers"]["custom"] in ("open", "half_open")
    assert not any(f.done() for f in futures)
    listen_again(lt, second)
    results = [f.result(5) for f in futures]
    assert [(r[0], r[1]["x-clasp-provider"]) for r in results] == [(200, "fallback:custom")] * 3
    assert len(second.requests) >= 3
    m = p.metrics()
    assert m["queue"]["served"] == 3 and m["queue"]["depth"] == 0
    assert m["fallbacks"] >= 3
    assert m["circuit_breakers"]["fallback:custom"] == "closed"


# ------------------------------------------------------------------------------------------ outage bench


def test_outage_bench_loses_no_request():
    # a queue smaller than the client count: some requests wait out the outage, the rest are
    # told explicitly (529 queue full); none may vanish or fail otherwise
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "outage.py"), "--outage-seconds", "1.5",
                          "--clients", "10", "--queue-max-size", "5", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["lost"] == 0 and counts["other_errors"] == 0, counts
    assert counts["completed"] + counts["overloaded"] == counts["total"]
    assert counts["overloaded"] > 0
    # requests sent during the outage waited in the queue and completed after recovery
    assert counts["completed_after_outage_wait"] > 0


# ------------------------------------------------------------------------------------------ in-process


class _Collect:
    """Minimal Responder stand-in: records the status and body of a whole response."""
    started = False
    closed = False

    async def send(self, status: int, headers: list, body: bytes) -> None:
        self.started, self.status, self.body = True, status, json.loads(body)


def test_unexpected_error_in_a_half_open_probe_frees_the_probe_slot():
    from clasp.app import App
    from clasp.config import load_config
    from clasp.server.http import Request
    from clasp.upstream.client import ConnectError

    class Client:
        def __init__(self) -> None:
            self.calls = 0

        async def request(self, method, url, headers, body):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("bug in the client")    # the half-open probe dies unexpectedly
            raise ConnectError("cannot connect")

        async def close(self) -> None:
            pass

    cfg, _ = load_config(["-provider", "custom", "-max-retries", "0", "-circuit-breaker", "-cb-threshold", "1",
                          "-cb-timeout", "0.001", "-access-log=false", "-probe-upstream=false"],
                         {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", "HOME": "/nonexistent-clasp-test-home"})
    client = Client()
    app = App(cfg, client=client)
    req = Request("POST", "/v1/messages", "", {}, json.dumps(HELLO).encode(), "127.0.0.1")

    async def scenario() -> list:
        out = []
        for _ in range(3):
            resp = _Collect()
            try:
                await app.messages(req, resp, "c")
            except RuntimeError:
                pass
            out.append(getattr(resp, "status", None))
            await asyncio.sleep(0.01)   # past the 1 ms breaker timeout: half-open
        return out

    statuses = asyncio.run(scenario())
    # the third request is a new probe that reaches the client, not a 503 from a stuck breaker
    assert statuses == [502, None, 502]
    assert client.calls == 3
