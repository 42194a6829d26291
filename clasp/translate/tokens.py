"""Local input-token estimator (PROTOCOL §6.2), used for count_tokens, message_start and
missing upstream usage.

No tokenizer: ~4 ASCII characters or ~1.5 non-ASCII characters per token, +4 per message,
~1600 per image (w*h/750 when the size can be read from a PNG/GIF header), +300 once when
tools exist. Over-estimating is the safe side (Claude Code compacts earlier, never later).
One pass over the body, no copies; tolerant of malformed input (count_tokens must not crash).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Any

from clasp.translate.schema import content_key

__all__ = ["estimate_tokens", "image_tokens"]

_PER_MESSAGE = 4
_PER_IMAGE = 1600          # Anthropic resizes images to about 1.15 MP, i.e. at most ~1600 tokens
_PER_DOCUMENT = 1600       # a PDF page is 1.5-3k tokens; page count is unknown without parsing
_TOOLS_OVERHEAD = 300


class _Counter:
    __slots__ = ("ascii", "other", "fixed")

    def __init__(self) -> None:
        self.ascii = 0
        self.other = 0
        self.fixed = 0

    def text(self, s: Any) -> None:
        if not isinstance(s, str) or not s:
            return
        if s.isascii():
            self.ascii += len(s)
        else:
            n_ascii = len(s.encode("ascii", "ignore"))
            self.ascii += n_ascii
            self.other += len(s) - n_ascii

    def json(self, value: Any) -> None:
        if value is None:
            return
        try:
            self.text(json.dumps(value, ensure_ascii=False, default=str))
        except (TypeError, ValueError):  # circular or exotic input: count nothing rather than fail
            pass

    def total(self) -> int:
        return math.ceil(self.ascii / 4 + self.other / 1.5) + self.fixed


def image_tokens(source: Any) -> int:
    """Estimated tokens for an Anthropic image source: w*h/750 (capped at 1600) when a base64
    PNG/GIF header reveals the size, else 1600."""
    if isinstance(source, dict) and source.get("type") == "base64":
        data = source.get("data")
        if isinstance(data, str) and len(data) >= 32:
            try:
                head = base64.b64decode(data[:32], validate=False)
            except (binascii.Error, ValueError):
                head = b""
            size = None
            if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
                size = struct.unpack(">II", head[16:24])
            elif head[:4] == b"GIF8" and len(head) >= 10:
                size = struct.unpack("<HH", head[6:10])
            if size and size[0] > 0 and size[1] > 0:
                return max(1, min(_PER_IMAGE, math.ceil(size[0] * size[1] / 750)))
    return _PER_IMAGE


def _blocks(c: _Counter, content: Any) -> None:
    if isinstance(content, str):
        c.text(content)
        return
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text":
            c.text(block.get("text"))
        elif btype == "tool_use" or btype == "server_tool_use":
            c.text(block.get("name"))
            c.json(block.get("input"))
        elif btype == "tool_result":
            _blocks(c, block.get("content"))
        elif btype == "thinking":
            c.text(block.get("thinking"))
        elif btype == "image":
            c.fixed += image_tokens(block.get("source"))
        elif btype == "document":
            c.text(block.get("title"))
            c.text(block.get("context"))
            source = block.get("source")
            if isinstance(source, dict):
                stype = source.get("type")
                if stype == "text":
                    c.text(source.get("data"))
                elif stype == "content":
                    _blocks(c, source.get("content"))
                else:
                    c.fixed += _PER_DOCUMENT
        elif btype == "search_result":
            c.text(block.get("title"))
            c.text(block.get("source"))
            _blocks(c, block.get("content"))
        elif btype == "web_search_tool_result":
            c.json(block.get("content"))
        # redacted_thinking (opaque), tool_reference and unknown blocks: nothing readable.


def estimate_tokens(body: dict) -> int:
    """Estimated input tokens of an Anthropic request body (system, messages, tools)."""
    if not isinstance(body, dict):
        return 0
    c = _Counter()
    _blocks(c, body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            c.fixed += _PER_MESSAGE
            if isinstance(message, dict):
                _blocks(c, message.get("content"))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        c.fixed += _TOOLS_OVERHEAD
        for tool in tools:
            if isinstance(tool, dict):
                c.text(tool.get("name"))
                c.text(tool.get("description"))
                _schema(c, tool.get("input_schema"))
    return c.total()


# Character counts of tool input schemas by content: Claude Code sends the same ~30 KB of
# schemas on every turn, and serializing them is most of an estimate's cost.
_SCHEMA_COUNTS: dict[bytes | str, tuple[int, int]] = {}
_SCHEMA_COUNTS_MAX = 512
_MEMO_MAX_KEY = 64 * 1024


def _schema(c: _Counter, schema: Any) -> None:
    """c.json(schema), memoized by content (schema.content_key)."""
    if schema is None:
        return
    try:
        key = content_key(schema)
    except (TypeError, ValueError):  # circular: c.json counts nothing rather than fail
        c.json(schema)
        return
    counts = _SCHEMA_COUNTS.get(key)
    if counts is None:
        sub = _Counter()
        sub.json(schema)
        counts = (sub.ascii, sub.other)
        if len(key) <= _MEMO_MAX_KEY:
            if len(_SCHEMA_COUNTS) >= _SCHEMA_COUNTS_MAX:
                _SCHEMA_COUNTS.clear()
            _SCHEMA_COUNTS[key] = counts
    c.ascii += counts[0]
    c.other += counts[1]
