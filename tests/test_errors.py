"""Error bodies and upstream/transport error mapping (PROTOCOL §4, §8)."""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
from types import SimpleNamespace

import pytest

from clasp.translate.errors import (
    InvalidRequest,
    ProxyError,
    error_body,
    error_event,
    error_response,
    map_transport_error,
    map_upstream_error,
    redact,
)

NO_RETRY = {"x-should-retry": "false"}


def openai_err(message, type_=None, code=None):
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def m(status, body=b"", headers=None, provider="openai", ctx=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return map_upstream_error(status, headers or {}, body, provider, ctx)


# ---------------------------------------------------------------------------------------------
# §4 status table, every row


@pytest.mark.parametrize(
    "status, body, want_status, want_type, retryable",
    [
        (400, openai_err("Invalid value for 'tools'"), 400, "invalid_request_error", False),
        (422, openai_err("Unprocessable"), 400, "invalid_request_error", False),
        (401, openai_err("Invalid token", code="invalid_api_key"), 401, "authentication_error", False),
        (402, {"error": {"code": 402, "message": "Insufficient credits"}}, 402, "billing_error", False),
        (429, openai_err("You exceeded your current quota", "insufficient_quota", "insufficient_quota"), 429, "rate_limit_error", False),
        (403, {"error": {"code": 403, "message": "Input was flagged by moderation", "metadata": {"reasons": ["x"]}}}, 403, "permission_error", False),
        (404, openai_err("The model `gpt-9` does not exist", code="model_not_found"), 404, "not_found_error", False),
        (408, b"Request Timeout", 504, "timeout_error", True),
        (413, b"<html>413 Request Entity Too Large</html>", 413, "request_too_large", False),
        (429, openai_err("Rate limit reached for requests", "requests", "rate_limit_exceeded"), 429, "rate_limit_error", True),
        (500, openai_err("The server had an error"), 500, "api_error", True),
        (502, b"Bad gateway", 502, "api_error", True),
        (504, b"Gateway Timeout", 504, "api_error", True),
        (520, b"cloudflare", 520, "api_error", True),
        (503, openai_err("Service Unavailable"), 529, "overloaded_error", True),
        (500, openai_err("The server is overloaded", "server_is_overloaded"), 529, "overloaded_error", True),
        (429, openai_err("Slow down", "slow_down"), 529, "overloaded_error", True),
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, 529, "overloaded_error", True),
        (400, openai_err("The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                         code="content_filter"), 400, "invalid_request_error", False),
        (409, b"conflict", 409, "api_error", True),
        (405, b"Method Not Allowed", 405, "invalid_request_error", False),
        (501, b"Not Implemented", 501, "api_error", False),
    ],
)
def test_status_table(status, body, want_status, want_type, retryable):
    err = m(status, body)
    assert (err.status, err.error_type, err.retryable) == (want_status, want_type, retryable)
    # Every error retrying cannot fix tells Claude Code not to retry (it otherwise retries 401 for minutes).
    if retryable:
        assert err.headers.get("x-should-retry") != "false"
    else:
        assert err.headers.get("x-should-retry") == "false"


def test_402_deepseek_insufficient_balance():
    err = m(402, {"error": {"message": "Insufficient Balance", "type": "unknown_error"}}, provider="deepseek")
    assert (err.status, err.error_type, err.headers) == (402, "billing_error", NO_RETRY)
    assert err.message == "deepseek: Insufficient Balance"


# ---------------------------------------------------------------------------------------------
# Body formats, first match wins


@pytest.mark.parametrize(
    "body, expected",
    [
        (openai_err("Invalid 'messages[1].content'", "invalid_request_error", None), "openai: Invalid 'messages[1].content'"),
        ({"error": {"code": 400, "message": "Provider returned error",
                    "metadata": {"raw": "model does not support tools", "provider_name": "Foo"}}},
         "openai: Provider returned error: model does not support tools"),
        ({"error": "registry.ollama.ai/library/llama2 does not support tools"},
         "openai: registry.ollama.ai/library/llama2 does not support tools"),
        ({"object": "error", "message": "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
          "type": "BadRequestError", "param": None, "code": 400},
         "openai: \"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set"),
        ({"detail": "Model not loaded"}, "openai: Model not loaded"),
        ({"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "missing"},
                     {"loc": ["body", "model"], "msg": "str type expected", "type": "type_error"}]},
         "openai: field required; str type expected"),
        ([{"error": {"code": 400, "message": "Invalid JSON payload", "status": "INVALID_ARGUMENT"}}], "openai: Invalid JSON payload"),
        (b"upstream says no", "openai: upstream says no"),
        (b"", "openai: upstream returned HTTP 400"),
    ],
)
def test_body_formats(body, expected):
    assert m(400, body).message == expected


def test_raw_text_capped_at_2kb():
    err = m(500, b"x" * 10000, provider="vllm")
    assert err.message.startswith("vllm: xxx")
    assert len(err.message) <= 2048 + len("vllm: ") + 3


def test_non_utf8_body_does_not_crash():
    err = m(500, b"\xff\xfe broken \x80")
    assert err.status == 500 and "broken" in err.message


def test_unexpected_success_or_redirect_status():
    err = m(302, b"<html>moved</html>")
    assert err.status == 502 and err.error_type == "api_error" and not err.retryable
    assert "302" in err.message and err.headers == NO_RETRY


# ---------------------------------------------------------------------------------------------
# Retry headers


def test_retry_after_headers_copied_case_insensitively():
    err = m(429, openai_err("rate limited"), headers={"Retry-After": "20", "retry-after-ms": "19500"})
    assert err.headers == {"retry-after": "20", "retry-after-ms": "19500"}
    assert err.retryable


@pytest.mark.parametrize(
    "headers, expected_ms",
    [
        ({"x-ratelimit-reset-requests": "1s"}, "1000"),
        ({"x-ratelimit-reset-tokens": "6m0s"}, "360000"),
        ({"x-ratelimit-reset-requests": "120ms"}, "120"),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, "3723500"),
        ({"x-ratelimit-reset-tokens": "0.25"}, "250"),
        # Both windows: the longer wait unless remaining-* says which one ran out.
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, "360000"),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
          "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "5000"}, "1000"),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "20ms",
          "x-ratelimit-remaining-requests": "10", "x-ratelimit-remaining-tokens": "0"}, "20"),
    ],
)
def test_ratelimit_reset_converted_to_retry_after_ms(headers, expected_ms):
    err = m(429, openai_err("Rate limit reached"), headers=headers)
    assert err.headers == {"retry-after-ms": expected_ms}


