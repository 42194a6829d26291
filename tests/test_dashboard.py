"""GET /dashboard (the live page) and the /metrics fields it draws from.

The page itself is drawn by a real browser in tests/real/test_dashboard_browser.py; here: what the
server sends (headers, auth, self-contained HTML) and the new metrics (active gauges, percentile
histograms, errors by type and the redacted ring of last errors)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading

from harness import Proxy, Reply, completion, json_reply, sse_reply, text_chunks

PROXY_KEY = "proxy-key-Q7fW2xLk9"
PROVIDER_KEY = "prov-key-Zt4Hc8Vn3Rm1"
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def start(proxies, lt, upstream, *argv, **env) -> Proxy:
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *argv], {"CUSTOM_BASE_URL": upstream.url, **env})
    proxies.append(p)
    return p


def inline(tag: str, html: str) -> str:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert m, tag
    return m.group(1)


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_dashboard_is_a_self_contained_page_with_a_strict_csp(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    status, headers, raw = p.request("GET", "/dashboard")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    csp = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    html = raw.decode()
    # inline script and style allowed by their hashes, and nothing else (no 'unsafe-inline')
    assert csp["script-src"] == sha256_source(inline("script", html))
    assert csp["style-src"] == sha256_source(inline("style", html))
    assert "unsafe" not in headers["content-security-policy"]
    # nothing from another host: no absolute or protocol-relative URL anywhere in the page
    assert not re.search(r"https?:", html, re.I)
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?!data:)[^"'\s>]*//""", html, re.I)
    assert not re.search(r"url\(|@import|<link(?![^>]*href=\"data:)|<img|<iframe", html, re.I)
    assert re.findall(r"""fetch\(\s*["']([^"']*)""", html) == ["/metrics"]
    # server data goes in as text only
    assert "innerHTML" not in html and "outerHTML" not in html and "insertAdjacentHTML" not in html
    assert "document.write" not in html and "eval(" not in html
    # HEAD: same headers, no body
    status, head_headers, body = p.request("HEAD", "/dashboard")
    assert status == 200 and body == b"" and head_headers["content-length"] == str(len(raw))
    assert p.request("POST", "/dashboard", {})[0] == 405


def test_dashboard_auth_follows_the_metrics_switch(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", PROXY_KEY)
    for headers in ({}, {"x-api-key": "wrong"}):
        status, hdrs, raw = p.request("GET", "/dashboard", headers=headers)
        assert status == 401
        assert json.loads(raw)["error"]["type"] == "authentication_error"
        assert p.request("GET", "/metrics", headers=headers)[0] == 401
    # a browser opening the page cannot send the key: it gets the page (code, no data) with the
    # 401, which asks for the key; the metrics it would show still need the key
    status, hdrs, raw = p.request("GET", "/dashboard", headers=HTML)
    assert status == 401 and hdrs["content-type"].startswith("text/html")
    assert "content-security-policy" in hdrs and b'id="keyform"' in raw
    assert PROXY_KEY.encode() not in raw
    assert p.request("GET", "/dashboard", headers={"x-api-key": PROXY_KEY})[0] == 200
    assert p.request("GET", "/metrics", headers={"x-api-key": PROXY_KEY})[0] == 200
    # the page sends the key it was given as x-api-key, kept in sessionStorage
    assert "sessionStorage" in raw.decode() and '"x-api-key": key' in raw.decode()
    p2 = start(proxies, lt, upstream, "-auth", "-auth-api-key", PROXY_KEY,
               CLASP_AUTH_ALLOW_ANONYMOUS_METRICS="true")
    assert p2.request("GET", "/dashboard")[0] == 200
    assert p2.request("GET", "/metrics")[0] == 200


def test_dashboard_is_listed_at_the_root(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    _, _, raw = p.request("GET", "/")
    assert "GET /dashboard" in json.loads(raw)["endpoints"]


def test_metrics_json_has_the_dashboard_fields_and_stays_compatible(lt, upstream, proxies):
    def script(seen):
        body = seen.json()
        if body["messages"][-1]["content"] == "fail":
            # an upstream that echoes the key it got: the dashboard must not show it
            return json_reply({"error": {"message": f"bad key {PROVIDER_KEY} and sk-abcdefghijklmnopqrstuv",
                                         "type": "invalid_request_error"}}, 400)
        if body.get("stream"):
            return sse_reply(text_chunks(["Hel", "lo"]))
        return json_reply(completion())
    upstream.script = script
    p = start(proxies, lt, upstream, CUSTOM_API_KEY=PROVIDER_KEY)
    assert p.request("POST", "/v1/messages", HELLO)[0] == 200
    assert p.request("POST", "/v1/messages", {**HELLO, "stream": True})[0] == 200
    fail = {**HELLO, "messages": [{"role": "user", "content": "fail"}]}
    assert p.request("POST", "/v1/messages", fail)[0] == 400
    assert p.request("POST", "/v1/messages", {"max_tokens": 5})[0] == 400   # no model: not routed
    m = p.metrics()
    # what was there keeps its name and shape
    for key in ("requests", "performance", "cache", "uptime", "tokens", "apis", "upstream_errors",
                "retries", "fallbacks", "circuit_breakers", "queue"):
        assert key in m
    assert m["requests"]["total"] == 4 and m["requests"]["errors"] == 2
    assert isinstance(m["uptime"], str) and m["uptime_s"] > 0
    assert m["active"] == {"requests": 0, "streams": 0}
    lat = m["latency"]
    assert lat["count"] == 4 and len(lat["counts"]) == len(lat["buckets_s"]) + 1
    assert lat["p50_ms"] is not None and lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert m["ttft"]["count"] >= 1 and m["ttft"]["p50_ms"] is not None
    assert m["errors"]["by_type"] == {"invalid_request_error": 2}
    assert m["errors"]["by_status"] == {"400": 2}
    recent = m["errors"]["recent"]
    assert [e["status"] for e in recent] == [400, 400]
    assert recent[0]["provider"] == "custom" and recent[0]["model"] == "claude-sonnet-4-5"
    assert recent[1]["model"] == "-" and "model" in recent[1]["message"]
    text = json.dumps(m)
    assert PROVIDER_KEY not in text and "sk-abcdefghijklmnopqrstuv" not in text
    assert "[REDACTED]" in recent[0]["message"]


def test_active_streams_count_the_streams_being_relayed(lt, upstream, proxies):
    release = threading.Event()

    def script(seen):
        return sse_reply(text_chunks(["a", "b", "c", "d"]), delay=0.4)
    upstream.script = script
    p = start(proxies, lt, upstream)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", p.request("POST", "/v1/messages",
                                                                          {**HELLO, "stream": True})))
    t.start()
    try:
        seen = None
        for _ in range(100):   # bounded: the stream lasts ~2 s
            seen = p.metrics()["active"]
            if seen["streams"] == 1:
                break
            release.wait(0.05)
        assert seen == {"requests": 1, "streams": 1}
    finally:
        t.join(20)
    assert result["r"][0] == 200
    for _ in range(100):   # the proxy may still be draining the upstream after the client's last byte
        seen = p.metrics()["active"]
        if seen["requests"] == 0:
            break
        release.wait(0.05)
    assert seen == {"requests": 0, "streams": 0}


