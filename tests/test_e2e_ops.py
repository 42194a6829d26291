"""End to end through real sockets: auth, rate limiting, response cache, metrics and logs.

client -> proxy (clasp.server.run.serve in-process) -> fake OpenAI-compatible upstream, all on loopback.
Time-dependent behaviour (bucket refill, cache TTL) uses a fake clock injected into the App.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import promparse
from harness import FakeUpstream, LoopThread, Proxy, Reply, completion, json_reply, parse_sse, sse_reply, text_chunks

ROOT = Path(__file__).resolve().parent.parent

PROXY_KEY = "proxy-key-Q7fW2xLk9"          # what clients must send (-auth-api-key)
PROVIDER_KEY = "prov-key-Zt4Hc8Vn3Rm1"     # the upstream's key: not sk-shaped, so only config-based redaction catches it
FALLBACK_KEY = "fb-key-Jw6Pq2Ds5Ty8"
SECRETS = (PROXY_KEY, PROVIDER_KEY, FALLBACK_KEY)

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
DET = {**HELLO, "temperature": 0}            # cacheable: non-streaming, temperature explicitly 0
TOOLS = [{"name": "Read", "description": "read a file",
          "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]
KEY_HDR = {"x-api-key": PROXY_KEY}
BEARER_HDR = {"authorization": f"Bearer {PROXY_KEY}"}


# ------------------------------------------------------------------------------------------ fixtures

def start(proxies: list, lt, upstream, *argv, **env) -> Proxy:
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *argv],
              {"CUSTOM_BASE_URL": upstream.url, **env})
    proxies.append(p)
    return p


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clocked(monkeypatch):
    """Proxies started in this test run with a fake clock; yields (clock, list of App instances)."""
    import clasp.app

    clock = FakeClock()
    apps: list = []
    real = clasp.app.App

    class ClockedApp(real):
        def __init__(self, cfg, **kw):
            kw["clock"] = clock
            super().__init__(cfg, **kw)
            apps.append(self)

    monkeypatch.setattr(clasp.app, "App", ClockedApp)   # clasp.server.run.serve imports it at call time
    return clock, apps


def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    """Poll (bounded): the proxy books a request just after its last byte reached the client."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def get_json(p: Proxy, path: str, headers: dict | None = None) -> dict:
    status, _, raw = p.request("GET", path, headers=headers)
    assert status == 200, raw
    return json.loads(raw)


def prom_text(p: Proxy, headers: dict | None = None) -> str:
    status, hdrs, raw = p.request("GET", "/metrics/prometheus", headers=headers)
    assert status == 200, raw
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4")
    return raw.decode()


def log_lines(p: Proxy) -> list[str]:
    return p.log.getvalue().splitlines()


def access_lines(p: Proxy) -> list[str]:
    return [line for line in log_lines(p) if line.startswith("time=")]


def kv(line: str) -> dict[str, str]:
    """Parse a text access line (values here never contain spaces)."""
    return dict(part.split("=", 1) for part in line.split(" "))


def request_from(p: Proxy, source: str, method: str, path: str, body=None, headers: dict | None = None):
    """Like Proxy.request, but from another loopback source address (another client host)."""
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=20, source_address=(source, 0))
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, raw
    finally:
        conn.close()


def second_loopback_address() -> str:
    s = socket.socket()
    try:
        s.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not usable as a source address here")
    finally:
        s.close()
    return "127.0.0.2"


def tool_call_completion() -> dict:
    return completion(None, tool_calls=[{"id": "call_1", "type": "function",
                                         "function": {"name": "Read", "arguments": '{"file_path": "a.py"}'}}],
                      finish="tool_calls")


def tool_call_chunks() -> list[dict]:
    return [
        {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "Read", "arguments": ""}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"file_path": "b.py"}'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}},
    ]


