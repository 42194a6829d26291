"""Anthropic Messages request -> OpenAI Responses API request body (POST /v1/responses).

The Responses counterpart of request.py, with the same rules wherever the two APIs agree: the
same client-input validation (request.validate_request and the same block-level checks), the
same tool-name shortening and id mapping, the same schema sanitizer (memoized: schema.responses_tool),
the same tool-call pairing repair, an allowlist-built body (cache_control, context_management and
other Anthropic-only keys can never leak). Pure: nothing is serialized, the input body is never
mutated, strings are shared, not copied.

Shape (Responses API): `system` -> `instructions`; turns -> `input` items: `message` items with
input_text / input_image / input_file parts (assistant: output_text), `function_call` and
`function_call_output` items, and `reasoning` items rebuilt from clasp's own thinking signatures
(responses_common). Always `store: false`: clasp keeps no server-side state, every request
carries the whole history.
"""
from __future__ import annotations

from typing import Any

from clasp.translate.capabilities import Capabilities
from clasp.translate.context import RequestContext
from clasp.translate.errors import InvalidRequest
from clasp.translate.names import upstream_tool_id, upstream_tool_name
# The private helpers are shared on purpose: the Chat Completions and Responses translators must
# accept and reject exactly the same client input.
from clasp.translate.request import (_EFFORTS, _OPENAI_EFFORT, EMPTY_RESULT, INTERRUPTED_RESULT,
                                     TOOL_ERROR_PREFIX, _check_base64, _content_text, _custom_tools,
                                     _dumps_args, _image_omitted, _image_url, _is_int, _max_tokens,
                                     _summary_part, _system_text, _tool_use_fields, answered_results,
                                     add_sampling_and_user, add_tools, request_context, split_user_turn,
                                     validate_request)
from clasp.translate.responses_common import decode_reasoning_signature
from clasp.translate.schema import responses_tool

__all__ = ["translate_responses_request", "REASONING_INCLUDE", "MIN_OUTPUT_TOKENS"]

REASONING_INCLUDE = "reasoning.encrypted_content"
# The Responses API rejects max_output_tokens below 16 ("integer below minimum value").
MIN_OUTPUT_TOKENS = 16


def _input_text(text: str) -> dict:
    return {"type": "input_text", "text": text}


def _input_image(url: str) -> dict:
    # detail "auto" is the API default; sent because some schemas list it as required.
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _message(role: str, parts: list[dict]) -> dict:
    return {"type": "message", "role": role, "content": parts}


def _assistant_message(texts: list[str]) -> dict:
    # Consecutive text blocks become one output_text part, joined like request.py joins them.
    return _message("assistant", [{"type": "output_text", "text": "\n\n".join(texts)}])


def _document_part(block: dict, where: str) -> dict | None:
    """input_file for a PDF (base64 data, or an http(s) URL the API fetches itself), input_text
    for a text document, a placeholder for what no upstream can read; None when empty."""
    source = block.get("source")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    stype = source.get("type") if isinstance(source, dict) else None
    if stype == "base64":
        _check_base64(source.get("data"), where + ".source.data")
        # Unlike Chat Completions (flag pdf_file_parts), file input is part of the Responses API.
        return {"type": "input_file", "filename": title or "document.pdf",
                "file_data": f"data:application/pdf;base64,{source['data']}"}
    if stype in ("text", "content"):
        body = source.get("data") if stype == "text" else _content_text(source.get("content"))
        lines = [s for s in (title, block.get("context")) if isinstance(s, str) and s]
        if isinstance(body, str) and body:
            lines.append(body)
        return _input_text("\n".join(lines)) if lines else None
    if stype == "url":
        url = source.get("url")
        if isinstance(url, str) and url[:8].lower().startswith(("https://", "http://")):
            return {"type": "input_file", "file_url": url}
        return _input_text(f"[document {url if isinstance(url, str) else ''} omitted: unsupported URL]")
    if stype == "file":
        return _input_text(f"[file {source.get('file_id', '')} omitted]")
    return _input_text("[document omitted: unsupported source]")


def _summary_text(block: dict, btype: str) -> str | None:
    """Short text for block types the Responses API has no item for (same as request.py)."""
    part = _summary_part(block, btype)
    return part["text"] if part is not None else None


