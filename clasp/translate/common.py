"""Shared helpers for the response translators (PROTOCOL §2): ids, tool-argument repair,
content/reasoning extraction, finish_reason mapping and usage mapping.

Used by both the non-streaming translator (response.py) and the StreamTranslator (stream.py),
so the two paths agree on every detail. Pure functions, standard library only.
"""
from __future__ import annotations

import json
import os
import re
import string

from clasp.translate.jsontext import MAX_TOOL_INPUT_NESTING, nesting_exceeds

__all__ = [
    "random_id",
    "message_id",
    "anthropic_message",
    "tool_use_id",
    "parse_tool_arguments",
    "content_text",
    "reasoning_text",
    "stop_reason_for",
    "anthropic_usage",
]

_BASE62 = string.ascii_letters + string.digits
_ID_OK = re.compile(r"[A-Za-z0-9_-]+")


# byte -> base62 character; the slight modulo bias leaves ~5.9 bits per character (142 bits in
# 24), plenty for ids that must not collide, and one translate() is far cheaper than 24 choices.
_BYTE_TO_BASE62 = bytes(ord(_BASE62[b % 62]) for b in range(256))


def random_id(prefix: str, n: int = 24) -> str:
    """prefix + n random base62 characters from the OS CSPRNG (ids must not collide across users)."""
    return prefix + os.urandom(n).translate(_BYTE_TO_BASE62).decode("ascii")


def message_id() -> str:
    """A new Anthropic message id (§2.1): the same scheme streamed and not, whatever the upstream's
    own completion id looks like (ids of one kind, whichever way the client asked)."""
    return random_id("msg_")


def anthropic_message(model: str, content: list, stop_reason: str | None, stop_sequence: str | None,
                      usage: dict, msg_id: str | None = None) -> dict:
    """An Anthropic Message object (a new id unless given)."""
    return {"id": msg_id or message_id(), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}


def tool_use_id(upstream_id: str | None, seen: set[str]) -> str:
    """tool_use id (§2.2): the upstream id when it is valid and unique in this message, else a
    fresh "toolu_" id. Records the result in `seen` (duplicates would make the client pair one
    tool_result with two calls)."""
    if isinstance(upstream_id, str) and upstream_id not in seen and _ID_OK.fullmatch(upstream_id):
        tid = upstream_id
    else:
        tid = random_id("toolu_")
        while tid in seen:  # astronomically unlikely, but cheap to rule out
            tid = random_id("toolu_")
    seen.add(tid)
    return tid


# ---------------------------------------------------------------------------------------------
# Tool-argument repair (§2.2)

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\r?\n?(.*?)\r?\n?[ \t]*```", re.S)
_FAILED = object()
_MAX_STRING_NESTING = 3  # "JSON in a JSON string" - a few levels is plenty, never recurse unbounded


def _strip_trailing_commas(s: str) -> str:
    """Remove commas directly before } or ] outside of string literals (a common LLM slip)."""
    out: list[str] = []
    in_str = False
    esc = False
    n = len(s)
    i = 0
    while i < n:
        c = s[i]
        if in_str:
            out.append(c)
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif c == ",":
            j = i + 1
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j >= n or s[j] not in "}]":
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _first_balanced_object(s: str) -> str | None:
    """The first complete {...} in s (string-literal aware), or None if it never closes."""
    start = s.find("{")
    if start < 0:
        return None
    depth = 0
    in_str = False
    esc = False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[start : i + 1]
    return None


def _loads(s: str) -> object:
    """json.loads, then the same text without trailing commas; _FAILED if neither parses.
    Text nested too deeply to parse (RecursionError) is unparseable like any other."""
    try:
        return json.loads(s)
    except (ValueError, RecursionError):
        pass
    if "," in s:
        fixed = _strip_trailing_commas(s)
        if fixed != s:
            try:
                return json.loads(fixed)
            except (ValueError, RecursionError):
                pass
    return _FAILED


def _parse_text(text: str) -> object:
    """Parse possibly-damaged JSON text; returns the value or _FAILED."""
    value = _loads(text)
    if value is not _FAILED:
        return value
    m = _FENCE.search(text)
    if m:
        text = m.group(1).strip()
        value = _loads(text)
        if value is not _FAILED:
            return value
    cut = _first_balanced_object(text)
    if cut is not None and cut != text:
        value = _loads(cut)
    return value


def _as_object(value: object, depth: int) -> dict:
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    if isinstance(value, str):
        inner = value.strip()
        if not inner:
            return {}
        if depth < _MAX_STRING_NESTING and inner[0] in "{`\"":
            # A JSON string that itself contains JSON (double-encoded arguments).
            parsed = _parse_text(inner)
            if isinstance(parsed, (dict, str)):
                return _as_object(parsed, depth + 1)
    return {"value": value}