def test_a_stream_that_ends_in_an_error_event_is_in_the_last_errors(lt, upstream, proxies):
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"]), drop_after=2, done=False)
    p = start(proxies, lt, upstream)
    status, _, raw = p.request("POST", "/v1/messages", {**HELLO, "stream": True})
    assert status == 200 and b"event: error" in raw
    m = p.metrics()
    assert m["errors"]["by_status"] == {"502": 1}
    (err,) = m["errors"]["recent"]
    assert err["type"] in m["errors"]["by_type"] and err["type"].endswith("_error")
    assert err["message"]


def test_error_ring_and_types_are_bounded_and_messages_redacted():
    from clasp.ops.metrics import MAX_ERROR_TYPES, RECENT_ERROR_CHARS, RECENT_ERRORS, Metrics
    from clasp.redaction import redact_variants
    m = Metrics(redact=lambda text: redact_variants(text, [PROVIDER_KEY]))
    for i in range(RECENT_ERRORS + MAX_ERROR_TYPES + 5):
        m.record_request("p", "m" * 500, 400 + i % 100, error_type=f"type_{i}_error",
                         error_message=("x" * 5000) + PROVIDER_KEY if i % 2 else f"Bearer abc{i}23456789 {PROVIDER_KEY}")
    m.record_request("p", "m", 499)   # a client that left: counted by what its status says
    j = m.to_json()
    assert len(j["errors"]["recent"]) == RECENT_ERRORS
    assert len(j["errors"]["by_type"]) <= MAX_ERROR_TYPES + 1 and j["errors"]["by_type"]["other"] > 0
    assert all(len(e["message"]) <= RECENT_ERROR_CHARS and len(e["model"]) <= 100 for e in j["errors"]["recent"])
    assert j["errors"]["recent"][-1]["type"] == "other"  # 499 -> client_closed, but the type set is full
    text = json.dumps(j)
    assert PROVIDER_KEY not in text and "abc1" not in text


def test_percentiles_come_from_the_histogram():
    from clasp.ops.metrics import Metrics
    m = Metrics()
    for latency in [0.05] * 50 + [0.7] * 40 + [20.0] * 10:
        m.record_request("p", "m", 200, latency_s=latency, ttft_s=latency / 2)
    lat = m.to_json()["latency"]
    assert lat["count"] == 100 and sum(lat["counts"]) == 100
    assert 0 < lat["p50_ms"] <= 100              # half are in the first bucket (<= 0.1 s)
    assert 500 <= lat["p90_ms"] <= 1000          # 0.5-1 s bucket
    assert 10_000 <= lat["p99_ms"] <= 30_000     # 10-30 s bucket
    assert Metrics().to_json()["latency"]["p50_ms"] is None


def test_the_zipapp_carries_the_page(tmp_path):
    import sys
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "tools"))
    try:
        from build_zipapp import build
    finally:
        sys.path.remove(str(root / "tools"))
    pyz = build(tmp_path / "clasp.pyz")
    with zipfile.ZipFile(pyz) as z:
        assert b"clasp gateway" in z.read("clasp/ops/dashboard.py")
