"""JSON text at the edges: what a client body may contain, and output that always encodes.

Policy (one place, every path):
- client text with a lone UTF-16 surrogate ("\\ud800" escape with no partner) is rejected with
  a 400 at parse time, as the Anthropic API does; so is a body nested deeper than MAX_NESTING
  or holding NaN / Infinity (not JSON);
- text from upstreams is never rejected for that: a lone surrogate becomes U+FFFD and a
  non-finite number null when it is written out, so every byte the proxy sends (to the client,
  upstream, /metrics, logs) is valid UTF-8 JSON, and a client never stores a reply that the
  real API would refuse on the next turn.

The checks are cheap for normal bodies: the nesting check walks containers level by level in C,
the surrogate check is one regex scan of the bytes unless the body holds surrogate escapes at all.
Pure, standard library only.
"""
from __future__ import annotations

import gc
import json
import math
import re
from typing import Any

__all__ = ["MAX_NESTING", "MAX_TOOL_INPUT_NESTING", "nesting_exceeds", "deep_path", "has_lone_surrogate_escape",
           "lone_surrogate_path", "json_utf8", "json_str", "utf8", "encodable", "finite_float",
           "reject_constant"]

# Levels of arrays/objects, the body itself counted as 1. A real Claude Code request is about
# 10 deep; 128 leaves a tool input or schema over 100 levels of its own.
MAX_NESTING = 128
# A tool input from an upstream comes back in the next request as messages.N.content.M.input,
# six levels down: deeper than this, the client could never send the conversation again.
MAX_TOOL_INPUT_NESTING = MAX_NESTING - 8

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# the digit after "\\ud" in the escape of a low surrogate
_LOW_SECOND = frozenset((b"c", b"d", b"e", b"f", b"C", b"D", b"E", b"F"))
_PATH_SEGMENTS = 8   # how much of a long path an error message names
_SEGMENT_CHARS = 64


# ------------------------------------------------------------------------------ client input

def reject_constant(name: str) -> Any:
    """json parse_constant: NaN, Infinity and -Infinity are not JSON numbers."""
    raise ValueError(f"{name} is not a valid JSON number (non-finite numbers are not allowed)")


def finite_float(text: str) -> float:
    """json parse_float that refuses numbers too large for a float (1e999 would become inf)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def nesting_exceeds(value: Any, limit: int = MAX_NESTING) -> bool:
    """True if parsed JSON nests arrays/objects more than `limit` levels (the value is level 1).

    Fast path: one C-level gc.get_referents() per level over the containers of that level
    (filtered by gc.is_tracked, also in C), instead of a Python step per value. CPython leaves
    untracked only dicts holding no containers, i.e. leaves, so the level count is the true
    depth or one less; a count near the limit is settled by the exact walk."""
    level = [value] if isinstance(value, (dict, list)) else []
    levels = 0
    while level:
        levels += 1
        if levels >= limit:
            return deep_path(value, limit) is not None
        level = list(filter(gc.is_tracked, gc.get_referents(*level)))
    return False


def deep_path(value: Any, limit: int = MAX_NESTING) -> str | None:
    """Path ("messages.0.content...") to the first container deeper than `limit`, or None."""
    stack: list[tuple[Any, int, tuple]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            return _path_text(path)
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, child in items:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, path + (key,) if len(path) <= _PATH_SEGMENTS else path))
    return None


def has_lone_surrogate_escape(data: bytes) -> bool:
    """True if JSON text (UTF-8 bytes) holds a \\uXXXX escape of a lone surrogate; a pair is fine.

    One regex scan of the bytes for normal text (~0.3 ns per byte: faster than two substring
    searches, and than any search in a str holding non-Latin-1 characters); only escapes of
    surrogates are looked at one by one (an emoji escaped by an ensure_ascii client is a pair).
    An escape counts only after an even run of backslashes: in "\\\\ud800" the backslash is
    escaped and "ud800" is text."""
    low_expected_at = -1
    for m in _SURROGATE_ESCAPE.finditer(data):
        start = m.start()
        i = start
        while i and data[i - 1] == 0x5C:               # backslash
            i -= 1
        if (start - i) % 2:
            continue
        if data[start + 3] in b"89abAB":               # high: a low escape must follow at once
            end = m.end()
            if data[end:end + 3] in (b"\\ud", b"\\uD") and data[end + 3:end + 4] in _LOW_SECOND:
                low_expected_at = end
                continue
            return True
        if start != low_expected_at:
            return True
    return False


def lone_surrogate_path(value: Any) -> tuple[str, str] | None:
    """(path, offending character as an escape) of the first string or key with a lone
    surrogate in parsed JSON, or None. After json.loads every surrogate left is a lone one."""
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            m = _SURROGATE.search(node)
            if m:
                return _path_text(path), f"\\u{ord(m.group()):04x}"
            continue
        if isinstance(node, dict):
            for key, child in node.items():
                m = _SURROGATE.search(key)
                if m:
                    return _path_text(path + (key,)), f"\\u{ord(m.group()):04x}"
                stack.append((child, path + (key,)))
        elif isinstance(node, list):
            stack.extend((child, path + (i,)) for i, child in enumerate(node))
    return None


def _path_text(path: tuple) -> str:
    parts = [encodable(str(p))[:_SEGMENT_CHARS] for p in path[:_PATH_SEGMENTS]]
    if len(path) > _PATH_SEGMENTS:
        parts.append("...")
    return ".".join(parts) or "request body"


# ------------------------------------------------------------------------------ output

# One encoder: json.dumps with non-default arguments builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def json_utf8(obj: Any) -> bytes:
    """Compact UTF-8 JSON of `obj` that is always valid and always encodes: lone surrogates
    become U+FFFD and NaN / Infinity null (UTF-8 and JSON cannot carry them). The repair
    costs nothing unless needed."""
    try:
        return _encode(obj).encode("utf-8")
    except ValueError:  # UnicodeEncodeError (lone surrogate) or a non-finite float
        return _encode(_clean(obj)).encode("utf-8")


def json_str(obj: Any) -> str:
    """Compact JSON text of `obj` with NaN / Infinity as null (e.g. tool input in partial_json)."""
    try:
        return _encode(obj)
    except ValueError:
        return _encode(_clean(obj))


def utf8(text: str) -> bytes:
    """UTF-8 bytes of text, lone surrogates replaced by U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def encodable(text: str) -> str:
    """text with lone surrogates replaced by U+FFFD (so that writing it anywhere cannot fail)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def _clean(value: Any) -> Any:
    """Copy of JSON-like data with lone surrogates -> U+FFFD and non-finite floats -> None."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {encodable(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
