"""Regressions found by the black-box suite (SDK-style client against the real proxy and a
scripted upstream), reproduced here with raw HTTP only."""

from __future__ import annotations

import json

import pytest

import clasp.pipeline.relay
from harness import Proxy, sse_reply


def custom_proxy(lt, upstream, *argv, **env):
    return Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *argv],
                 {"CUSTOM_BASE_URL": upstream.url, **env})


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-g", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


STREAM = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
          "messages": [{"role": "user", "content": "Hi"}]}


def test_stream_finishes_when_upstream_goes_silent_after_finish_reason(lt, upstream, monkeypatch):
    """An upstream that sends finish_reason and then neither usage, [DONE] nor EOF (it only
    ends the body much later) must not hold the client: the stream is finalized after a
    short silence (PROTOCOL §3.3), with the text it had and an estimated usage."""
    monkeypatch.setattr(clasp.pipeline.relay, "_FINISH_GRACE_S", 0.2)
    # content and finish_reason at once, then 20 s of silence before the body ends
    upstream.script = lambda seen: sse_reply(
        ['data: {"id":"c","choices":[{"index":0,"delta":{"content":"slow"}}]}\n\n'
         'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
         _chunk({})], delay=20)
    proxy = custom_proxy(lt, upstream)
    try:
        status, _, events = proxy.post(STREAM, timeout=10)
        assert status == 200
        types = [name for name, _ in events]
        assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert text == "slow"
        delta = [d for n, d in events if n == "message_delta"][0]
        assert delta["delta"]["stop_reason"] == "end_turn"
        assert delta["usage"]["output_tokens"] > 0
        # the proxy still serves the next request normally
        upstream.script = lambda seen: sse_reply(
            [_chunk({"role": "assistant", "content": "ok"}), _chunk({}, "stop"),
             {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}])
        status, _, events = proxy.post(STREAM, timeout=10)
        assert status == 200 and events[-1][0] == "message_stop"
    finally:
        proxy.stop()


def test_silence_before_finish_reason_is_not_cut(lt, upstream, monkeypatch):
    """The grace period applies only after finish_reason: a slow upstream mid-answer is waited for."""
    monkeypatch.setattr(clasp.pipeline.relay, "_FINISH_GRACE_S", 0.1)
    # 0.3 s between chunks (longer than the grace period) until finish_reason + usage
    upstream.script = lambda seen: sse_reply(
        [_chunk({"role": "assistant", "content": "a"}), _chunk({"content": "b"}),
         'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
         'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'], delay=0.3)
    proxy = custom_proxy(lt, upstream)
    try:
        status, _, events = proxy.post(STREAM, timeout=10)
        assert status == 200
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert text == "ab"
        delta = [d for n, d in events if n == "message_delta"][0]
        assert delta["usage"]["output_tokens"] == 2 and delta["usage"]["input_tokens"] == 3
    finally:
        proxy.stop()


HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}


def test_provider_model_syntax_for_unconfigured_provider_is_a_clean_400(lt, upstream):
    """"openrouter,some/model" with no OpenRouter key was an unhandled ConfigError: a bare 500
    "internal proxy error" without request_id, a traceback in the log, and a request counted as
    successful in /metrics."""
    proxy = custom_proxy(lt, upstream)
    try:
        status, headers, body = proxy.post({**HELLO, "model": "openrouter,some/model"})
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert "OPENROUTER_API_KEY" in body["error"]["message"]
        assert body["request_id"].startswith("req_") and headers["x-should-retry"] == "false"
        assert not upstream.requests
        status, _, raw = proxy.request("GET", "/metrics")
        requests = json.loads(raw)["requests"]
        assert requests["errors"] == 1 and requests["successful"] == 0
        assert "Traceback" not in proxy.log.getvalue()
    finally:
        proxy.stop()


def test_alias_to_provider_without_credentials_fails_at_start_up(lt, upstream):
    from clasp.config import ConfigError
    with pytest.raises(ConfigError, match="CLASP_MODEL_ALIASES: .*OPENROUTER_API_KEY"):
        custom_proxy(lt, upstream, CLASP_MODEL_ALIASES="claude-x=openrouter:foo/bar")


def test_provider_model_target_gets_its_own_breaker(lt, upstream):
    """A target made on demand by a "provider,model" request (outside the primary, fallback and
    tier targets) was never guarded by a circuit breaker, even with -circuit-breaker on."""
    from harness import FakeUpstream, json_reply
    other = FakeUpstream(lt, lambda seen: json_reply({"error": {"message": "down"}}, 500))
    proxy = custom_proxy(lt, upstream, "-circuit-breaker", "-cb-threshold", "1", "-max-retries", "0",
                         OPENROUTER_API_KEY="sk-or", OPENROUTER_BASE_URL=other.url)
    try:
        status, _, _ = proxy.post({**HELLO, "model": "openrouter,foo/bar"})
        assert status == 500 and len(other.requests) == 1
        assert other.requests[0].json()["model"] == "foo/bar"
        status, headers, body = proxy.post({**HELLO, "model": "openrouter,foo/bar"})
        assert status == 503 and body["error"]["type"] == "overloaded_error"   # open: fails fast
        assert len(other.requests) == 1 and "retry-after" in headers
        status, _, _ = proxy.post(HELLO)
        assert status == 200                                                # the primary is unaffected
        status, _, raw = proxy.request("GET", "/metrics")
        assert json.loads(raw)["circuit_breakers"] == {"custom": "closed", "openrouter": "open"}
    finally:
        proxy.stop()
        other.close()


def test_alias_to_another_provider(lt, upstream):
    from harness import FakeUpstream
    other = FakeUpstream(lt)
    proxy = custom_proxy(lt, upstream, CLASP_MODEL_ALIASES="claude-x=openrouter:foo/bar,claude-y=plain-model",
                         OPENROUTER_API_KEY="sk-or", OPENROUTER_BASE_URL=other.url)
    try:
        status, headers, body = proxy.post({**HELLO, "model": "claude-x"})
        assert status == 200 and body["model"] == "claude-x" and headers["x-clasp-provider"] == "openrouter"
        assert other.requests[-1].json()["model"] == "foo/bar"
        assert other.requests[-1].headers["authorization"] == "Bearer sk-or"
        status, headers, body = proxy.post({**HELLO, "model": "claude-y"})
        assert status == 200 and headers["x-clasp-provider"] == "custom"
        assert upstream.requests[-1].json()["model"] == "plain-model"
    finally:
        proxy.stop()
        other.close()
