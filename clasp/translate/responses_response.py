"""Non-streaming response: OpenAI Responses API -> Anthropic Message (issue 13).

Pure dict -> dict. The helpers below (item text, signatures, stop sequences, stop_reason, usage,
errors) are shared with ResponsesStreamTranslator (responses_stream.py), so the streamed and the
whole answer agree on every detail; the Chat Completions rules they build on come from common.py
and errors.py.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from clasp.translate.common import (
    anthropic_usage,
    completion_tokens,
    anthropic_message,
    parse_tool_arguments,
    stop_reason_for,
    tool_use_id,
)
from clasp.translate.errors import ProxyError, map_upstream_error
from clasp.translate.jsontext import json_str
from clasp.translate.responses_common import encode_reasoning_signature

if TYPE_CHECKING:
    from clasp.translate.capabilities import Capabilities
    from clasp.translate.context import RequestContext

__all__ = [
    "translate_responses_response",
    "ITEM_KINDS",
    "message_parts",
    "reasoning_parts",
    "reasoning_signature",
    "arguments_text",
    "first_stop",
    "responses_usage",
    "responses_stop_reason",
    "responses_error",
]

log = logging.getLogger("clasp.translate")

# Output item types that become content blocks; others (web_search_call, ...) are skipped.
ITEM_KINDS = frozenset(("message", "reasoning", "function_call"))
THINKING_PART_SEPARATOR = "\n\n"  # between the parts of one reasoning summary


# ---------------------------------------------------------------------------------------------
# Output items


def message_parts(item: dict) -> list[tuple[int, str]]:
    """(content_index, text) of a `message` item's parts: output_text text, refusal text."""
    content = item.get("content")
    parts: list[tuple[int, str]] = []
    if isinstance(content, list):
        for i, part in enumerate(content):
            if isinstance(part, dict):
                text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
                if isinstance(text, str):
                    parts.append((i, text))
    return parts


def reasoning_parts(item: dict) -> list[tuple[tuple[str, int], str]]:
    """(key, text) of a `reasoning` item's summary parts, then of its reasoning_text content parts
    (vLLM / gpt-oss servers send the raw reasoning there). Keys match the streaming events:
    ("s", summary_index) and ("c", content_index)."""
    parts: list[tuple[tuple[str, int], str]] = []
    for field, tag in (("summary", "s"), ("content", "c")):
        value = item.get(field)
        if isinstance(value, list):
            for i, part in enumerate(value):
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(((tag, i), text))
    return parts


def reasoning_signature(item: object) -> str:
    """The thinking-block signature carrying a reasoning item back in the next request; "" when
    the item has no id or no encrypted_content (a bare id would make a store:false upstream look
    up an item it never kept, so such reasoning is not round-tripped)."""
    if not isinstance(item, dict):
        return ""
    item_id, enc = item.get("id"), item.get("encrypted_content")
    if isinstance(item_id, str) and item_id and isinstance(enc, str) and enc:
        return encode_reasoning_signature(item_id, enc)
    return ""


def arguments_text(value: object) -> str:
    """A function_call's `arguments` as text (some servers send an object)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json_str(value)


# ---------------------------------------------------------------------------------------------
# Stop sequences (the Responses API has no `stop`: clasp trims locally)


def first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """(start, sequence) of the stop sequence that completes first in text, or None. Generation
    would have stopped as soon as one sequence was complete, so the earliest END wins."""
    best: tuple[int, str] | None = None
    best_end = 0
    for seq in stops:
        if not seq:
            continue
        i = text.find(seq)
        if i >= 0:
            end = i + len(seq)
            if best is None or end < best_end or (end == best_end and i < best[0]):
                best = (i, seq)
                best_end = end
    return best


# ---------------------------------------------------------------------------------------------
# Usage, stop_reason, errors


def responses_usage(usage: object) -> dict | None:
    """Responses usage in the Chat Completions shape common.anthropic_usage reads (input_tokens,
    input_tokens_details.cached_tokens, output_tokens); None when there is none."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    if not isinstance(details, dict):
        details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = usage.get("input_tokens")
    if prompt is None:
        prompt = usage.get("prompt_tokens")
    output = usage.get("output_tokens")
    if output is None:
        output = usage.get("completion_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": output, "prompt_tokens_details": {"cached_tokens": cached}}