def pick(lines: list[dict], **match) -> dict:
    """The one access line whose fields include `match`."""
    found = [line for line in lines if all(line.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, lines)
    return found[0]


def assert_no_secrets(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a configured key leaked into {where}"


# ------------------------------------------------------------------------------------------ auth

def test_auth_endpoint_table_and_401_format(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", PROXY_KEY)
    count = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "foo"}]}
    # / is always open; /health anonymous by default
    assert p.request("GET", "/")[0] == 200
    assert p.request("GET", "/health")[0] == 200
    # everything else needs the key, by either header
    for method, path, body in [("GET", "/metrics", None), ("GET", "/metrics/prometheus", None),
                               ("POST", "/v1/messages", HELLO), ("POST", "/v1/messages?beta=true", HELLO),
                               ("POST", "/v1/messages/count_tokens?beta=true", count),
                               ("POST", "/prefix/v1/messages", HELLO)]:
        for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"},
                        {"authorization": PROXY_KEY}):   # no Bearer scheme: not accepted
            status, hdrs, raw = p.request(method, path, body, headers=headers)
            assert status == 401, (path, headers)
            err = json.loads(raw)
            assert err["type"] == "error" and err["error"]["type"] == "authentication_error"
            assert hdrs["x-should-retry"] == "false"
            assert_no_secrets(raw.decode(), "a 401 body")
        for headers in (KEY_HDR, BEARER_HDR, {"authorization": f"bearer {PROXY_KEY}"}):
            assert p.request(method, path, body, headers=headers)[0] == 200, (path, headers)
    # rejected requests never reached the upstream: only the 3 authorized message requests per path
    assert len(upstream.requests) == 3 * 3


def test_auth_anonymous_switches_from_env(lt, upstream, proxies):
    p = start(proxies, lt, upstream, CLASP_AUTH="true", CLASP_AUTH_API_KEY=PROXY_KEY,
              CLASP_AUTH_ALLOW_ANONYMOUS_HEALTH="false", CLASP_AUTH_ALLOW_ANONYMOUS_METRICS="true")
    assert p.request("GET", "/")[0] == 200
    assert p.request("GET", "/health")[0] == 401
    assert p.request("GET", "/health", headers=KEY_HDR)[0] == 200
    assert p.request("GET", "/metrics")[0] == 200
    assert p.request("GET", "/metrics/prometheus")[0] == 200
    assert p.request("POST", "/v1/messages", HELLO)[0] == 401
    assert p.request("POST", "/v1/messages", HELLO, headers=BEARER_HDR)[0] == 200