def test_explicit_retry_after_beats_reset_headers_and_junk_ignored():
    err = m(429, b"", headers={"retry-after": "3", "x-ratelimit-reset-tokens": "6m0s"})
    assert err.headers == {"retry-after": "3"}
    err = m(429, b"", headers={"x-ratelimit-reset-tokens": "soon"})
    assert err.headers == {}
    err = m(429, b"", headers={"retry-after": "1\r\nx-evil: 1"})
    assert "retry-after" not in err.headers


def test_quota_429_not_retryable_even_with_retry_after():
    err = m(429, openai_err("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
            headers={"retry-after": "20"})
    assert err.headers["x-should-retry"] == "false" and not err.retryable


# ---------------------------------------------------------------------------------------------
# Context overflow rewrites


@pytest.mark.parametrize(
    "status, body, ctx_max, expected",
    [
        # OpenAI: messages alone too long
        (400, openai_err("This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. "
                         "Please reduce the length of the messages.", "invalid_request_error", "context_length_exceeded"),
         None, "prompt is too long: 130000 tokens > 128000 maximum"),
        # OpenAI / vLLM / DeepSeek: messages + completion, prompt itself too long
        (400, openai_err("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
                         "(4500 in the messages, 500 in the completion). Please reduce the length of the messages or completion."),
         500, "prompt is too long: 4500 tokens > 4096 maximum"),
        # ... prompt fits, max_tokens does not: K from ctx.max_tokens
        (400, openai_err("This model's maximum context length is 128000 tokens. However, you requested 150000 tokens "
                         "(100000 in the messages, 50000 in the completion)."),
         32000,
         "input length and `max_tokens` exceed context limit: 100000 + 32000 > 128000, decrease input length or `max_tokens` and try again"),
        # ... same without ctx: K from the message
        (400, openai_err("This model's maximum context length is 128000 tokens. However, you requested 150000 tokens "
                         "(100000 in the messages, 50000 in the completion)."),
         None,
         "input length and `max_tokens` exceed context limit: 100000 + 50000 > 128000, decrease input length or `max_tokens` and try again"),
        # vLLM (newer): max_tokens too large
        (400, {"object": "error", "message": "'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum "
               "context length is 4096 tokens and your request has 3500 input tokens (1000 > 4096 - 3500).",
               "type": "BadRequestError", "code": 400},
         1000,
         "input length and `max_tokens` exceed context limit: 3500 + 1000 > 4096, decrease input length or `max_tokens` and try again"),
        # vLLM: input alone too long
        (400, {"object": "error", "message": "This model's maximum context length is 8192 tokens. However, your request has "
               "9000 input tokens. Please reduce the length of the input messages.", "type": "BadRequestError", "code": 400},
         None, "prompt is too long: 9000 tokens > 8192 maximum"),
        # LM Studio
        (400, {"error": "Trying to keep the first 5000 tokens when context the overflows. However, the model is loaded with "
               "context length of only 4096 tokens, which is not enough."},
         None, "prompt is too long: 5000 tokens > 4096 maximum"),
        # llama.cpp structured fields
        (400, {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                         "type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}},
         None, "prompt is too long: 5000 tokens > 4096 maximum"),
        # llama.cpp text form
        (400, {"error": {"code": 400, "message": "request (7000 tokens) exceeds the available context size (4096 tokens), try increasing it"}},
         None, "prompt is too long: 7000 tokens > 4096 maximum"),
        # OpenRouter, input split across text and tool input
        (400, {"error": {"code": 400, "message": "This endpoint's maximum context length is 200000 tokens. However, you requested "
                         "about 250000 tokens (200000 of text input, 30000 of tool input, 20000 in the output)."}},
         None, "prompt is too long: 230000 tokens > 200000 maximum"),
        # Gemini OpenAI-compat (list-wrapped)
        (400, [{"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                          "status": "INVALID_ARGUMENT"}}],
         None, "prompt is too long: 1200000 tokens > 1048576 maximum"),
        # Mistral
        (400, {"object": "error", "message": "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length",
               "type": "invalid_request_error", "code": 3051},
         None, "prompt is too long: 40000 tokens > 32768 maximum"),
        # TGI (422)
        (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4097. Given: 4000 `inputs` tokens and 1000 `max_new_tokens`",
               "error_type": "validation"},
         None,
         "input length and `max_tokens` exceed context limit: 4000 + 1000 > 4097, decrease input length or `max_tokens` and try again"),
        # 413 with an overflow text, and a 500 from a server that reports overflow that way
        (413, openai_err("maximum context length is 2048 tokens, requested 3000 input tokens"), None, "prompt is too long: 3000 tokens > 2048 maximum"),
        (500, {"error": {"message": "This model's maximum context length is 2048 tokens. However, your messages resulted in 2100 tokens."}},
         None, "prompt is too long: 2100 tokens > 2048 maximum"),
        # numbers with thousands separators
        (400, openai_err("maximum context length is 131,072 tokens. However, your messages resulted in 140,000 tokens."),
         None, "prompt is too long: 140000 tokens > 131072 maximum"),
        # OpenAI with tools: "resulted in" is the whole prompt; the messages figure is only part of it
        (400, openai_err("This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens "
                         "(125000 in the messages, 5000 in the functions). Please reduce the length of the messages or functions.",
                         "invalid_request_error", "context_length_exceeded"),
         32000, "prompt is too long: 130000 tokens > 128000 maximum"),
        # vLLM (0.5-0.8) input-only wording: "requested N tokens in the messages" is the prompt, not prompt + max_tokens
        (400, {"object": "error", "message": "This model's maximum context length is 32768 tokens. However, you requested "
               "33000 tokens in the messages, Please reduce the length of the messages.", "type": "BadRequestError", "code": 400},
         32000, "prompt is too long: 33000 tokens > 32768 maximum"),
        # legacy OpenAI wording: "in your prompt; ... for the completion"
        (400, openai_err("This model's maximum context length is 8192 tokens, however you requested 8500 tokens "
                         "(7500 in your prompt; 1000 for the completion). Please reduce your prompt; or completion length."),
         None,
         "input length and `max_tokens` exceed context limit: 7500 + 1000 > 8192, decrease input length or `max_tokens` and try again"),
        # a prompt that fills the whole window leaves no room to shrink max_tokens into: it is too long
        (400, openai_err("This model's maximum context length is 4096 tokens. However, you requested 5096 tokens "
                         "(4096 in the messages, 1000 in the completion)."),
         1000, "prompt is too long: 4096 tokens > 4096 maximum"),
        # overflow code but no numbers: keep the phrase Claude Code keys compaction on, plus the upstream text
        (400, openai_err("Request too large for model", code="context_length_exceeded"),
         None, "prompt is too long: Request too large for model"),
    ],
)
def test_context_overflow_rewrites(status, body, ctx_max, expected):
    ctx = SimpleNamespace(max_tokens=ctx_max, requested_model="claude-sonnet-4-5") if ctx_max else None
    err = m(status, body, ctx=ctx)
    assert err.status == 400 and err.error_type == "invalid_request_error"
    assert err.message == expected
    assert err.headers == NO_RETRY and not err.retryable


def test_context_words_in_unrelated_errors_not_rewritten():
    err = m(401, openai_err("maximum context length is 4096 tokens"))  # auth errors are never overflow
    assert err.status == 401
    err = m(429, openai_err("Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 45000."))
    assert err.status == 429 and err.error_type == "rate_limit_error"
    err = m(400, openai_err("Invalid type for 'messages[0].content'"))
    assert err.message == "openai: Invalid type for 'messages[0].content'"


# ---------------------------------------------------------------------------------------------
# Secret redaction


@pytest.mark.parametrize(
    "body, secret",
    [
        (openai_err("Incorrect API key provided: sk-proj-AbCdEfGh1234567890XyZ. You can find your API key at ..."),
         "sk-proj-AbCdEfGh1234567890XyZ"),
        (openai_err("Incorrect API key provided: sk-abc123*************************wxyz."), "sk-abc123****"),
        ({"error": {"code": 401, "message": "No auth credentials found for sk-or-v1-0123456789abcdef0123456789abcdef"}},
         "sk-or-v1-0123456789abcdef"),
        (b"Unauthorized: header Authorization: Bearer eyJhbGciOi.J9abc123def456 rejected", "eyJhbGciOi.J9abc123def456"),
        ({"detail": "invalid api_key=3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"}, "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"),
        ({"error": "bad key: gsk_ABCDEFGHIJKLMNOPQRSTUVWX0123"}, "gsk_ABCDEFGHIJKLMNOPQRSTUVWX0123"),
        ({"error": "API key not valid: AIzaSyA1234567890abcdefghijklmnopqrstu"}, "AIzaSyA1234567890abcdefghijklmnopqrstu"),
        ({"error": "cannot reach https://svc:s3cretpass@gateway.internal/v1"}, "s3cretpass"),
        ({"error": "denied: GET /v1/models?alt=sse&key=plainKEYvalue42 failed"}, "plainKEYvalue42"),
        ({"error": 'upstream got headers {"authorization": "Basic dXNlcjpwYXNz"}'}, "dXNlcjpwYXNz"),
    ],
)
def test_secrets_redacted_from_messages(body, secret):
    err = m(401, body)
    assert secret not in err.message
    assert "[REDACTED]" in err.message
    status, headers, raw = error_response(err)
    assert secret.encode() not in raw
    assert secret not in repr(err) and secret not in str(err)


def test_redact_keeps_ordinary_prose():
    text = "Bearer authentication failed for model gpt-4o; see https://platform.openai.com/docs (skip-list)"
    assert redact(text) == text


def test_transport_error_message_redacted():
    err = map_transport_error(ConnectionRefusedError("connect to https://x/?key=AIzaSyA1234567890abcdefghijklmnopqrstu failed"), "gemini")
    assert "AIzaSy" not in err.message


# ---------------------------------------------------------------------------------------------
# Transport errors


class ConnectError(Exception):
    """Stand-in with the name of clasp.upstream.client.ConnectError."""


class UpstreamTimeout(Exception):
    def __init__(self, phase):
        super().__init__(f"{phase} timed out")
        self.phase = phase


class ProtocolError(Exception):
    pass


@pytest.mark.parametrize(
    "exc, status, etype, retryable",
    [
        (ConnectError("connection refused"), 502, "api_error", True),
        (ConnectionRefusedError(111, "Connection refused"), 502, "api_error", True),
        (socket.gaierror(-2, "Name or service not known"), 502, "api_error", True),
        (ConnectionResetError(104, "Connection reset by peer"), 502, "api_error", True),
        (ProtocolError("server closed the connection before a response"), 502, "api_error", True),
        (asyncio.IncompleteReadError(b"", 10), 502, "api_error", True),
        (UpstreamTimeout("read"), 504, "timeout_error", True),
        (UpstreamTimeout("connect"), 504, "timeout_error", True),
        (asyncio.TimeoutError(), 504, "timeout_error", True),
        (socket.timeout("timed out"), 504, "timeout_error", True),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), 502, "api_error", False),
        (ValueError("weird"), 502, "api_error", False),
    ],
)
def test_transport_errors(exc, status, etype, retryable):
    err = map_transport_error(exc, "ollama")
    assert (err.status, err.error_type, err.retryable) == (status, etype, retryable)
    assert err.message.startswith("ollama: ")


def test_timeout_phase_in_message():
    assert "read timeout" in map_transport_error(UpstreamTimeout("read"), "vllm").message


# ---------------------------------------------------------------------------------------------
# Bodies, responses, events, exception types


def test_error_body_shapes():
    assert error_body("invalid_request_error", "bad") == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    assert error_body("api_error", "x", "req_1")["request_id"] == "req_1"


def test_error_response_and_event():
    err = m(429, openai_err("Rate limit reached"), headers={"retry-after": "7"})
    status, headers, body = error_response(err, "req_abc")
    assert status == 429
    assert ("content-type", "application/json") in headers and ("retry-after", "7") in headers
    assert json.loads(body) == {"type": "error", "error": {"type": "rate_limit_error", "message": "openai: Rate limit reached"},
                                "request_id": "req_abc"}
    assert error_event(err) == {"type": "error", "error": {"type": "rate_limit_error", "message": "openai: Rate limit reached"}}
    # Non-retryable errors carry x-should-retry on the wire.
    _, headers, _ = error_response(m(401, openai_err("nope")))
    assert ("x-should-retry", "false") in headers


def test_exception_types():
    err = ProxyError(502, "api_error", "boom")
    assert err.headers == {} and err.retryable is False
    with pytest.raises(ProxyError) as ei:
        raise err
    assert str(ei.value) == "502 api_error: boom"
    assert {err}  # hashable, like any exception
    inv = InvalidRequest("messages: field required")
    assert inv.message == "messages: field required" and str(inv) == "messages: field required"


def test_error_body_under_http_200_uses_body_code():
    err = m(200, {"error": {"code": 429, "message": "Rate limit exceeded"}}, provider="openrouter")
    assert (err.status, err.error_type, err.retryable) == (429, "rate_limit_error", True)
    err = m(200, {"error": {"code": 402, "message": "Insufficient credits"}}, provider="openrouter")
    assert (err.status, err.error_type, err.headers) == (402, "billing_error", NO_RETRY)
    err = m(200, {"error": {"message": "Internal error", "code": "server_error"}}, provider="openrouter")
    assert (err.status, err.error_type, err.retryable) == (502, "api_error", True)


@pytest.mark.parametrize("status,headers,body,retryable", [
    (408, {}, b"", True), (409, {}, b"", True), (429, {}, b"", True), (500, {}, b"", True),
    (502, {}, b"", True), (503, {}, b"", True), (504, {}, b"", True), (529, {}, b"", True),
    (400, {}, b"", False), (401, {}, b"", False), (403, {}, b"", False), (404, {}, b"", False),
    (413, {}, b"", False), (501, {}, b"", False),
    # quota exhaustion does not clear by waiting, whatever the header says
    (429, {}, b'{"error":{"code":"insufficient_quota"}}', False),
    (429, {"x-should-retry": "true"}, b'{"error":{"code":"insufficient_quota"}}', False),
    # the upstream's explicit verdict
    (503, {"X-Should-Retry": "false"}, b"", False),
    (429, {"x-should-retry": " FALSE "}, b"", False),
    (501, {"x-should-retry": "true"}, b"", True),
    (503, {"x-should-retry": "maybe"}, b"", True),
    # a bad request stays bad
    (400, {"x-should-retry": "true"}, b"", False), (401, {"x-should-retry": "true"}, b"", False),
    (404, {"x-should-retry": "true"}, b"", False),
])
def test_retryability_follows_status_code_and_upstream_verdict(status, headers, body, retryable):
    err = map_upstream_error(status, headers, body, "openai")
    assert err.retryable is retryable
    if not retryable:
        assert err.headers.get("x-should-retry") == "false"  # the client does not retry it either


def test_error_messages_that_quote_input_are_capped():
    from clasp.translate.errors import ProxyError, error_event, error_response
    err = ProxyError(400, "invalid_request_error", "max_tokens: must be a positive integer, got '" + "x" * 100_000 + "'",
                     {}, False)
    _, _, body = error_response(err)
    message = json.loads(body)["error"]["message"]
    assert message.startswith("max_tokens: must be a positive integer") and len(message) <= 2051
    assert len(error_event(err)["error"]["message"]) <= 2051