def parse_tool_arguments(raw: object) -> dict:
    """Tool-call `arguments` -> tool_use `input` object (§2.2).

    dict as-is; ""/whitespace/None -> {}; JSON text parsed, with repair of code fences, text
    around the first balanced object, trailing commas and double encoding; unrepairable -> {}
    (the client re-validates against the schema and lets the model retry), and so is JSON
    nested deeper than the client could send back; non-object JSON -> {"value": x}."""
    if isinstance(raw, dict):
        return raw
    if raw is None:
        return {}
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8", "replace")
    if not isinstance(raw, str):
        return {"value": raw}
    text = raw.strip()
    if not text:
        return {}
    value = _parse_text(text)
    if value is _FAILED or nesting_exceeds(value, MAX_TOOL_INPUT_NESTING):
        return {}
    return _as_object(value, 0)


# ---------------------------------------------------------------------------------------------
# Content and reasoning extraction


def content_text(content: object) -> str:
    """Text of a Chat Completions `content` value: a string, a list of parts (text parts or bare
    strings; other part types carry no text) or None."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, dict):
        content = (content,)
    elif not isinstance(content, (list, tuple)):
        return ""
    pieces: list[str] = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind is None or kind == "text" or kind == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    pieces.append(text)
    return "".join(pieces)


def reasoning_text(obj: dict) -> str:
    """Reasoning text of a message or delta (§2.3): first non-empty of `reasoning_content`,
    `reasoning`, joined `reasoning_details[*].text`. Whitespace counts (streamed newlines matter)."""
    value = obj.get("reasoning_content")
    if isinstance(value, str) and value:
        return value
    value = obj.get("reasoning")
    if isinstance(value, str) and value:
        return value
    details = obj.get("reasoning_details")
    if isinstance(details, list) and details:
        pieces: list[str] = []
        for d in details:
            if isinstance(d, dict):
                text = d.get("text")
                if not isinstance(text, str):
                    # OpenRouter "reasoning.summary" entries carry their text under "summary".
                    text = d.get("summary")
                if isinstance(text, str):
                    pieces.append(text)
        return "".join(pieces)
    return ""


# ---------------------------------------------------------------------------------------------
# finish_reason and usage


def stop_reason_for(
    finish_reason: str | None,
    has_tool_use: bool,
    matched_stop: str | None,
    stop_sequences: list[str],
    completion_tokens: int | None = None,
    max_tokens: int = 0,
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) per the §2.4 table.

    Tool blocks win over any finish_reason but `length` (OpenAI/Gemini/Ollama say `stop` with tool
    calls; answering end_turn would make the client skip running them).

    `length` with fewer output tokens (as the upstream counted them) than the limit sent
    (`max_tokens`, after clasp's own cap) means the server's context window filled up first
    (llama.cpp, vLLM and Ollama stop there): "max_tokens" would make Claude Code ask for a
    continuation that cannot fit, "model_context_window_exceeded" makes it compact."""
    if finish_reason == "length":
        if completion_tokens is not None and (not max_tokens or completion_tokens < max_tokens):
            return "model_context_window_exceeded", None
        return "max_tokens", None
    if has_tool_use:
        return "tool_use", None
    if (
        finish_reason == "stop"
        and isinstance(matched_stop, str)
        and matched_stop
        and matched_stop in stop_sequences
    ):
        return "stop_sequence", matched_stop
    # stop, tool_calls/function_call without blocks, content_filter, null, error, unknown.
    return "end_turn", None


def completion_tokens(usage: object) -> int | None:
    """The upstream's own output-token count, or None when it did not report one."""
    return _count(usage.get("completion_tokens")) if isinstance(usage, dict) else None


def _count(value: object) -> int | None:
    """A token count from usage JSON: non-negative int, else None (bools and junk are not counts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value >= 0 and value == value and value != float("inf"):
        return int(value)
    return None


def anthropic_usage(usage: dict | None, estimated_input: int, output_chars: int) -> dict:
    """Anthropic usage from OpenAI usage (§2.5), estimating what the upstream did not report.

    Anthropic's input_tokens excludes cache reads, so cached tokens move from prompt_tokens to
    cache_read_input_tokens. A zero input count for a real prompt breaks the client's context
    meter and auto-compaction, so missing counts are estimated instead."""
    prompt = completion = None
    cached = 0
    if isinstance(usage, dict):
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        c = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        if not c:
            c = _count(usage.get("prompt_cache_hit_tokens"))  # DeepSeek
        cached = c or 0
    if prompt:
        cached = min(cached, prompt)
        input_tokens = prompt - cached
    else:
        input_tokens = max(int(estimated_input), 0)
        cached = 0
    if completion is None or (completion == 0 and output_chars > 0):
        completion = (output_chars + 3) // 4 if output_chars > 0 else 0
    return {
        "input_tokens": input_tokens,
        "output_tokens": completion,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
