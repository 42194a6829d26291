from __future__ import annotations

import io
import json

import pytest

from clasp.ops.logs import AccessLog, DebugLog
from clasp.redaction import REDACTED, redact, redact_headers

PROXY_KEY = "proxy-key-Zq8x"
UPSTREAM_KEY = "sk-proj-AbCdEf0123456789ghijKLMN"
AZURE_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"      # no recognizable shape: only known because configured
ODD_KEY = 'we"ird\\key'                           # appears JSON-escaped inside bodies
SECRETS = [PROXY_KEY, UPSTREAM_KEY, AZURE_KEY, ODD_KEY]
WALL = 1_700_000_000.25


def assert_clean(text: str) -> None:
    for s in SECRETS + [json.dumps(ODD_KEY)[1:-1]]:
        assert s not in text, s


# ---- redact ------------------------------------------------------------------------------------

def test_redact_configured_secrets_anywhere():
    text = f"key={AZURE_KEY}; again {AZURE_KEY}. proxy {PROXY_KEY}"
    out = redact(text, SECRETS)
    assert_clean(out)
    assert out.count(REDACTED) == 3


def test_redact_json_escaped_secret():
    body = json.dumps({"note": f"the key is {ODD_KEY}"})
    out = redact(body, SECRETS)
    assert_clean(out)
    json.loads(out)   # still valid JSON


@pytest.mark.parametrize(
    "text,gone",
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("authorization:Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("Proxy-Authorization: Bearer zzz999", "zzz999"),
        ("x-api-key: hunter2hunter2", "hunter2hunter2"),
        ("X-Api-Key:   hunter2hunter2", "hunter2hunter2"),
        ("api-key: azurekey77", "azurekey77"),
        ("Cookie: session=abcd1234", "abcd1234"),
        ('{"api_key": "plainvalue99"}', "plainvalue99"),
        ('{"x-api-key":"v\\"al\\\\ue"}', 'v\\"al'),
        ('{"Authorization": "Bearer tok123"}', "tok123"),
        ("sent with Bearer eyJhbGciOi.xyz_123 to upstream", "eyJhbGciOi.xyz_123"),
        ("error: invalid key sk-or-v1-0123456789abcdef0123", "sk-or-v1-0123456789abcdef0123"),
        ("sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAA"),
        ("GET https://x.googleapis.com/v1/models?alt=sse&key=AIzaSyD-12345", "AIzaSyD-12345"),
        ("https://user:p4ssw0rd@proxy.local:3128", "p4ssw0rd"),
        ("groq said: bad key gsk_ABCDEFGHIJKLMNOPQRSTUVWX0123", "gsk_ABCDEFGHIJKLMNOPQRSTUVWX0123"),
        ("API key not valid: AIzaSyA1234567890abcdefghijklmnopqrstu", "AIzaSyA1234567890abcdefghijklmnopqrstu"),
        ("invalid api_key=3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c", "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"),
    ],
)
def test_redact_generic_patterns(text, gone):
    out = redact(text, [])
    assert gone not in out
    assert REDACTED in out


def test_redact_keeps_ordinary_text():
    text = '{"max_tokens": 1024, "model": "task-list", "content": "sk-learn is a library", "x": "Bear with me"}'
    assert redact(text, []) == text


def test_redact_empty_secret_is_ignored():
    assert redact("hello", ["", PROXY_KEY]) == "hello"


