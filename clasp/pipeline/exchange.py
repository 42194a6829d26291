"""The book-keeping of one /v1/messages request, for metrics and the access log."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Exchange:
    started: float
    requested_model: str = ""
    upstream_model: str = ""
    provider: str = ""
    api: str = ""                   # upstream dialect of the route that served it
    stream: bool = False
    status: int = 0
    ttft: float | None = None
    input_tokens: int = 0           # cache reads included
    cached_tokens: int = 0          # input tokens read from the provider's prompt cache
    output_tokens: int = 0
    tool_calls: int = 0
    cache: str = ""
    error_type: str = ""            # the Anthropic error the client got (dashboard's last errors)
    error_message: str = ""
    key: str = ""                   # the client key's name ("" without one)

    def book(self, usage: dict, tool_calls: int) -> None:
        """Token counts of an Anthropic usage object (cache reads count as input) and tool calls."""
        self.cached_tokens = usage.get("cache_read_input_tokens", 0)
        self.input_tokens = usage.get("input_tokens", 0) + self.cached_tokens
        self.output_tokens = usage.get("output_tokens", 0)
        self.tool_calls = tool_calls


@dataclass(frozen=True)
class CachedResponse:
    """A whole translated response kept by the response cache."""
    body: bytes
    provider: str
    upstream_model: str

    def to_bytes(self) -> bytes:
        """For a store: a JSON line [provider, upstream_model], then the body as is."""
        return _CACHED_V1 + json.dumps([self.provider, self.upstream_model]).encode() + b"\n" + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> "CachedResponse | None":
        """The response to_bytes() wrote, or None for anything else (another version, garbage)."""
        if not data.startswith(_CACHED_V1):
            return None
        head, sep, body = data[len(_CACHED_V1):].partition(b"\n")
        try:
            provider, upstream_model = json.loads(head)
        except (ValueError, TypeError):
            return None
        if not sep or not isinstance(provider, str) or not isinstance(upstream_model, str):
            return None
        return cls(body, provider, upstream_model)


_CACHED_V1 = b"clasp-cached-response/1\n"