def responses_stop_reason(
    status: object,
    incomplete_reason: object,
    has_tool_use: bool,
    matched_stop: str | None,
    output_tokens: int | None,
    max_tokens: int,
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished Responses answer.

    A matched stop sequence ends the answer there (what came after was dropped), so it beats a
    later truncation; calls before it still need running. `max_output_tokens` follows the chat
    `length` rule (fewer output tokens than the limit sent means the context window filled)."""
    if matched_stop is not None:
        return ("tool_use", None) if has_tool_use else ("stop_sequence", matched_stop)
    if status == "incomplete":
        if incomplete_reason == "max_output_tokens":
            return stop_reason_for("length", has_tool_use, None, [], output_tokens, max_tokens)
        if incomplete_reason == "content_filter":
            return "refusal", None
    if not has_tool_use and max_tokens and output_tokens is not None and output_tokens >= max_tokens:
        # "completed" at exactly the limit sent: llama.cpp's /v1/responses says so when
        # max_output_tokens cut the answer; ending there by chance is rare and only costs a
        # continuation, a cut answer taken as complete would lose the rest
        return "max_tokens", None
    return ("tool_use" if has_tool_use else "end_turn"), None


# Responses error codes are strings; map_upstream_error keys on the HTTP status they stand for.
# First match wins ("invalid_api_key" is an auth error, not a bad request).
_CODE_STATUS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("rate_limit", "insufficient_quota", "quota_exceeded"), 429),
    (("overloaded", "slow_down"), 503),
    (("invalid_api_key", "authentication", "unauthorized", "unauthenticated"), 401),
    (("permission", "forbidden"), 403),
    (("not_found",), 404),
    (("timeout",), 408),
    (("context_length", "max_length", "too_long", "too_large", "too_small", "invalid", "image",
      "unsupported", "bad_request", "empty"), 400),
)


def _error_status(code: object, etype: object) -> int:
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    words = f"{code if isinstance(code, str) else ''} {etype if isinstance(etype, str) else ''}".lower()
    for markers, status in _CODE_STATUS:
        if any(m in words for m in markers):
            return status
    return 500  # server_error and anything unknown: an upstream fault (overflow wording still counts)


def responses_error(err: object, provider: str, ctx: RequestContext | None,
                    default: str = "upstream response failed") -> ProxyError:
    """A Responses error object ({"code","message"[,"type","param"]}: response.error, the
    `error` event, a 2xx error body) -> the ProxyError the client sees, through the same
    errors.map_upstream_error as chat errors (context overflow wording, rate limit, auth)."""
    fields: dict = {}
    if isinstance(err, dict):
        for key in ("message", "type", "code", "param"):
            value = err.get(key)
            if value is not None:
                fields[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    elif isinstance(err, str) and err:
        fields["message"] = err
    if not fields.get("message"):
        fields["message"] = f"{default} (code {fields['code']})" if fields.get("code") else default
    status = _error_status(fields.get("code"), fields.get("type"))
    body = json.dumps({"error": fields}).encode("ascii")
    return map_upstream_error(status, {}, body, provider, ctx)


# ---------------------------------------------------------------------------------------------
# The whole response


def translate_responses_response(upstream: dict, ctx: RequestContext, caps: Capabilities) -> dict:
    """Translate a 2xx Responses API response object into an Anthropic Message.

    Output items in order: reasoning -> thinking (summary text, clasp signature), message ->
    text (output_text and refusal parts), function_call -> tool_use. Raises ProxyError for a
    failed/cancelled response or an error body without output."""
    if not isinstance(upstream, dict):
        upstream = {}
    status = upstream.get("status")
    output = upstream.get("output")
    if not isinstance(output, list):
        output = []
    err = upstream.get("error")
    if status == "failed" or (err and not output):
        raise responses_error(err, "upstream", ctx)
    if status == "cancelled":
        raise responses_error(err, "upstream", ctx, "upstream response was cancelled")

    show_thinking = bool(getattr(ctx, "show_thinking", False))
    stops = [s for s in (getattr(ctx, "stop_sequences", None) or []) if isinstance(s, str) and s]
    name_map = getattr(ctx, "name_map", None) or {}
    seen: set[str] = set()
    blocks: list[dict] = []
    out_chars = 0
    matched: str | None = None
    tools = 0
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            text = "".join(t for _, t in message_parts(item))
            out_chars += len(text)
            if matched is not None:
                continue  # after a stop sequence nothing more was "generated"
            if stops:
                hit = first_stop(text, stops)
                if hit is not None:
                    text = text[:hit[0]]
                    matched = hit[1]
            if text.strip():  # never an empty/whitespace text block (PROTOCOL §2.2)
                blocks.append({"type": "text", "text": text})
        elif kind == "reasoning":
            parts = reasoning_parts(item)
            out_chars += sum(len(t) for _, t in parts)
            if matched is not None or not show_thinking:
                continue
            thinking = THINKING_PART_SEPARATOR.join(t for _, t in parts if t)
            signature = reasoning_signature(item)
            if thinking or signature:
                blocks.append({"type": "thinking", "thinking": thinking, "signature": signature})
        elif kind == "function_call":
            args = arguments_text(item.get("arguments"))
            out_chars += len(args)
            if matched is not None:
                continue
            name = item.get("name")
            if not isinstance(name, str) or not name:
                log.warning("dropping upstream function_call without a name")
                continue
            call_id = item.get("call_id")
            tools += 1
            blocks.append({
                "type": "tool_use",
                "id": tool_use_id(call_id if isinstance(call_id, str) else None, seen),
                "name": name_map.get(name, name),
                "input": parse_tool_arguments(args),
            })

    usage = responses_usage(upstream.get("usage"))
    details = upstream.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    stop_reason, stop_sequence = responses_stop_reason(
        status, reason, tools > 0, matched, completion_tokens(usage), int(getattr(ctx, "max_tokens", 0) or 0))
    return anthropic_message(ctx.requested_model, blocks, stop_reason, stop_sequence,
                             anthropic_usage(usage, int(getattr(ctx, "estimated_input_tokens", 0) or 0), out_chars))