def test_redact_headers():
    hdrs = [
        ("Authorization", "Bearer " + UPSTREAM_KEY),
        ("x-api-key", PROXY_KEY),
        ("api-key", AZURE_KEY),
        ("Proxy-Authorization", "Basic abc"),
        ("Cookie", "a=b"),
        ("Content-Type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ]
    out = redact_headers(hdrs)
    assert [k for k, _ in out] == [k for k, _ in hdrs]
    assert dict(out)["Content-Type"] == "application/json"
    assert dict(out)["anthropic-version"] == "2023-06-01"
    assert [v for _, v in out[:5]] == [REDACTED] * 5
    assert redact_headers({"X-API-KEY": "k", "accept": "*/*"}) == [("X-API-KEY", REDACTED), ("accept", "*/*")]


# ---- access log --------------------------------------------------------------------------------

FIELDS = dict(method="POST", path="/v1/messages?beta=true", status=200, model="claude-sonnet-4-5",
              upstream_model="gpt-4o", provider="openai", latency_ms=523.456, ttft_ms=None,
              input_tokens=1076, output_tokens=19, cache="miss")


def test_access_log_text_line():
    buf = io.StringIO()
    AccessLog(buf, "text", wall=lambda: WALL).log(**FIELDS)
    out = buf.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1
    assert out == (
        "time=2023-11-14T22:13:20.250Z method=POST path=/v1/messages?beta=true status=200 "
        "model=claude-sonnet-4-5 upstream_model=gpt-4o provider=openai latency_ms=523.5 "
        "input_tokens=1076 output_tokens=19 cache=miss\n"
    )


def test_access_log_text_quotes_and_stays_one_line():
    buf = io.StringIO()
    log = AccessLog(buf, "text", wall=lambda: WALL)
    log.log(method="POST", path="/v1/messages", status=400, model='evil model"\nstatus=200', extra="")
    out = buf.getvalue()
    assert out.count("\n") == 1
    assert 'model="evil model\\"\\nstatus=200"' in out
    assert 'extra=""' in out


def test_access_log_json_lines():
    buf = io.StringIO()
    log = AccessLog(buf, "json", wall=lambda: WALL)
    log.log(**FIELDS)
    log.log(**dict(FIELDS, status=429, model="m\nx", request_id="req_1"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:12] == ["time", "method", "path", "status", "model", "upstream_model", "provider",
                                "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cache"]
    assert first["latency_ms"] == 523.5 and first["ttft_ms"] is None and first["status"] == 200
    assert second["model"] == "m\nx" and second["request_id"] == "req_1"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_fields_are_bounded(fmt):
    from clasp.ops.logs import MAX_FIELD_CHARS
    buf = io.StringIO()
    log = AccessLog(buf, fmt, wall=lambda: WALL, secrets=[AZURE_KEY])
    # a configured secret across the cut must not leave a prefix of itself behind
    model = "m" * (MAX_FIELD_CHARS - 10) + AZURE_KEY + "m" * 1_000_000
    log.log(method="POST", path="/v1/messages?" + "p" * 1_000_000, status=400, model=model, note="n" * 500)
    out = buf.getvalue()
    assert out.count("\n") == 1 and len(out) < 4 * MAX_FIELD_CHARS + 500
    assert AZURE_KEY[:8] not in out
    assert f"[{len(model)} chars]" in out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_writes_fields_with_lone_surrogates(fmt, tmp_path):
    path = tmp_path / "access.log"
    with open(path, "w", encoding="utf-8") as f:   # a real UTF-8 stream, which refuses surrogates
        AccessLog(f, fmt, wall=lambda: WALL).log(method="POST", path="/v1/messages", status=200,
                                                 model="claude-\udc00\nstatus=200")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and "claude-" in lines[0]


def test_access_log_redacts_key_in_query():
    buf = io.StringIO()
    AccessLog(buf, "text", wall=lambda: WALL).log(method="GET", path="/v1/messages?key=" + AZURE_KEY, status=401)
    assert AZURE_KEY not in buf.getvalue()


def test_access_log_rejects_unknown_format():
    with pytest.raises(ValueError):
        AccessLog(io.StringIO(), "xml")


def test_access_log_survives_closed_stream():
    buf = io.StringIO()
    log = AccessLog(buf)
    buf.close()
    log.log(method="GET", path="/", status=200)   # must not raise into the request


# ---- debug log ---------------------------------------------------------------------------------

def drive(debug: DebugLog) -> None:
    incoming = json.dumps({"model": "claude-sonnet-4-5", "metadata": {"note": ODD_KEY},
                           "messages": [{"role": "user", "content": f"my key is {UPSTREAM_KEY}"}]}).encode()
    debug.incoming_request(incoming, {"x-api-key": PROXY_KEY, "authorization": f"Bearer {PROXY_KEY}",
                                      "user-agent": "claude-cli/2.1.330"})
    debug.upstream_request(
        f"https://res.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-02-15&api-key={AZURE_KEY}",
        [("api-key", AZURE_KEY), ("Authorization", f"Bearer {UPSTREAM_KEY}"), ("content-type", "application/json")],
        json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello upstream"}]}).encode(),
    )
    debug.upstream_response(401, {"content-type": "application/json"},
                            json.dumps({"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}"}}).encode())
    debug.upstream_response(200, None, b'data: {"choices":[{"delta":{"content":"chunk-text"}}]}\n\n')
    debug.translated_response({"type": "content_block_delta", "delta": {"type": "text_delta",
                                                                        "text": f"echo {AZURE_KEY}"}})
    debug.translated_response(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_debug_log_both_sides_redacted():
    buf = io.StringIO()
    drive(DebugLog(buf, requests=True, responses=True, secrets=SECRETS, wall=lambda: WALL))
    out = buf.getvalue()
    assert_clean(out)
    for stage in ("incoming request", "upstream request", "upstream response status 401",
                  "upstream response status 200", "translated response"):
        assert f"[clasp debug] 2023-11-14T22:13:20.250Z {stage}" in out
    # The useful parts survive.
    assert "hello upstream" in out and "chunk-text" in out and "message_stop" in out
    assert "user-agent: claude-cli/2.1.330" in out
    assert "res.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-02-15" in out
    assert "Incorrect API key provided" in out


def test_debug_log_requests_only():
    buf = io.StringIO()
    drive(DebugLog(buf, requests=True, responses=False, secrets=SECRETS, wall=lambda: WALL))
    out = buf.getvalue()
    assert "incoming request" in out and "upstream request" in out
    assert "upstream response" not in out and "translated response" not in out and "chunk-text" not in out
    assert_clean(out)


def test_debug_log_responses_only():
    buf = io.StringIO()
    drive(DebugLog(buf, requests=False, responses=True, secrets=SECRETS, wall=lambda: WALL))
    out = buf.getvalue()
    assert "upstream response" in out and "translated response" in out
    assert "incoming request" not in out and "hello upstream" not in out
    assert_clean(out)


def test_debug_log_disabled_writes_nothing():
    buf = io.StringIO()
    drive(DebugLog(buf, secrets=SECRETS))
    assert buf.getvalue() == ""


def test_debug_log_repr_hides_secrets():
    d = DebugLog(io.StringIO(), True, True, SECRETS)
    assert_clean(repr(d))


def test_access_log_redacts_configured_secrets_in_any_field():
    for fmt in ("text", "json"):
        buf = io.StringIO()
        log = AccessLog(buf, fmt, wall=lambda: WALL, secrets=SECRETS)
        log.log(method="POST", path="/v1/messages", status=401, error=f"bad key {PROXY_KEY}", user=ODD_KEY)
        out = buf.getvalue()
        assert_clean(out)
        assert out.count("\n") == 1 and REDACTED in out
        assert PROXY_KEY not in repr(log)
