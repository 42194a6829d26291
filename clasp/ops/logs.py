"""Access log (one line per request) and debug dumps (CLASP `-debug`, `CLASP_DEBUG_REQUESTS`,
`CLASP_DEBUG_RESPONSES`), with secrets redacted from everything written.

Debug output covers what CLASP's does: incoming Anthropic requests, outgoing upstream requests, raw
upstream responses and the translated Anthropic responses.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Iterable, Mapping, TextIO, Union

from clasp.redaction import QUERY_SECRET_RE, REDACTED, Headers, drop_secrets, redact_headers, redact_variants, \
    secret_variants
from clasp.translate.jsontext import encodable

__all__ = ["AccessLog", "DebugLog"]


def _logfmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.1f}"
    s = v if isinstance(v, str) else str(v)
    # Quote anything that would break key=value parsing or the one-line-per-request guarantee.
    if not s or any(c in s for c in ' "\\') or not s.isprintable():
        return json.dumps(s)
    return s


def _rfc3339_ms(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


# Longest value of one access log field: model names and paths come from clients, and one line per
# request must not become megabytes of log.
MAX_FIELD_CHARS = 256


def _bounded(value: str, secrets: list[str]) -> str:
    """value cut to MAX_FIELD_CHARS (marked with its full length), encodable as UTF-8."""
    if len(value) > MAX_FIELD_CHARS:
        # drop secrets first, so that no prefix of one survives the cut
        longest = len(secrets[0]) if secrets else 0
        kept = drop_secrets(value[:MAX_FIELD_CHARS + longest], secrets)[:MAX_FIELD_CHARS]
        value = f"{kept}...[{len(value)} chars]"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (JSON can escape one): cannot be written
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


_ACCESS_FIELDS = (
    "method", "path", "status", "model", "upstream_model", "provider",
    "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cache",
)


class AccessLog:
    """One line per finished request, as ``key=value`` text or JSON lines.

    Standard fields come first in a fixed order (method, path, status, model, upstream_model,
    provider, latency_ms, ttft_ms, input_tokens, output_tokens, cache), then any extra fields.
    Fields whose value is None are left out of text lines and written as null in JSON.
    Key-like query parameters in ``path`` and any configured ``secrets`` are redacted. String values
    longer than MAX_FIELD_CHARS are cut.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        fmt: str = "text",
        wall: Callable[[], float] = time.time,
        secrets: Iterable[str] = (),
    ) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"unknown access log format {fmt!r} (use 'text' or 'json')")
        self.stream = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self._wall = wall
        self._secrets = secret_variants(secrets)

    def __repr__(self) -> str:
        return f"AccessLog(fmt={self.fmt!r}, secrets=<{len(self._secrets)} hidden>)"

    def log(self, **fields: Any) -> None:
        path = fields.get("path")
        if isinstance(path, str) and "=" in path:
            fields["path"] = QUERY_SECRET_RE.sub(r"\1" + REDACTED, path)
        ordered: dict[str, Any] = {"time": _rfc3339_ms(self._wall())}
        for k in _ACCESS_FIELDS:
            if k in fields:
                ordered[k] = fields[k]
        for k, v in fields.items():
            if k not in ordered:
                ordered[k] = v
        for k, v in ordered.items():
            if isinstance(v, str) and (len(v) > MAX_FIELD_CHARS or not v.isascii()):
                ordered[k] = _bounded(v, self._secrets)
        if self.fmt == "json":
            for k in ("latency_ms", "ttft_ms"):
                v = ordered.get(k)
                if isinstance(v, float):
                    ordered[k] = round(v, 1)
            line = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), default=str)
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in ordered.items() if v is not None)
        line = drop_secrets(line, self._secrets)  # fields rarely hold one, but never leak it
        line = encodable(line)  # a lone surrogate (config text from a non-UTF-8 env) must not drop the line
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not fail the request being served


BodyOrEvent = Union[bytes, bytearray, memoryview, str, Mapping[str, Any], list]


class DebugLog:
    """Redacted dumps of the four stages of a request (CLASP ``-debug``).

    ``requests`` enables the request side (incoming request, upstream request); ``responses`` the
    response side (upstream response or chunk, translated response or event). Callers may test
    ``debug.requests`` / ``debug.responses`` before building anything expensive.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        requests: bool = False,
        responses: bool = False,
        secrets: Iterable[str] = (),
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.requests = bool(requests)
        self.responses = bool(responses)
        self._secrets = secret_variants(secrets)
        self._wall = wall

    def __repr__(self) -> str:
        return f"DebugLog(requests={self.requests}, responses={self.responses}, secrets=<{len(self._secrets)} hidden>)"

    def incoming_request(self, body: BodyOrEvent, headers: Headers | None = None) -> None:
        if self.requests:
            self._dump("incoming request", None, headers, body)

    def upstream_request(self, url: str, headers: Headers | None, body: BodyOrEvent) -> None:
        if self.requests:
            self._dump("upstream request", url, headers, body)

    def upstream_response(self, status: int | None, headers: Headers | None, body: BodyOrEvent) -> None:
        if self.responses:
            self._dump("upstream response", None if status is None else f"status {status}", headers, body)

    def translated_response(self, body: BodyOrEvent) -> None:
        if self.responses:
            self._dump("translated response", None, None, body)

    def _dump(self, stage: str, detail: str | None, headers: Headers | None, body: BodyOrEvent) -> None:
        parts = [f"[clasp debug] {_rfc3339_ms(self._wall())} {stage}"]
        if detail:
            parts[0] += " " + detail
        if headers is not None:
            for k, v in redact_headers(headers):
                parts.append(f"  {k}: {v}")
        parts.append(_body_text(body).rstrip("\n"))  # SSE chunks end in blank lines
        text = encodable(redact_variants("\n".join(parts), self._secrets))
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # debug output is best effort


def _body_text(body: BodyOrEvent) -> str:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body).decode("utf-8", "replace")
    if isinstance(body, str):
        return body
    return json.dumps(body, ensure_ascii=False, default=str)
