"""Anthropic error bodies and upstream error mapping (PROTOCOL §4, §8).

Pure: turns an upstream status/headers/body (or a transport exception) into a ProxyError that
says what the client sees (status, Anthropic error type, message, headers) and whether the proxy
itself may retry. Standard library only.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Mapping

from clasp.redaction import redact
from clasp.translate.context import RequestContext
from clasp.translate.jsontext import json_utf8

__all__ = [
    "InvalidRequest",
    "ProxyError",
    "error_body",
    "error_response",
    "error_event",
    "map_upstream_error",
    "map_transport_error",
    "redact",
]


class InvalidRequest(Exception):
    """Malformed client input: 400 invalid_request_error, upstream never contacted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(eq=False)  # eq=False keeps exceptions hashable, as the traceback machinery expects
class ProxyError(Exception):
    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)  # retry-after, retry-after-ms, x-should-retry
    retryable: bool = False  # may the proxy retry (only before any byte went to the client)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}: {self.message}"


def error_body(error_type: str, message: str, request_id: str | None = None) -> dict:
    """Anthropic error JSON: {"type":"error","error":{"type","message"}[, "request_id"]}.

    The message is capped: it may quote client input (a 100 KB value in a 400) or upstream text."""
    body: dict = {"type": "error", "error": {"type": error_type, "message": _cap(message)}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(err: ProxyError, request_id: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of the plain JSON error response for `err`."""
    body = json_utf8(error_body(err.error_type, err.message, request_id))  # upstream text may hold lone surrogates
    headers = [("content-type", "application/json")]
    headers.extend(err.headers.items())
    return err.status, headers, body


def error_event(err: ProxyError) -> dict:
    """The SSE `error` event payload for a failure after the stream started."""
    return {"type": "error", "error": {"type": err.error_type, "message": _cap(err.message)}}


# ---------------------------------------------------------------------------------------------
# Upstream error bodies

_MAX_MESSAGE = 2048


def _cap(text: str) -> str:
    text = text.strip()
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    return text


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)


@dataclass
class _Parsed:
    message: str
    etype: str = ""  # upstream error.type (lower-case)
    code: str = ""  # upstream error.code as text (lower-case)
    extra: dict = field(default_factory=dict)  # the error object, for structured fields


def _parse_body(body: bytes) -> _Parsed:
    """Extract message/type/code from the upstream error body formats of §4, first match wins."""
    text = body.decode("utf-8", "replace") if body else ""
    stripped = text.strip()
    obj: object = None
    if stripped[:1] in ("{", "["):
        try:
            obj = json.loads(stripped)
        except (ValueError, RecursionError):  # a hostile body nested thousands deep is still just text
            obj = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # Gemini's OpenAI-compatible endpoint wraps the error in a list
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            # OpenAI / Azure {"error":{"message","type","code","param"}}; OpenRouter {"error":{"code":int,"message","metadata"}}
            message = _as_text(err.get("message"))
            meta = err.get("metadata")
            if isinstance(meta, dict):
                raw = meta.get("raw")
                raw = _as_text(raw) if raw is not None else ""
                # OpenRouter's own message is often just "Provider returned error"; the real
                # upstream wording sits in metadata.raw.
                if raw and raw not in message:
                    message = f"{message}: {raw}" if message else raw
            inner = err.get("innererror")
            if isinstance(inner, dict) and not message:
                message = _as_text(inner)
            return _Parsed(
                message or _as_text(err),
                _as_text(err.get("type")).lower(),
                _as_text(err.get("code")).lower(),
                err,
            )
        if isinstance(err, str) and err:  # Ollama {"error":"..."}
            return _Parsed(err, extra=obj)
        if obj.get("object") == "error" and "message" in obj:  # vLLM
            return _Parsed(
                _as_text(obj.get("message")),
                _as_text(obj.get("type")).lower(),
                _as_text(obj.get("code")).lower(),
                obj,
            )
        if "detail" in obj:  # FastAPI-based servers
            detail = obj["detail"]
            if isinstance(detail, list):  # validation errors: [{"loc":..., "msg":...}, ...]
                msgs = [_as_text(d.get("msg")) for d in detail if isinstance(d, dict) and d.get("msg")]
                if msgs:
                    return _Parsed("; ".join(msgs), extra=obj)
            return _Parsed(_as_text(detail), extra=obj)
        if isinstance(obj.get("message"), str):  # generic {"message": "..."}
            return _Parsed(obj["message"], _as_text(obj.get("type")).lower(), _as_text(obj.get("code")).lower(), obj)
    return _Parsed(stripped)


# ---------------------------------------------------------------------------------------------
# Context overflow (§4): rewrite into the wording Claude Code parses to compact / shrink max_tokens

_N = r"(\d[\d,]*)"
_RX_MAX_CTX = re.compile(r"maximum context length (?:is|of)\s*(?:only\s*)?" + _N, re.I)
_RX_CTX_LEN = re.compile(r"context (?:length|size|window)(?: is| of)?(?: only)?\s*\(?" + _N, re.I)
_RX_REQ_SPLIT = re.compile(
    r"(?:requested|request has|request contains)\s*(?:about\s*)?" + _N + r"\s*tokens?\s*\((.*?)\)", re.I | re.S
)
_RX_MSGS = re.compile(r"(?:messages|input) resulted in\s*" + _N + r"\s*tokens?", re.I)  # the whole prompt (messages + functions)
_RX_REQ_MSGS = re.compile(r"requested\s*" + _N + r"\s*tokens? in the (?:messages|prompt)", re.I)  # vLLM: input only
_RX_REQ_TOTAL = re.compile(r"requested\s*(?:about\s*)?" + _N + r"\s*tokens?", re.I)
_RX_INPUT = re.compile(_N + r"\s*(?:input tokens|tokens? of (?:text )?input|in the messages|`?inputs`? tokens)", re.I)
_RX_INPUT_PART = re.compile(_N + r"\s*(?:tokens? )?(?:of [a-z ]*input|in (?:the|your) (?:messages|prompt|functions|tools))", re.I)
_RX_OUTPUT_PART = re.compile(_N + r"\s*(?:tokens? )?(?:in|for) the (?:completion|output)", re.I)
_RX_MAXTOK_TOO_LARGE = re.compile(r"max_(?:completion_)?tokens'?\s*(?:or '?max_completion_tokens'?\s*)?is too large:?\s*" + _N, re.I)
_RX_KEEP = re.compile(r"keep the first " + _N + r" tokens", re.I)  # LM Studio
_RX_REQUEST_PAREN = re.compile(r"request \(" + _N + r" tokens\) exceeds the available context size \(" + _N, re.I)  # llama.cpp
_RX_MISTRAL = re.compile(r"Prompt contains " + _N + r" tokens.*?model with " + _N + r" maximum context", re.I | re.S)
_RX_GEMINI = re.compile(r"input token count \(" + _N + r"\) exceeds the maximum number of tokens allowed \(" + _N, re.I)
_RX_TGI = re.compile(r"must be <=\s*" + _N + r"\.\s*Given:\s*" + _N + r"\s*`?inputs`? tokens and\s*" + _N, re.I)
_RX_ANTHROPIC = re.compile(r"prompt is too long:\s*" + _N + r"\s*tokens\s*>\s*" + _N, re.I)
_OVERFLOW_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "context size",
    "exceed_context_size",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "maximum number of tokens",
    "string_above_max_length",
    "`inputs` tokens + `max_new_tokens`",  # TGI
)


def _num(s: str) -> int:
    return int(s.replace(",", ""))


def _overflow_numbers(message: str, extra: dict, max_tokens: int | None) -> tuple[int | None, int | None, int | None]:
    """(input I, completion K, limit M) from a context-overflow message; None where unknown."""
    m = _RX_ANTHROPIC.search(message)
    if m:
        return _num(m.group(1)), None, _num(m.group(2))
    # llama.cpp structured fields: {"type":"exceed_context_size_error","n_prompt_tokens","n_ctx"}
    n_prompt, n_ctx = extra.get("n_prompt_tokens"), extra.get("n_ctx")
    if isinstance(n_prompt, int) and isinstance(n_ctx, int) and not isinstance(n_prompt, bool):
        return n_prompt, None, n_ctx
    for rx in (_RX_REQUEST_PAREN, _RX_MISTRAL, _RX_GEMINI):
        m = rx.search(message)
        if m:
            return _num(m.group(1)), None, _num(m.group(2))
    m = _RX_TGI.search(message)
    if m:
        return _num(m.group(2)), _num(m.group(3)), _num(m.group(1))

    limit = None
    m = _RX_MAX_CTX.search(message) or _RX_CTX_LEN.search(message)
    if m:
        limit = _num(m.group(1))
    inp = out = None
    m = _RX_REQ_SPLIT.search(message)
    if m:
        inside = m.group(2)
        parts = [_num(x) for x in _RX_INPUT_PART.findall(inside)]
        if parts:
            inp = sum(parts)
        o = _RX_OUTPUT_PART.search(inside)
        if o:
            out = _num(o.group(1))
        if inp is None and out is not None:
            inp = _num(m.group(1)) - out
    if inp is None:
        # "your messages resulted in N tokens (X in the messages, Y in the functions)": N is the
        # whole prompt, X only a part of it; so the total wins over the parts here.
        m = (_RX_MSGS.search(message) or _RX_REQ_MSGS.search(message) or _RX_INPUT.search(message)
             or _RX_KEEP.search(message))
        if m:
            inp = _num(m.group(1))
    if out is None:
        m = _RX_MAXTOK_TOO_LARGE.search(message)
        if m:
            out = _num(m.group(1))
    if inp is None:
        m = _RX_REQ_TOTAL.search(message)
        if m:
            total = _num(m.group(1))
            # "you requested T tokens" with no split: T includes max_tokens when we know it.
            inp = total - max_tokens if (max_tokens and total > max_tokens) else total
    return inp, out, limit


def _overflow_message(parsed: _Parsed, max_tokens: int | None) -> str | None:
    """The rewritten context-overflow message, or None if this is not a context overflow."""
    low = parsed.message.lower()
    is_overflow = (
        parsed.code in ("context_length_exceeded", "string_above_max_length")
        or parsed.etype in ("context_length_exceeded", "exceed_context_size_error")
        or any(h in low for h in _OVERFLOW_HINTS)
    )
    if not is_overflow:
        return None
    inp, out, limit = _overflow_numbers(parsed.message, parsed.extra, max_tokens)
    if inp is not None and limit is not None:
        k = max_tokens if max_tokens else out
        if inp < limit and k:
            # The prompt fits; the requested output does not. Claude Code shrinks max_tokens.
            # (A prompt that fills the whole window leaves no room for any output: too long.)
            return (
                f"input length and `max_tokens` exceed context limit: {inp} + {k} > {limit}, "
                "decrease input length or `max_tokens` and try again"
            )
        return f"prompt is too long: {inp} tokens > {limit} maximum"
    if "max_tokens" in low and "context" in low and limit is None and inp is None:
        return None  # an unrelated max_tokens validation error that merely mentions context
    # Overflow without usable numbers: keep the wording Claude Code keys compaction on.
    return "prompt is too long: " + parsed.message


# ---------------------------------------------------------------------------------------------
# Retry headers

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s|d)")
_UNIT_MS = {"d": 86_400_000.0, "h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6}


def _duration_ms(value: str) -> int | None:
    """OpenAI x-ratelimit-reset-* durations ("1s", "6m0s", "120ms", "1h2m3.5s", bare seconds) -> ms."""
    value = value.strip()
    if not value:
        return None
    try:
        return max(0, math.ceil(float(value) * 1000))  # bare number: seconds
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(value) or pos == 0:
        return None
    return max(0, math.ceil(total))


def _header_safe(value: str) -> bool:
    return bool(value) and len(value) <= 128 and "\r" not in value and "\n" not in value


def _retry_headers(h: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    ra = h.get("retry-after", "").strip()
    if _header_safe(ra):
        out["retry-after"] = ra
    ra_ms = h.get("retry-after-ms", "").strip()
    if _header_safe(ra_ms):
        out["retry-after-ms"] = ra_ms
    if out:
        return out  # the upstream's explicit advice beats the rate-limit window estimate
    # Which window was hit: the exhausted one(s) if remaining-* says so, else the longer wait
    # (retrying early just burns a retry).
    resets: list[tuple[int, bool]] = []
    for kind in ("requests", "tokens"):
        ms = _duration_ms(h.get(f"x-ratelimit-reset-{kind}", ""))
        if ms is not None:
            resets.append((ms, h.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0"))
    exhausted = [ms for ms, hit in resets if hit]
    candidates = exhausted or [ms for ms, _ in resets]
    best = max(candidates) if candidates else None
    if best is not None:
        out["retry-after-ms"] = str(best)
    return out


# ---------------------------------------------------------------------------------------------
# Status mapping

_STATUS_TYPE = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
_QUOTA_MARKERS = ("insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "insufficient_balance")
_OVERLOAD_MARKERS = ("server_is_overloaded", "slow_down", "overloaded_error", "overloaded")


def map_upstream_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    provider: str,
    ctx: RequestContext | None = None,
) -> ProxyError:
    """Map a non-2xx upstream response to the error the client sees (§4 table)."""
    h = {str(k).lower(): str(v) for k, v in headers.items()} if headers else {}
    parsed = _parse_body(body)
    if 200 <= status < 300:
        # An error body under HTTP 200 (OpenRouter, some gateways): its numeric code is the real
        # status; without one, treat it as a transient upstream fault.
        code = parsed.extra.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            status = code
        else:
            status = 502
    upstream_msg = _cap(redact(parsed.message))
    parsed.message = upstream_msg
    prefix = f"{provider}: " if provider else ""
    message = prefix + (upstream_msg or f"upstream returned HTTP {status}")
    markers = (parsed.etype, parsed.code)

    def fatal(st: int, etype: str, msg: str = message) -> ProxyError:
        # Retrying cannot fix these; without the header Claude Code retries e.g. 401 for minutes.
        return ProxyError(st, etype, msg, {"x-should-retry": "false"}, False)

    # The upstream's own verdict (OpenAI sends x-should-retry) can stop retries of a transient
    # status, or allow them for a 5xx that is permanent by default; never for a bad request.
    verdict = h.get("x-should-retry", "").strip().lower()

    def transient(st: int, etype: str) -> ProxyError:
        if verdict == "false":
            return ProxyError(st, etype, message, {**_retry_headers(h), "x-should-retry": "false"}, False)
        return ProxyError(st, etype, message, _retry_headers(h), True)

    if not 100 <= status <= 599:
        # Not an HTTP status at all (RFC 9110 §15): a broken upstream. Never pass it on; the
        # client's HTTP stack may reject the whole response.
        return fatal(502, "api_error", f"{prefix}upstream returned an invalid HTTP status {status}"
                     + (f": {upstream_msg}" if upstream_msg else ""))
    if any(m in _OVERLOAD_MARKERS for m in markers) or status in (503, 529):
        return transient(529, "overloaded_error")
    if status in (401, 403, 404):
        return fatal(status, _STATUS_TYPE[status])
    if status == 402 or any(m in _QUOTA_MARKERS for m in markers):
        st = 429 if status == 429 else 402
        return fatal(st, "rate_limit_error" if st == 429 else "billing_error")
    if 400 <= status < 502 and status not in (408, 409, 429):
        max_tokens = getattr(ctx, "max_tokens", None) if ctx is not None else None
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            max_tokens = None
        rewritten = _overflow_message(parsed, max_tokens)
        if rewritten is not None:
            # Exact wording, no provider prefix: the client matches these messages from the start.
            return fatal(400, "invalid_request_error", _cap(rewritten))
    if status == 408:
        return transient(504, "timeout_error")
    if status == 409:
        return transient(409, "api_error")
    if status == 429:
        return transient(429, "rate_limit_error")
    if status in (400, 422):
        # Includes Azure's content_filter (code "content_filter"): the upstream text says why.
        return fatal(400, "invalid_request_error")
    if status == 413:
        return fatal(413, "request_too_large")
    if 400 <= status < 500:
        # Other client errors (405 wrong URL, 415, ...): retrying cannot help; keep the status.
        return fatal(status, "invalid_request_error")
    if status >= 500:
        if status in (501, 505) and verdict != "true":
            return fatal(status, "api_error")  # "not implemented": permanent
        return transient(status, "api_error")
    # 1xx/3xx reaching here means a misconfigured base URL (e.g. a redirect), not a transient fault.
    return fatal(502, "api_error", f"{prefix}unexpected upstream HTTP status {status}" + (f": {upstream_msg}" if upstream_msg else ""))


def map_transport_error(exc: BaseException, provider: str) -> ProxyError:
    """Map a failure to talk to the upstream (no usable HTTP response) to a client error.

    Classified by exception type names so this pure module need not import the upstream client."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = _cap(redact(str(exc)))
    prefix = f"{provider}: " if provider else ""
    suffix = f" ({type(exc).__name__}: {detail})" if detail else f" ({type(exc).__name__})"
    if "UpstreamTimeout" in names or "TimeoutError" in names or "timeout" in names:
        phase = getattr(exc, "phase", None)
        what = f"{phase} timeout" if isinstance(phase, str) and phase else "timeout"
        return ProxyError(504, "timeout_error", f"{prefix}upstream {what}{suffix}", {}, True)
    if "SSLCertVerificationError" in names:
        # A certificate problem does not fix itself; tell the client not to retry.
        return ProxyError(502, "api_error", f"{prefix}TLS certificate verification failed{suffix}", {"x-should-retry": "false"}, False)
    if "ConnectError" in names or "ConnectionRefusedError" in names or "gaierror" in names:
        return ProxyError(502, "api_error", f"{prefix}could not connect to upstream{suffix}", {}, True)
    if ("ProtocolError" in names or "ConnectionError" in names or "IncompleteReadError" in names
            or "UpstreamError" in names):
        # UpstreamError itself: the connection broke before a response head (reset, closed unanswered).
        # Reset / closed keep-alive connection / truncated response: a fresh attempt usually works.
        return ProxyError(502, "api_error", f"{prefix}upstream connection failed{suffix}", {}, True)
    return ProxyError(502, "api_error", f"{prefix}upstream request failed{suffix}", {}, False)