class _Builder:
    """Builds the `input` item list in one pass, repairing function-call pairing on the way
    (request._Builder's rules, Responses items)."""

    __slots__ = ("caps", "items", "instructions", "pending", "deferred", "name_map")

    def __init__(self, caps: Capabilities, name_map: dict[str, str]) -> None:
        self.caps = caps
        self.items: list[dict] = []
        self.instructions: list[str] = []   # becomes `instructions`
        self.pending: list[str] = []        # call_ids of the last assistant turn's calls, unanswered
        self.deferred: list[dict] = []      # system messages that arrived while calls were pending
        self.name_map = name_map

    # -- pairing ---------------------------------------------------------------------------
    def close_pending(self, answered: set[str] | frozenset[str] = frozenset()) -> None:
        """Placeholder outputs for unanswered calls (the API rejects a function_call without
        its function_call_output), then any system message held back."""
        for call_id in self.pending:
            if call_id not in answered:
                self.items.append({"type": "function_call_output", "call_id": call_id,
                                   "output": INTERRUPTED_RESULT})
        self.pending = []
        if self.deferred:
            self.items.extend(self.deferred)
            self.deferred = []

    # -- roles -----------------------------------------------------------------------------
    def system(self, content: Any, where: str) -> None:
        text = _system_text(content, where + ".content", self.caps.strip_billing_header)
        if not text.strip():
            return
        if self.caps.single_system:
            self.instructions.append(text)
            return
        # An inline system message stays in place, as a system-role message item.
        message = _message("system", [_input_text(text)])
        if self.pending:
            self.deferred.append(message)
        else:
            self.items.append(message)

    def assistant(self, content: Any, where: str) -> None:
        self.close_pending()
        if isinstance(content, str):
            if content.strip():
                self.items.append(_assistant_message([content]))
            return
        items = self.items
        start = len(items)
        texts: list[str] = []
        calls: list[str] = []
        # Items keep the block order, which is the order the response translators produced
        # them from the upstream's output (reasoning, message, function_call ...); consecutive
        # text blocks make one message.
        for i, block in enumerate(content):
            btype = block["type"]
            if btype == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise InvalidRequest(f"{where}.content.{i}.text: must be a string")
                if text.strip():                # empty text blocks poison sessions (§7.3)
                    texts.append(text)
            elif btype == "tool_use":
                if texts:
                    items.append(_assistant_message(texts))
                    texts = []
                item = self.function_call(block, f"{where}.content.{i}")
                items.append(item)
                calls.append(item["call_id"])
            elif btype == "thinking":
                reasoning = decode_reasoning_signature(block.get("signature"))
                if reasoning is None:
                    continue        # real Anthropic (or no) signature: means nothing upstream
                if texts:
                    items.append(_assistant_message(texts))
                    texts = []
                item_id, encrypted = reasoning
                item: dict[str, Any] = {"type": "reasoning"}
                if item_id:         # optional in the API; an empty id is left out, not sent as ""
                    item["id"] = item_id
                item["encrypted_content"] = encrypted
                item["summary"] = []
                items.append(item)
            elif btype == "redacted_thinking":
                continue
            else:
                text = _summary_text(block, btype)
                if text:
                    texts.append(text)
        if texts:
            items.append(_assistant_message(texts))
        # A reasoning item must be followed by the output item it led to ("provided without its
        # required following item"): drop any left at the end of the turn.
        while len(items) > start and items[-1]["type"] == "reasoning":
            items.pop()
        self.pending = calls

    def function_call(self, block: dict, where: str) -> dict:
        tool_id, name = _tool_use_fields(block, where)
        up_name = upstream_tool_name(name)
        if up_name != name:
            self.name_map[up_name] = name
        # No item "id" (fc_...): it is optional, and an id without its stored reasoning item is
        # rejected when store is false.
        return {"type": "function_call", "call_id": upstream_tool_id(tool_id, self.caps.mistral_ids),
                "name": up_name, "arguments": _dumps_args(block.get("input"))}

    def user(self, content: Any, where: str) -> None:
        parts, results = split_user_turn(content, where, _input_text, self.user_part)
        if self.pending:
            answered = answered_results(results, self.pending, where, self.caps.mistral_ids)
            for i, block, call_id in answered:
                self.items.append({"type": "function_call_output", "call_id": call_id,
                                   "output": self.tool_output(block, f"{where}.content.{i}")})
            self.close_pending({call_id for _, _, call_id in answered})
        # else: results without a preceding call are orphans and are dropped (§1.6.4).

        if not parts:
            return
        last = self.items[-1] if self.items else None
        if last is not None and last["type"] == "message" and last["role"] == "user":
            last["content"].extend(parts)        # merge consecutive user turns (§1.6.5)
        else:
            self.items.append(_message("user", parts))

    def user_part(self, block: dict, btype: str, where: str) -> dict | None:
        if btype == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}.text: must be a string")
            return _input_text(text) if text.strip() else None
        if btype == "image":
            return self.image_part(block.get("source"), where + ".source")
        if btype == "document":
            return _document_part(block, where)
        text = _summary_text(block, btype)
        return _input_text(text) if text else None

    @staticmethod
    def image_part(source: Any, where: str) -> dict:
        url = _image_url(source, where)
        return _input_text(_image_omitted(source)) if url is None else _input_image(url)

    def tool_output(self, block: dict, where: str) -> str | list[dict]:
        """function_call_output.output: a string, like the tool message of request.py; a list of
        input_text / input_image / input_file parts (in block order) when the result holds
        images or PDFs, which the Responses API accepts in function outputs (no need to move
        them to a user message as Chat Completions requires)."""
        content = block.get("content")
        parts: list[dict] = []
        texts: list[str] = []       # text since the last media part
        media = False
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, sub in enumerate(content):
                if not isinstance(sub, dict):
                    continue
                stype = sub.get("type")
                if stype == "text":
                    if isinstance(sub.get("text"), str) and sub["text"].strip():
                        texts.append(sub["text"])
                    continue
                if stype == "image":
                    part: dict | None = self.image_part(sub.get("source"), f"{where}.content.{j}.source")
                elif stype == "document":
                    part = _document_part(sub, f"{where}.content.{j}")
                else:
                    text = _summary_text(sub, stype)
                    part = _input_text(text) if text else None
                if part is None:
                    continue
                if part["type"] == "input_text":
                    texts.append(part["text"])
                    continue
                if texts:
                    parts.append(_input_text("\n".join(texts)))
                    texts = []
                parts.append(part)
                media = True
        is_error = block.get("is_error") is True
        if not media:
            text = "\n".join(texts)
            if not text.strip():
                text = EMPTY_RESULT
            return TOOL_ERROR_PREFIX + text if is_error else text
        if texts:
            parts.append(_input_text("\n".join(texts)))
        if is_error:
            first = parts[0]
            if first["type"] == "input_text":
                parts[0] = _input_text(TOOL_ERROR_PREFIX + first["text"])
            else:
                parts.insert(0, _input_text(TOOL_ERROR_PREFIX.rstrip()))
        return parts

    def finish(self) -> list[dict]:
        self.close_pending()
        return self.items


