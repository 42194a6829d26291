"""What a secret looks like, in one place: configured keys (and their JSON-escaped forms) and
credential-shaped text (Authorization values, provider key formats, keys in URLs).

Used for everything clasp writes: client-visible error messages (some upstreams echo the key
they got), the access log, debug dumps and the Config repr.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Mapping, Union

__all__ = ["REDACTED", "SENSITIVE_HEADERS", "Headers", "drop_secrets", "redact", "redact_headers",
           "redact_variants", "secret_variants", "QUERY_SECRET_RE"]

REDACTED = "[REDACTED]"

SENSITIVE_HEADERS = frozenset(
    ("authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie")
)

Headers = Union[Mapping[str, str], Iterable["tuple[str, str]"]]

# "authorization": "...", "api_key": "..." etc. inside JSON text (header dumps, config echoes).
_JSON_SECRET_RE = re.compile(
    r'("(?:authorization|proxy-authorization|x-api-key|api-key|api_key|apikey|cookie|set-cookie|'
    r'access_token|refresh_token|client_secret|password)"\s*:\s*)"(?:[^"\\]|\\.)*"',
    re.IGNORECASE,
)
# Header-style "Authorization: ...", "x-api-key = ..." up to the end of the line.
_HEADER_SECRET_RE = re.compile(
    r"(?<![\w-])(authorization|proxy-authorization|x-api-key|api-key|cookie|set-cookie)([ \t]*[:=][ \t]*)"
    r"(?![ \t]*\[REDACTED\])[^\r\n]+",
    re.IGNORECASE,
)
# A bearer token outside a header line (a digit is required so prose such as "Bearer
# authentication failed" survives; inside "Authorization: ..." everything goes anyway).
_BEARER_RE = re.compile(r"\b(Bearer)[ \t]+(?=[A-Za-z._~+/=-]*\d)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
# Provider key formats: OpenAI/Anthropic/OpenRouter/DeepSeek "sk-...", Groq "gsk_", xAI, NVIDIA,
# Hugging Face; Google "AIza...".
_KEY_RE = re.compile(r"\b(?:sk|gsk|xai|nvapi|hf)[-_][A-Za-z0-9][A-Za-z0-9_*-]{15,}|\bAIza[0-9A-Za-z_-]{20,}")
# "api-key: xxx", "api_key=xxx", "x-api-key": "xxx" in running text.
_API_KEY_VALUE_RE = re.compile(r"""((?:x-)?api[-_]?key["']?\s*[:=]\s*["']?)[A-Za-z0-9._~+/=-]{8,}""", re.IGNORECASE)
# Keys in URLs: ?key=... (Gemini), api-key=..., sig=... (Azure SAS), and userinfo credentials
# (user:password@, or a bare token@ as in https://TOKEN@host).
QUERY_SECRET_RE = re.compile(
    r"([?&](?:key|api[-_]?key|apikey|x-api-key|access_token|id_token|token|auth|password|passwd|secret|"
    r"client_secret|sig|signature|code)=)[^&#\s\"']+", re.IGNORECASE
)
_URL_CREDS_RE = re.compile(r"(://)[^/\s@\"'<>?#]+@")


def secret_variants(secrets: Iterable[str]) -> list[str]:
    """Configured secrets plus their JSON-escaped forms, longest first (a key may contain another)."""
    out: set[str] = set()
    for s in secrets:
        if not s:
            continue
        out.add(s)
        escaped = json.dumps(s)[1:-1]
        if escaped != s:
            out.add(escaped)
    return sorted(out, key=len, reverse=True)


def drop_secrets(text: str, variants: list[str]) -> str:
    """Configured secrets replaced: cheap substring checks, the common case finds none."""
    for s in variants:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def redact_variants(text: str, variants: list[str]) -> str:
    text = drop_secrets(text, variants)
    text = _JSON_SECRET_RE.sub(r'\1"' + REDACTED + '"', text)
    text = _HEADER_SECRET_RE.sub(r"\1\2" + REDACTED, text)
    text = _BEARER_RE.sub(r"\1 " + REDACTED, text)
    text = _KEY_RE.sub(REDACTED, text)
    text = _API_KEY_VALUE_RE.sub(r"\1" + REDACTED, text)
    text = QUERY_SECRET_RE.sub(r"\1" + REDACTED, text)
    text = _URL_CREDS_RE.sub(r"\1" + REDACTED + "@", text)
    return text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every configured secret and anything that looks like a credential with [REDACTED]."""
    return redact_variants(text, secret_variants(secrets))


def redact_headers(headers: Headers) -> list[tuple[str, str]]:
    """Header pairs with credential-bearing values replaced (names keep their case)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, REDACTED if k.lower() in SENSITIVE_HEADERS else v) for k, v in items]