def test_auth_disabled_by_default(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    assert p.request("GET", "/metrics")[0] == 200
    assert p.request("POST", "/v1/messages", HELLO)[0] == 200


@pytest.mark.parametrize("argv, env", [(["-auth"], {}), ([], {"CLASP_AUTH": "true"}),
                                       (["-auth", "-auth-api-key", ""], {})])
def test_auth_without_key_is_a_startup_error(argv, env):
    run_env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home",
               "PYTHONPATH": str(ROOT), "PROVIDER": "custom", "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", **env}
    out = subprocess.run([sys.executable, "-m", "clasp", "-port", "0", *argv], cwd=ROOT, env=run_env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "CLASP_AUTH_API_KEY" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("stream", [False, True])
def test_client_key_is_never_forwarded_upstream(lt, upstream, proxies, stream):
    if stream:
        upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"]))
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", PROXY_KEY, CUSTOM_API_KEY=PROVIDER_KEY)
    for headers in (KEY_HDR, BEARER_HDR, {**KEY_HDR, **BEARER_HDR}):
        status, _, _ = p.post({**HELLO, "stream": stream}, headers=headers)
        assert status == 200
        seen = upstream.requests[-1]
        assert seen.headers["authorization"] == f"Bearer {PROVIDER_KEY}"   # the provider key, not the client's
        assert "x-api-key" not in seen.headers
        assert PROXY_KEY not in json.dumps(seen.headers) and PROXY_KEY.encode() not in seen.body


# ------------------------------------------------------------------------------------------ rate limit

SLOW_REFILL = ["-rate-limit", "-rate-limit-burst", "2", "-rate-limit-requests", "1", "-rate-limit-window", "3600"]


def test_rate_limit_burst_then_429_with_claude_code_headers(lt, upstream, proxies):
    p = start(proxies, lt, upstream, *SLOW_REFILL)
    remaining = []
    for body in (HELLO, {**HELLO, "stream": True}):
        if body.get("stream"):
            upstream.script = lambda seen: sse_reply(text_chunks(["x"]))
        status, headers, _ = p.post(body)
        assert status == 200
        assert headers["anthropic-ratelimit-requests-limit"] == "2"
        remaining.append(headers["anthropic-ratelimit-requests-remaining"])
        assert "retry-after" not in headers
    assert remaining == ["1", "0"]
    calls = len(upstream.requests)
    for body in (HELLO, {**HELLO, "stream": True}):          # over the limit: JSON 429, also for streams
        status, headers, err = p.post(body)
        assert status == 429
        assert headers["content-type"].startswith("application/json")
        assert err["type"] == "error" and err["error"]["type"] == "rate_limit_error"
        assert 3000 <= int(headers["retry-after"]) <= 3600     # one request per hour refills slowly
        assert headers["anthropic-ratelimit-requests-limit"] == "2"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        reset = time.strptime(headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
        assert reset > time.gmtime(time.time() + 3000)         # RFC 3339, when the bucket is full again
        assert headers["request-id"].startswith("req_")
    assert len(upstream.requests) == calls                     # rejected before any upstream call
    m = get_json(p, "/metrics")
    assert m["requests"]["errors"] == 2 and m["requests"]["successful"] == 2
    wait_for(lambda: len(access_lines(p)) == 5, "5 access lines")
    assert [kv(line)["status"] for line in access_lines(p)] == ["200", "200", "429", "429", "200"]


def test_rate_limit_from_env_and_other_endpoints_unaffected(lt, upstream, proxies):
    p = start(proxies, lt, upstream, CLASP_RATE_LIMIT="1", CLASP_RATE_LIMIT_BURST="1",
              CLASP_RATE_LIMIT_REQUESTS="1", CLASP_RATE_LIMIT_WINDOW="3600")
    assert p.post(HELLO)[0] == 200
    assert p.post(HELLO)[0] == 429
    assert p.request("GET", "/health")[0] == 200
    assert p.request("GET", "/metrics")[0] == 200


def test_rate_limit_is_per_client_address_without_auth(lt, upstream, proxies):
    other = second_loopback_address()
    p = start(proxies, lt, upstream, *SLOW_REFILL)
    assert [p.post(HELLO)[0] for _ in range(3)] == [200, 200, 429]
    # another client host has its own bucket
    assert [request_from(p, other, "POST", "/v1/messages", HELLO)[0] for _ in range(3)] == [200, 200, 429]
    assert p.post(HELLO)[0] == 429


def test_rate_limit_is_per_api_key_with_auth(lt, upstream, proxies):
    other = second_loopback_address()
    p = start(proxies, lt, upstream, *SLOW_REFILL, "-auth", "-auth-api-key", PROXY_KEY)
    # unauthenticated requests are rejected first and do not drain the key's bucket
    for _ in range(5):
        assert p.post(HELLO, headers={"x-api-key": "wrong"})[0] == 401
    assert p.post(HELLO, headers=KEY_HDR)[0] == 200
    # the same key from another host draws from the same bucket, whichever header carries it
    assert request_from(p, other, "POST", "/v1/messages", HELLO, BEARER_HDR)[0] == 200
    status, headers, raw = request_from(p, other, "POST", "/v1/messages", HELLO, KEY_HDR)
    assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit_error"
    assert p.post(HELLO, headers=BEARER_HDR)[0] == 429


def test_rate_limit_refill_and_idle_bucket_eviction(lt, upstream, proxies, clocked):
    clock, apps = clocked
    other = second_loopback_address()
    p = start(proxies, lt, upstream, "-rate-limit", "-rate-limit-burst", "2", "-rate-limit-requests", "60",
              "-rate-limit-window", "60")                      # 1 request per second sustained
    limiter = apps[-1].limiter
    assert [p.post(HELLO)[0] for _ in range(3)] == [200, 200, 429]
    status, headers, _ = p.post(HELLO)
    assert status == 429 and headers["retry-after"] == "1"
    clock.advance(1.0)
    assert p.post(HELLO)[0] == 200
    assert p.post(HELLO)[0] == 429
    assert len(limiter) == 1
    # the first client goes idle; once its bucket is full again it is dropped when others arrive
    clock.advance(30.0)
    assert request_from(p, other, "POST", "/v1/messages", HELLO)[0] == 200
    assert len(limiter) == 1
    # and coming back it starts with a full burst, as a new client would
    assert [p.post(HELLO)[0] for _ in range(3)] == [200, 200, 429]


# ------------------------------------------------------------------------------------------ cache

def test_cache_hit_and_miss_for_deterministic_requests(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-cache")
    status, h1, first = p.post(DET)
    assert status == 200 and h1["x-clasp-cache"] == "MISS"
    status, h2, second = p.post(DET)
    assert status == 200 and h2["x-clasp-cache"] == "HIT"
    assert second == first and len(upstream.requests) == 1
    assert h2["x-clasp-provider"] == "custom" and h2["request-id"] != h1["request-id"]
    # a different request, or another requested model, is a different entry
    assert p.post({**DET, "messages": [{"role": "user", "content": "Hello"}]})[1]["x-clasp-cache"] == "MISS"
    status, h, msg = p.post({**DET, "model": "claude-haiku-4-5"})
    assert h["x-clasp-cache"] == "MISS" and msg["model"] == "claude-haiku-4-5"
    assert len(upstream.requests) == 3
    # temperature missing (Anthropic default 1.0) or > 0: not cacheable, no header
    for body in (HELLO, HELLO, {**HELLO, "temperature": 0.7}):
        status, h, _ = p.post(body)
        assert status == 200 and "x-clasp-cache" not in h
    assert len(upstream.requests) == 6
    m = get_json(p, "/metrics")["cache"]
    assert m == {"enabled": True, "size": 3, "max_size": 1000, "hits": 1, "misses": 3, "hit_rate": "25.00%"}
    wait_for(lambda: len(access_lines(p)) == 8, "access lines")
    caches = [kv(line)["cache"] for line in access_lines(p) if kv(line)["path"] == "/v1/messages"]
    assert caches == ["MISS", "HIT", "MISS", "MISS", "-", "-", "-"]


def test_cache_never_stores_streaming_requests(lt, upstream, proxies):
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"]))
    p = start(proxies, lt, upstream, CLASP_CACHE="true")
    for _ in range(2):
        status, headers, events = p.post({**DET, "stream": True})
        assert status == 200 and "x-clasp-cache" not in headers
        assert events[-1][0] == "message_stop"
    assert len(upstream.requests) == 2
    assert get_json(p, "/metrics")["cache"]["size"] == 0
    upstream.script = lambda seen: json_reply(completion())
    assert p.post(DET)[1]["x-clasp-cache"] == "MISS"          # the streams left nothing behind


@pytest.mark.parametrize("failure", [
    json_reply({"error": {"message": "boom"}}, status=500),
    json_reply({"error": {"message": "bad request"}}, status=400),
    json_reply({"error": {"message": "quota"}}, status=200),            # an error under HTTP 200
])
def test_cache_never_stores_errors(lt, upstream, proxies, failure):
    upstream.script = lambda seen: failure
    p = start(proxies, lt, upstream, "-cache", "-max-retries", "0")
    for _ in range(2):
        status, _, body = p.post(DET)
        assert status >= 400 and body["type"] == "error"
    assert len(upstream.requests) == 2                          # the error was not served from cache
    upstream.script = lambda seen: json_reply(completion())
    assert p.post(DET)[1]["x-clasp-cache"] == "MISS"
    assert p.post(DET)[1]["x-clasp-cache"] == "HIT"
    assert len(upstream.requests) == 3


def test_cache_ttl_and_lru_eviction(lt, upstream, proxies, clocked):
    clock, _ = clocked
    p = start(proxies, lt, upstream, "-cache", "-cache-max-size", "2", "-cache-ttl", "10")
    a, b, c = ({**DET, "messages": [{"role": "user", "content": t}]} for t in "abc")
    assert p.post(a)[1]["x-clasp-cache"] == "MISS"
    clock.advance(9.0)
    assert p.post(a)[1]["x-clasp-cache"] == "HIT"
    clock.advance(1.5)                                          # 10.5 s after it was stored
    assert p.post(a)[1]["x-clasp-cache"] == "MISS"
    assert p.post(b)[1]["x-clasp-cache"] == "MISS"
    assert p.post(a)[1]["x-clasp-cache"] == "HIT"               # a is now the most recently used
    assert p.post(c)[1]["x-clasp-cache"] == "MISS"              # evicts b (least recently used)
    assert p.post(a)[1]["x-clasp-cache"] == "HIT"
    assert p.post(b)[1]["x-clasp-cache"] == "MISS"
    assert get_json(p, "/metrics")["cache"]["size"] == 2
    assert promparse.value(promparse.parse(prom_text(p)), "clasp_cache_evictions_total") == 2


# ------------------------------------------------------------------------------------------ metrics

def test_metrics_count_streams_tools_tokens_errors_retries(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-max-retries", "1", "-retry-base-delay-ms", "1", "-cache",
              "-circuit-breaker")
    body_tools = {**HELLO, "tools": TOOLS}
    upstream.script = lambda seen: json_reply(tool_call_completion())
    assert p.post(body_tools)[0] == 200                                        # 1 tool call, 12/5 tokens
    upstream.script = lambda seen: sse_reply(tool_call_chunks())
    status, _, events = p.post({**body_tools, "stream": True})                 # 1 tool call, 30/9 tokens
    assert status == 200 and any(d.get("content_block", {}).get("type") == "tool_use" for _, d in events)
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"]))
    assert p.post({**HELLO, "stream": True})[0] == 200                         # 20/2 tokens
    upstream.script = lambda seen: json_reply({"error": {"message": "bad"}}, status=400)
    assert p.post(HELLO)[0] == 400                                             # not retried
    upstream.script = lambda seen: json_reply({"error": {"message": "boom"}}, status=500)
    assert p.post({**HELLO, "model": "claude-haiku-4-5"})[0] == 500            # retried once
    wait_for(lambda: get_json(p, "/metrics")["requests"]["total"] == 5, "5 requests booked")
    m = get_json(p, "/metrics")
    assert m["requests"] == {"total": 5, "successful": 3, "errors": 2, "streaming": 2, "tool_calls": 2,
                             "success_rate": "60.00%"}
    assert set(m["performance"]) == {"avg_latency_ms", "requests_per_sec"}
    assert float(m["performance"]["avg_latency_ms"]) > 0
    assert m["uptime"].endswith("s")
    assert m["tokens"]["custom"]["claude-sonnet-4-5"] == {"requests": 4, "input_tokens": 62, "output_tokens": 16,
                                                              "upstream_model": "gpt-test"}
    assert m["upstream_errors"] == {"400": 1, "500": 2}
    assert m["retries"] == 1 and m["fallbacks"] == 0
    assert m["circuit_breakers"] == {"custom": "closed"}
    assert m["queue"] == {"enabled": False}
    assert m["cache"]["enabled"] is True

    fams = promparse.parse(prom_text(p))
    v = promparse.value
    labels = {"provider": "custom", "model": "claude-sonnet-4-5"}
    assert v(fams, "clasp_requests_total", **labels, status="200") == 3
    assert v(fams, "clasp_requests_total", **labels, status="400") == 1
    assert v(fams, "clasp_requests_total", provider="custom", model="claude-haiku-4-5", status="500") == 1
    assert v(fams, "clasp_streaming_requests_total", **labels) == 2
    assert v(fams, "clasp_tool_calls_total", **labels) == 2
    assert v(fams, "clasp_tokens_total", **labels, type="input") == 62
    assert v(fams, "clasp_tokens_total", **labels, type="output") == 16
    assert v(fams, "clasp_upstream_errors_total", provider="custom", status="500") == 2
    assert v(fams, "clasp_retries_total", provider="custom") == 1
    assert v(fams, "clasp_request_duration_seconds_count", **labels) == 4
    assert v(fams, "clasp_time_to_first_token_seconds_count", **labels) == 3   # every answered request
    assert v(fams, "clasp_circuit_breaker_state", target="custom", state="closed") == 1
    assert "clasp_queue_depth" not in fams


def test_metrics_fallback_and_open_breaker(lt, upstream, proxies):
    backup = FakeUpstream(lt, lambda seen: json_reply(completion("from backup")))
    try:
        upstream.script = lambda seen: json_reply({"error": {"message": "down"}}, status=503)
        p = start(proxies, lt, upstream, "-max-retries", "0", "-circuit-breaker", "-cb-threshold", "1",
                  "-fallback", "-fallback-provider", "custom", "-fallback-model", "backup-model",
                  CLASP_FALLBACK_BASE_URL=backup.url, CLASP_FALLBACK_API_KEY=FALLBACK_KEY,
                  CUSTOM_API_KEY=PROVIDER_KEY)
        status, headers, msg = p.post(HELLO)
        assert status == 200 and msg["content"][0]["text"] == "from backup"
        assert headers["x-clasp-provider"] == "fallback:custom"
        assert backup.requests[-1].headers["authorization"] == f"Bearer {FALLBACK_KEY}"
        calls = len(upstream.requests)
        assert p.post(HELLO)[0] == 200                      # primary's breaker is open: not even tried
        assert len(upstream.requests) == calls
        m = get_json(p, "/metrics")
        assert m["fallbacks"] == 2 and m["upstream_errors"] == {"503": 1}
        assert m["circuit_breakers"] == {"custom": "open", "fallback:custom": "closed"}
        assert m["tokens"]["fallback:custom"]["claude-sonnet-4-5"]["requests"] == 2
        text = prom_text(p)
        fams = promparse.parse(text)
        assert promparse.value(fams, "clasp_fallbacks_total", **{"from": "custom", "to": "fallback:custom"}) == 2
        assert promparse.value(fams, "clasp_circuit_breaker_state", target="custom", state="open") == 1
        assert promparse.value(fams, "clasp_circuit_breaker_state", target="custom", state="closed") == 0
        assert_no_secrets(text + json.dumps(m) + p.log.getvalue(), "metrics or logs")
    finally:
        backup.close()


def test_metrics_show_queue_depth_while_a_request_waits(lt, upstream, proxies):
    state = {"up": False}
    upstream.script = lambda seen: (json_reply(completion()) if state["up"]
                                    else json_reply({"error": {"message": "overloaded"}}, status=503))
    p = start(proxies, lt, upstream, "-queue", "-queue-retry-delay", "20", "-queue-max-retries", "1000",
              "-max-retries", "0")
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=p.post(HELLO)), daemon=True)
    t.start()
    try:
        wait_for(lambda: get_json(p, "/metrics")["queue"]["depth"] == 1, "a queued request")
        fams = promparse.parse(prom_text(p))
        assert promparse.value(fams, "clasp_queue_depth") == 1
    finally:
        state["up"] = True
        t.join(10)
    assert result["r"][0] == 200
    m = get_json(p, "/metrics")
    assert m["queue"]["depth"] == 0 and m["queue"]["served"] == 1
    assert m["upstream_errors"]["503"] >= 1


def test_metrics_endpoints_need_auth_but_never_show_keys(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", PROXY_KEY, CUSTOM_API_KEY=PROVIDER_KEY)
    assert p.post(HELLO, headers=KEY_HDR)[0] == 200
    text = prom_text(p, headers=KEY_HDR)
    promparse.parse(text)
    assert_no_secrets(text + json.dumps(get_json(p, "/metrics", headers=BEARER_HDR)), "metrics")


# ------------------------------------------------------------------------------------------ logs

def test_access_line_per_request_text(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", PROXY_KEY, "-cache")
    assert p.post(DET, headers=KEY_HDR)[0] == 200
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b", "c"]), delay=0.01)
    assert p.post({**HELLO, "stream": True}, path="/v1/messages?beta=true", headers=KEY_HDR)[0] == 200
    assert p.request("GET", "/health")[0] == 200
    assert p.post(HELLO)[0] == 401
    assert p.request("GET", "/nope")[0] == 404
    assert p.request("POST", "/v1/messages/count_tokens?key=leaky", HELLO, headers=KEY_HDR)[0] == 200
    wait_for(lambda: len(access_lines(p)) == 6, "6 access lines")
    lines = [kv(line) for line in access_lines(p)]    # streams finish booking a moment after their last byte
    whole, stream, health, denied, missing, count = (
        pick(lines, path="/v1/messages", cache="MISS"), pick(lines, path="/v1/messages", cache="-", status="200"),
        pick(lines, path="/health"), pick(lines, path="/v1/messages", status="401"), pick(lines, path="/nope"),
        pick(lines, path="/v1/messages/count_tokens"))
    assert whole["method"] == "POST" and whole["path"] == "/v1/messages" and whole["status"] == "200"
    assert whole["model"] == "claude-sonnet-4-5" and whole["upstream_model"] == "gpt-test"
    assert whole["provider"] == "custom" and whole["cache"] == "MISS"
    assert (whole["input_tokens"], whole["output_tokens"]) == ("12", "5")
    assert float(whole["latency_ms"]) >= float(whole["ttft_ms"]) >= 0
    assert (stream["input_tokens"], stream["output_tokens"]) == ("20", "3") and stream["cache"] == "-"
    assert 0 <= float(stream["ttft_ms"]) <= float(stream["latency_ms"])   # TTFT of a stream
    assert list(stream)[:12] == ["time", "method", "path", "status", "model", "upstream_model", "provider",
                                 "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cache"]
    assert (health["path"], health["status"]) == ("/health", "200")
    assert (denied["path"], denied["status"]) == ("/v1/messages", "401")
    assert (missing["path"], missing["status"]) == ("/nope", "404")
    assert count["status"] == "200" and "leaky" not in p.log.getvalue()
    assert_no_secrets(p.log.getvalue(), "the access log")


def test_access_log_json_lines(lt, upstream, proxies):
    p = start(proxies, lt, upstream, CLASP_LOG_FORMAT="json")
    assert p.post(HELLO)[0] == 200
    upstream.script = lambda seen: sse_reply(tool_call_chunks())
    assert p.post({**HELLO, "tools": TOOLS, "stream": True})[0] == 200
    upstream.script = lambda seen: json_reply({"error": {"message": "nope"}}, status=404)
    assert p.post(HELLO)[0] == 404
    assert p.request("GET", "/metrics")[0] == 200
    wait_for(lambda: len(log_lines(p)) == 4, "4 access lines")
    lines = [json.loads(line) for line in log_lines(p)]
    whole, stream, failed, metrics = (pick(lines, status=200, output_tokens=5), pick(lines, output_tokens=9),
                                      pick(lines, status=404), pick(lines, path="/metrics"))
    assert whole["status"] == 200 and whole["model"] == "claude-sonnet-4-5" and whole["provider"] == "custom"
    assert isinstance(whole["latency_ms"], float) and isinstance(whole["ttft_ms"], float)
    assert stream["status"] == 200 and isinstance(stream["ttft_ms"], float)
    assert (stream["input_tokens"], stream["output_tokens"]) == (30, 9)
    assert failed["status"] == 404 and failed["upstream_model"] == "gpt-test"
    assert metrics["path"] == "/metrics" and metrics["status"] == 200


def test_access_log_can_be_disabled(lt, upstream, proxies):
    p = start(proxies, lt, upstream, CLASP_ACCESS_LOG="false")
    assert p.post(HELLO)[0] == 200 and p.request("GET", "/health")[0] == 200
    assert p.log.getvalue() == ""


STAGES = ("incoming request", "upstream request", "upstream response", "translated response")


def stages_in(text: str) -> set[str]:
    return {s for s in STAGES if f"] {s}" in text or f"Z {s}" in text}


@pytest.mark.parametrize("stream", [False, True])
def test_debug_logs_all_four_stages_with_keys_redacted(lt, upstream, proxies, stream):
    if stream:
        upstream.script = lambda seen: sse_reply(text_chunks(["Hel", "lo"]))
    p = start(proxies, lt, upstream, "-debug", "-auth", "-auth-api-key", PROXY_KEY, CUSTOM_API_KEY=PROVIDER_KEY)
    status, _, out = p.post({**HELLO, "stream": stream}, headers={**KEY_HDR, **BEARER_HDR})
    assert status == 200
    wait_for(lambda: access_lines(p), "the access line")
    text = p.log.getvalue()
    assert stages_in(text) == set(STAGES)
    assert '"content": "Hi"' in text                                  # the incoming Anthropic body
    assert '"model":"gpt-test"' in text                               # the upstream body
    assert "x-api-key: [REDACTED]" in text and "authorization: [redacted]" in text.lower()
    if stream:
        assert 'data: {"id": "chatcmpl-s1"' in text                   # raw upstream chunks
        for event in ("message_start", "content_block_delta", "message_stop"):
            assert f"event: {event}" in text                           # the translated stream, start to end
        assert [e for e, _ in out][0] == "message_start"
    else:
        assert '"chatcmpl-test1"' in text and '"type":"message"' in text
    assert_no_secrets(text, "the debug log")


@pytest.mark.parametrize("env, expected", [
    ({"CLASP_DEBUG_REQUESTS": "true"}, {"incoming request", "upstream request"}),
    ({"CLASP_DEBUG_RESPONSES": "true"}, {"upstream response", "translated response"}),
    ({"CLASP_DEBUG": "true"}, set(STAGES)),
    ({}, set()),
])
def test_debug_sides(lt, upstream, proxies, env, expected):
    upstream.script = lambda seen: sse_reply(text_chunks(["a"]))
    p = start(proxies, lt, upstream, CUSTOM_API_KEY=PROVIDER_KEY, **env)
    assert p.post({**HELLO, "stream": True})[0] == 200
    wait_for(lambda: access_lines(p), "the access line")
    text = p.log.getvalue()
    assert stages_in(text) == expected
    assert_no_secrets(text, "the debug log")


def test_provider_key_never_leaks_even_when_the_upstream_echoes_it(lt, upstream, proxies):
    """Some servers echo the key they were sent; with -debug it must still appear nowhere."""
    echo = f"Incorrect API key provided: {PROVIDER_KEY}. Authorization: Bearer {PROVIDER_KEY}"
    upstream.script = lambda seen: json_reply({"error": {"message": echo}}, status=401)
    p = start(proxies, lt, upstream, "-debug", "-auth", "-auth-api-key", PROXY_KEY, "-max-retries", "0",
              CUSTOM_API_KEY=PROVIDER_KEY)
    status, headers, err = p.post(HELLO, headers=KEY_HDR)
    assert status == 401 and err["error"]["type"] == "authentication_error"
    assert "Incorrect API key provided" in err["error"]["message"]
    assert_no_secrets(json.dumps(err), "the client's error body")
    # a stream whose chunk carries the key (e.g. a misbehaving server echoing a header)
    upstream.script = lambda seen: sse_reply(text_chunks([f"key={PROVIDER_KEY}"]))
    assert p.post({**HELLO, "stream": True}, headers=BEARER_HDR)[0] == 200
    # an Azure-style target puts the key in an api-key header
    az = Proxy(lt, ["-provider", "azure", "-debug"], {"AZURE_API_KEY": PROVIDER_KEY, "AZURE_DEPLOYMENT_NAME": "dep",
                                                      "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{upstream.port}"})
    proxies.append(az)
    upstream.script = lambda seen: json_reply(completion())
    assert az.post(HELLO)[0] == 200
    assert upstream.requests[-1].headers["api-key"] == PROVIDER_KEY
    wait_for(lambda: len(access_lines(p)) == 2 and len(access_lines(az)) == 1, "access lines")
    for proxy, hdrs in ((p, KEY_HDR), (az, {})):
        everything = (proxy.log.getvalue() + prom_text(proxy, hdrs)
                      + json.dumps(get_json(proxy, "/metrics", hdrs)))
        assert "[REDACTED]" in proxy.log.getvalue()
        assert_no_secrets(everything, "logs or metrics")
    assert "api-key: [REDACTED]" in az.log.getvalue()
