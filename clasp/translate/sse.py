"""Incremental upstream SSE parser and Anthropic SSE encoder (PROTOCOL.md §3.1, §3.2).

Pure: bytes in, strings/bytes out, no I/O. The parser works on whole buffers with
bytes.split/find so a large read costs a handful of C-level calls, not a Python loop per byte.
"""
from __future__ import annotations

import json

from clasp.translate.jsontext import json_utf8

__all__ = ["SSEParser", "SSEEventTooLarge", "encode_event", "encode_events", "DEFAULT_MAX_EVENT_BYTES"]

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024


class SSEEventTooLarge(ValueError):
    """The upstream sent a line, or an event's data, larger than the parser's limit.
    `payloads` are the events the same read completed before it (still to be relayed)."""

    def __init__(self, limit: int, payloads: list[str]) -> None:
        super().__init__(f"upstream sent an SSE line or event larger than {limit} bytes")
        self.limit = limit
        self.payloads = payloads


class SSEParser:
    """Turns upstream SSE bytes into the data payload of each dispatched event.

    Handles reads split at any byte (including inside a multibyte character or between
    the CR and LF of a CRLF), LF / CRLF / lone-CR line endings, comment lines (":"),
    multi-line data (joined with "\\n"), and ignores event/id/retry fields. Events with
    no data lines, or only empty data, are not reported. The caller checks for "[DONE]".

    Memory is bounded: an unterminated line longer than ``max_event_bytes``, or an event whose
    data lines add up to more, raises SSEEventTooLarge (an upstream sending without end must
    not grow the proxy without end).
    """

    __slots__ = ("_parts", "_pending", "_data", "_size", "_limit", "_skip_lf", "_bom_checked")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []    # pieces of the current, not yet terminated line
        self._pending = 0                # bytes in _parts
        self._data: list[str] = []       # data lines of the event being assembled
        self._size = 0                   # bytes of data in _data
        self._limit = max_event_bytes
        self._skip_lf = False            # previous read ended with CR: a leading LF belongs to it
        self._bom_checked = False

    def feed(self, data: bytes) -> list[str]:
        """Consume one read; return the payloads of every event it completed."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
                if not data:
                    return []
        parts = self._parts
        if not self._bom_checked:
            # A UTF-8 BOM may open the stream (SSE spec); it can itself be split across reads.
            head = b"".join(parts) + data
            if len(head) < 3 and _BOM.startswith(head):
                self._parts = [head]
                return []
            self._bom_checked = True
            parts.clear()
            self._pending = 0
            data = head[3:] if head.startswith(_BOM) else head
        if b"\n" not in data and b"\r" not in data:
            # No line ends here: keep the piece (a list, so one huge line costs O(n), not O(n^2)).
            if data:
                self._pending += len(data)
                if self._pending + self._size > self._limit:
                    raise SSEEventTooLarge(self._limit, [])
                parts.append(data)
            return []
        if parts:
            parts.append(data)
            buf = b"".join(parts)
            parts.clear()
            self._pending = 0
        else:
            buf = data
        if b"\r" in buf:
            # Rare in practice: normalise CRLF and lone CR to LF for this buffer. A CR at the
            # very end terminates its line now; an LF starting the next read is its partner.
            if buf[-1:] == b"\r":
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        rest = lines.pop()
        out = self._lines(lines)
        if rest:
            self._pending = len(rest)
            if self._pending + self._size > self._limit:
                raise SSEEventTooLarge(self._limit, out)
            parts.append(rest)
        return out

    def close(self) -> list[str]:
        """End of stream: an unterminated last line and pending data are dispatched."""
        lines = [b"".join(self._parts)] if self._parts else []
        self._parts = []
        self._pending = 0
        lines.append(b"")
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[str]:
        out: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    payload = "\n".join(data) if len(data) > 1 else data[0]
                    data.clear()
                    self._size = 0
                    if payload:
                        out.append(payload)
                continue
            if line.startswith(b"data:"):
                # Decode per complete line, so a multibyte char split across reads is intact.
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._size += len(value)
                if self._size > self._limit:
                    raise SSEEventTooLarge(self._limit, out)
                data.append(value.decode("utf-8", "replace"))
                continue
            if line[:1] == b":":
                continue  # comment / keep-alive (": OPENROUTER PROCESSING")
            if line == b"data":
                data.append("")  # field name without colon: empty value (SSE spec)
            # event:, id:, retry: and unknown fields are irrelevant to Chat Completions.
        return out


# One encoder object: json.dumps with non-default arguments builds a new encoder per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

_PREFIXES: dict[str, bytes] = {
    name: b"event: " + name.encode("ascii") + b"\ndata: "
    for name in (
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop", "error",
    )
}


def encode_event(event: dict) -> bytes:
    """One Anthropic SSE event: b"event: <type>\\ndata: <compact json>\\n\\n"."""
    etype = event["type"]
    prefix = _PREFIXES.get(etype)
    if prefix is None:
        prefix = b"event: " + str(etype).encode("utf-8") + b"\ndata: "
    try:
        body = _encode_json(event).encode("utf-8")
    except ValueError:
        # Lone surrogates (from "\\ud800" escapes upstream) cannot be UTF-8, nor NaN JSON:
        # U+FFFD / null instead (jsontext), so the client never stores text that the real API
        # would reject when the conversation is sent back.
        body = json_utf8(event)
    return prefix + body + b"\n\n"


def encode_events(events: list[dict]) -> bytes:
    """Several events as one buffer, for a single write per upstream chunk."""
    if len(events) == 1:
        return encode_event(events[0])
    return b"".join([encode_event(e) for e in events])
