"""Non-streaming response: Chat Completions -> Anthropic Message (PROTOCOL §2).

Pure dict -> dict. Shares every rule with the streaming translator through common.py.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from clasp.translate.common import (
    anthropic_usage,
    completion_tokens,
    content_text,
    anthropic_message,
    parse_tool_arguments,
    reasoning_text,
    stop_reason_for,
    tool_use_id,
)
from clasp.translate.errors import map_upstream_error

if TYPE_CHECKING:
    from clasp.translate.capabilities import Capabilities
    from clasp.translate.context import RequestContext

__all__ = ["translate_response", "split_think_tags"]

log = logging.getLogger("clasp.translate")

_OPEN = "<think>"
_CLOSE = "</think>"


def split_think_tags(text: str) -> tuple[str, str]:
    """(thinking, remaining text) for content that starts with <think>...</think> (§2.3 flag
    think_tags: R1/Qwen-style models served without a reasoning parser).

    Also handles the common template variant where the prompt already opened <think>, so the
    content holds only "...</think>answer"; an unclosed <think> means the whole rest is thinking
    (output cut off while reasoning)."""
    stripped = text.lstrip()
    if stripped.startswith(_OPEN):
        body = stripped[len(_OPEN):]
        end = body.find(_CLOSE)
        if end < 0:
            return body.strip(), ""
        return body[:end].strip(), body[end + len(_CLOSE):].lstrip()
    end = text.find(_CLOSE)
    if end >= 0 and _OPEN not in text[:end]:
        return text[:end].strip(), text[end + len(_CLOSE):].lstrip()
    return "", text


def _output_chars(blocks: list[dict]) -> int:
    """Characters the model produced, for estimating output tokens when usage is missing."""
    n = 0
    for b in blocks:
        kind = b["type"]
        if kind == "text":
            n += len(b["text"])
        elif kind == "thinking":
            n += len(b["thinking"])
        elif kind == "tool_use":
            n += len(b["name"]) + len(json.dumps(b["input"], ensure_ascii=False))
    return n


def translate_response(upstream: dict, ctx: RequestContext, caps: Capabilities) -> dict:
    """Translate a 2xx Chat Completions body into an Anthropic Message (§2.1-2.5).

    Raises errors.ProxyError when the 2xx body is really an error (`{"error":...}` and no
    choices; OpenRouter does this), so the client gets an error instead of an empty answer."""
    choices = upstream.get("choices")
    choice: dict[str, Any] = {}
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
    elif upstream.get("error"):
        # Status 200: map_upstream_error takes the real status from the body's numeric code.
        raise map_upstream_error(200, {}, json.dumps({"error": upstream["error"]}).encode("utf-8"), "upstream", ctx)

    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}

    blocks: list[dict] = []

    # 1. thinking
    text = content_text(message.get("content"))
    thinking = reasoning_text(message)
    if getattr(caps, "think_tags", False) and text:
        tagged, text = split_think_tags(text)
        if not thinking:
            thinking = tagged
    if thinking.strip() and getattr(ctx, "show_thinking", False):
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})

    # 2. text (never an empty/whitespace block: the client persists it and real Anthropic then
    # rejects the whole history)
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        text += refusal
    if text.strip():
        blocks.append({"type": "text", "text": text})

    # 3. tool_use
    name_map = getattr(ctx, "name_map", None) or {}
    seen: set[str] = set()
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for tc in tool_calls:
            if not isinstance(tc, dict):
                continue
            fn = tc.get("function")
            if not isinstance(fn, dict):
                fn = {}
            name = fn.get("name")
            if not isinstance(name, str) or not name:
                log.warning("dropping upstream tool call without a function name")
                continue
            blocks.append(_tool_block(tc.get("id"), name, fn.get("arguments"), name_map, seen))
    fc = message.get("function_call")
    if not seen and isinstance(fc, dict):  # legacy functions API
        name = fc.get("name")
        if isinstance(name, str) and name:
            blocks.append(_tool_block(None, name, fc.get("arguments"), name_map, seen))

    finish = choice.get("finish_reason")
    if finish not in ("stop", "length", "tool_calls", "function_call", "content_filter"):
        log.info("upstream finish_reason %r; inferring stop_reason", finish)
    usage_in = upstream.get("usage")
    if not isinstance(usage_in, dict):
        usage_in = None
    matched = choice.get("stop_reason")
    stop_reason, stop_sequence = stop_reason_for(
        finish if isinstance(finish, str) else None,
        bool(seen),
        matched if isinstance(matched, str) else None,
        getattr(ctx, "stop_sequences", None) or [],
        completion_tokens(usage_in),
        getattr(ctx, "max_tokens", 0) or 0,
    )
    completion = usage_in.get("completion_tokens") if usage_in else None
    # Counting output characters serializes tool inputs; skip it when the upstream counted.
    out_chars = 0 if isinstance(completion, int) and completion > 0 else _output_chars(blocks)
    usage = anthropic_usage(usage_in, int(getattr(ctx, "estimated_input_tokens", 0) or 0), out_chars)
    return anthropic_message(ctx.requested_model, blocks, stop_reason, stop_sequence, usage)


def _tool_block(upstream_id: object, name: str, arguments: object, name_map: dict, seen: set[str]) -> dict:
    args = parse_tool_arguments(arguments)
    if not args and isinstance(arguments, str) and arguments.strip() and arguments.strip() != "{}":
        log.warning("tool %s: unparseable arguments replaced by {}", name)
    return {
        "type": "tool_use",
        "id": tool_use_id(upstream_id if isinstance(upstream_id, str) else None, seen),
        "name": name_map.get(name, name),
        "input": args,
    }