def _reasoning(body: dict, caps: Capabilities) -> dict | None:
    """`reasoning` for thinking / output_config.effort: effort as request.py maps it for
    reasoning_style "openai" (the Responses API has that one shape), and a summary when the
    client asked for thinking (its text becomes the thinking block)."""
    if caps.reasoning_style == "none":
        return None
    thinking = body.get("thinking")
    ttype = thinking.get("type") if isinstance(thinking, dict) else None
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    budget = thinking.get("budget_tokens") if ttype == "enabled" else None
    out: dict[str, str] = {}
    if effort in _EFFORTS:
        out["effort"] = _OPENAI_EFFORT[effort]
    elif _is_int(budget):
        out["effort"] = "low" if budget < 4000 else "medium" if budget <= 16000 else "high"
    if ttype in ("enabled", "adaptive"):
        out["summary"] = "auto"
    return out or None


def translate_responses_request(body: dict, upstream_model: str,
                                caps: Capabilities) -> tuple[dict, RequestContext]:
    """Responses API body for `upstream_model` and the context for translating the reply.

    Raises InvalidRequest (-> 400) for malformed client input, exactly as translate_request
    does. The returned body may share memoized tool entries with other requests: serialize it,
    do not mutate it."""
    validate_request(body)
    model = body["model"]
    max_tokens = 0
    if "max_tokens" in body:
        max_tokens = max(MIN_OUTPUT_TOKENS, _max_tokens(body["max_tokens"], caps))

    name_map: dict[str, str] = {}
    builder = _Builder(caps, name_map)
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system", caps.strip_billing_header)
        if text.strip():
            builder.instructions.append(text)
    for i, message in enumerate(body["messages"]):
        role, content, where = message["role"], message["content"], f"messages.{i}"
        if role == "user":
            builder.user(content, where)
        elif role == "assistant":
            builder.assistant(content, where)
        else:
            builder.system(content, where)
    items = builder.finish()

    stream = body.get("stream") is True
    out: dict[str, Any] = {"model": upstream_model}
    if builder.instructions:
        out["instructions"] = "\n\n".join(builder.instructions)
    out["input"] = items
    if max_tokens:
        out["max_output_tokens"] = max_tokens
    if stream:
        out["stream"] = True
    out["store"] = False            # stateless: the history travels in every request

    tools = []
    for tool in _custom_tools(body):
        entry = responses_tool(tool, caps.gemini_schema)
        if entry["name"] != tool["name"]:
            name_map[entry["name"]] = tool["name"]
        tools.append(entry)
    add_tools(out, body, caps, tools, lambda t: t["name"], lambda name: {"type": "function", "name": name})
    add_sampling_and_user(out, body, caps)

    if caps.reasoning:              # non-reasoning models reject both fields
        reasoning = _reasoning(body, caps)
        if reasoning is not None:
            out["reasoning"] = reasoning
        # The only way to carry reasoning across turns with store: false.
        out["include"] = [REASONING_INCLUDE]

    # The Responses API has no stop parameter: the response translators cut the text at the
    # first of these themselves, so all of them are kept (no 4-string limit, no caps.no_stop).
    stop_raw = body.get("stop_sequences")
    stop = [s for s in stop_raw if s] if stop_raw else []
    return out, request_context(body, model, upstream_model, name_map, stop, caps, max_tokens)
