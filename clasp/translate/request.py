"""Anthropic Messages request -> OpenAI Chat Completions request body (PROTOCOL §1, §8).

Pure: `translate_request` validates the client body, builds the upstream body from an
allowlist (unknown Anthropic-only keys such as context_management or cache_control can never
leak), and returns the RequestContext the response translators need. Nothing is serialized
here; the input body is never mutated; strings are shared, not copied.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any, Callable

from clasp.translate.capabilities import Capabilities
from clasp.translate.context import RequestContext
from clasp.translate.errors import InvalidRequest
from clasp.translate.names import upstream_tool_id, upstream_tool_name
from clasp.translate.schema import function_tool
from clasp.translate.tokens import estimate_tokens

log = logging.getLogger("clasp")

__all__ = [
    "RequestContext",
    "translate_request",
    "validate_request",
    "BILLING_HEADER_PREFIX",
    "INTERRUPTED_RESULT",
    "EMPTY_RESULT",
    "TOOL_ERROR_PREFIX",
    "IMAGE_MOVED",
    "PDF_OMITTED",
]

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
INTERRUPTED_RESULT = "(no result: tool call was interrupted)"
EMPTY_RESULT = "(no content)"
TOOL_ERROR_PREFIX = "[tool error] "
IMAGE_MOVED = "[image returned; see next message]"
DOCUMENT_MOVED = "[document returned; see next message]"
PDF_OMITTED = "[PDF omitted: upstream cannot read PDFs]"

_ROLES = ("user", "assistant", "system")
_MAX_STOP = 4                   # OpenAI accepts at most 4 stop strings
# Client limits (400 naming the field, upstream never contacted). Where Anthropic documents a
# limit it is used; the others are generous bounds that no real request comes near.
_MAX_OUTPUT_TOKENS = 1_000_000  # max_tokens / thinking.budget_tokens: no model writes more
_MAX_STOP_SEQUENCES = 1024
_MIN_THINKING_BUDGET = 1024     # Anthropic's minimum budget_tokens
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_MIN_REASONING_TOKENS = 16      # tiny caps leave reasoning models no room for visible output
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_OPENAI_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_DEEPSEEK_EFFORT = {"low": "low", "medium": "high", "high": "high", "xhigh": "high", "max": "max"}
# Anthropic server tools: executed by Anthropic, no input_schema, cannot work upstream.
_CUSTOM_TOOL_TYPES = (None, "custom")


def _dumps_args(value: Any) -> str:
    """Tool-call arguments, serialized the same way every turn so upstream prefix caches hit."""
    if value is None:
        return "{}"
    return json.dumps(value, ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A client value quoted in an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_base64(data: Any, where: str) -> None:
    """Standard base64 with padding, no whitespace: what the Anthropic API accepts. One C-level
    pass (bytes.translate deletes the alphabet; anything left is invalid), ~1 ms per MB."""
    if not isinstance(data, str) or not data:
        raise InvalidRequest(f"{where}: must be a non-empty base64 string")
    if not data.isascii() or len(data) % 4:
        raise InvalidRequest(f"{where}: invalid base64 data")
    raw = data.encode("ascii")
    body = raw.rstrip(b"=")
    if len(raw) - len(body) > 2 or body.translate(None, _BASE64_ALPHABET):
        raise InvalidRequest(f"{where}: invalid base64 data")


def _check_image_url(url: Any, where: str) -> None:
    """http(s) URLs, or data: URLs with base64 content; never file:, ftp: and the like."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: must be a non-empty string")
    head = url[:8].lower()
    if head.startswith(("https://", "http://")):
        return
    if head.startswith("data:"):
        meta, sep, data = url.partition(",")
        if not sep or not meta.lower().endswith(";base64"):
            raise InvalidRequest(f"{where}: a data URL must be data:<media type>;base64,<data>")
        _check_base64(data, where)
        return
    raise InvalidRequest(f"{where}: must be an http(s) or data: URL, got {_shown(url[:40])}")


def _text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def _strip_billing_line(text: str) -> str:
    """`text` without a leading Claude Code attribution line (x-anthropic-billing-header: ...).

    Claude Code sends it as a block of its own, but only that line goes: whatever follows it
    in the same string is real prompt text (§1.4)."""
    if not text.startswith(BILLING_HEADER_PREFIX):
        return text
    newline = text.find("\n")
    return "" if newline < 0 else text[newline + 1:].lstrip("\n")


def _system_text(content: Any, where: str, strip_billing: bool) -> str:
    """Text of a system prompt (string or text blocks joined by blank lines)."""
    if isinstance(content, str):
        return _strip_billing_line(content) if strip_billing else content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: must be a string or a list of content blocks")
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise InvalidRequest(f"{where}.{i}: content block must be an object")
        if block.get("type") != "text":
            continue
        text = block.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}.{i}.text: must be a string")
        # Claude Code's per-conversation attribution line defeats upstream prefix caching.
        if strip_billing:
            text = _strip_billing_line(text)
        if text:
            texts.append(text)
    return "\n\n".join(texts)


def _image_url(source: Any, where: str) -> str | None:
    """The URL to send for an Anthropic image source: a data: URL for base64 data, the URL
    itself for a url source (both validated: `where` names the source in errors); None for
    sources no upstream can use (Files API ids, unknown types): see _image_omitted."""
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}: must be an object")
    stype = source.get("type")
    if stype == "base64":
        _check_base64(source.get("data"), where + ".data")
        media = source.get("media_type")
        if media is None:
            media = "image/png"
        elif media not in _IMAGE_MEDIA_TYPES:
            raise InvalidRequest(f"{where}.media_type: must be one of {', '.join(_IMAGE_MEDIA_TYPES)}, "
                                 f"got {_shown(media)}")
        return f"data:{media};base64,{source['data']}"
    if stype == "url":
        _check_image_url(source.get("url"), where + ".url")
        return source["url"]
    return None


def _image_omitted(source: dict) -> str:
    """Placeholder text for an image source _image_url returned None for."""
    if source.get("type") == "file":
        return f"[file {source.get('file_id', '')} omitted]"
    return "[image omitted: unsupported source]"


def _image_part(source: Any, where: str) -> dict:
    """image_url part for an Anthropic image source (validated: `where` names it in errors),
    or a text placeholder."""
    url = _image_url(source, where)
    if url is None:
        return _text_part(_image_omitted(source))
    return {"type": "image_url", "image_url": {"url": url}}


def _content_text(content: Any) -> str:
    """Plain text of a string or of the text blocks of a block list (joined by newlines)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content
                         if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def _document_part(block: dict, caps: Capabilities, where: str) -> dict:
    """Text part, or (flag pdf_file_parts) a file part for a base64 PDF (§1.5)."""
    source = block.get("source")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    stype = source.get("type") if isinstance(source, dict) else None
    if stype == "base64":
        _check_base64(source.get("data"), where + ".source.data")
        if caps.pdf_file_parts:
            return {"type": "file", "file": {
                "filename": title or "document.pdf",
                "file_data": f"data:application/pdf;base64,{source['data']}"}}
        return _text_part(PDF_OMITTED)
    if stype in ("text", "content"):
        body = source.get("data") if stype == "text" else _content_text(source.get("content"))
        lines = [s for s in (title, block.get("context")) if isinstance(s, str) and s]
        if isinstance(body, str) and body:
            lines.append(body)
        return _text_part("\n".join(lines))
    if stype == "url":
        return _text_part(f"[document {source.get('url', '')} omitted: upstream cannot fetch documents]")
    if stype == "file":
        return _text_part(f"[file {source.get('file_id', '')} omitted]")
    return _text_part("[document omitted: unsupported source]")


def _search_result_text(block: dict) -> str:
    pieces = [block.get("title"), block.get("source"), _content_text(block.get("content"))]
    return "\n".join(p for p in pieces if isinstance(p, str) and p)


def _web_search_summary(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        items = [f"{r.get('title', '')} <{r.get('url', '')}>" for r in content if isinstance(r, dict)]
        return "[web search results: " + "; ".join(items) + "]"
    if isinstance(content, dict):
        return f"[web search failed: {content.get('error_code', 'unknown error')}]"
    return ""


def _summary_part(block: dict, btype: str) -> dict | None:
    """Short text for block types that have no Chat Completions equivalent; None = drop."""
    if btype == "tool_reference":
        return _text_part(f"[tool_reference: {block.get('tool_name', '')}]")
    if btype == "server_tool_use":
        return _text_part(f"[server tool {block.get('name', '')} called with "
                          f"{_dumps_args(block.get('input'))}]")
    if btype == "web_search_tool_result":
        text = _web_search_summary(block)
        return _text_part(text) if text else None
    if btype == "search_result":
        text = _search_result_text(block)
        return _text_part(text) if text else None
    return None    # thinking in user turns, other server-tool results, unknown types


def _tool_use_fields(block: dict, where: str) -> tuple[str, str]:
    """(id, name) of a client tool_use block, validated."""
    tool_id, name = block.get("id"), block.get("name")
    if not isinstance(tool_id, str) or not tool_id:
        raise InvalidRequest(f"{where}.id: must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}.name: must be a non-empty string")
    return tool_id, name


def _tool_result_id(block: dict, where: str) -> str:
    """tool_use_id of a client tool_result block, validated."""
    raw_id = block.get("tool_use_id")
    if not isinstance(raw_id, str) or not raw_id:
        raise InvalidRequest(f"{where}.tool_use_id: must be a non-empty string")
    return raw_id


class _Builder:
    """Builds the upstream message list in one pass, repairing tool-call pairing on the way."""

    __slots__ = ("caps", "out", "system_texts", "pending", "deferred", "name_map")

    def __init__(self, caps: Capabilities, name_map: dict[str, str]) -> None:
        self.caps = caps
        self.out: list[dict] = []
        self.system_texts: list[str] = []   # becomes the leading system message
        self.pending: list[str] = []        # upstream ids of the last assistant's calls, unanswered
        self.deferred: list[dict] = []      # system messages that arrived while calls were pending
        self.name_map = name_map

    # -- pairing ---------------------------------------------------------------------------
    def close_pending(self, answered: set[str] | frozenset[str] = frozenset()) -> None:
        """Placeholder results for unanswered calls, then any system message held back, so that
        nothing ever sits between an assistant's tool_calls and its tool messages (§1.6.4)."""
        for call_id in self.pending:
            if call_id not in answered:
                self.out.append({"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_RESULT})
        self.pending = []
        if self.deferred:
            self.out.extend(self.deferred)
            self.deferred = []

    # -- roles -----------------------------------------------------------------------------
    def system(self, content: Any, where: str) -> None:
        text = _system_text(content, where + ".content", self.caps.strip_billing_header)
        if not text.strip():
            return
        if self.caps.single_system:
            self.system_texts.append(text)
        elif self.pending:
            self.deferred.append({"role": "system", "content": text})
        else:
            self.out.append({"role": "system", "content": text})

    def assistant(self, content: Any, where: str) -> None:
        self.close_pending()
        caps = self.caps
        texts: list[str] = []
        calls: list[dict] = []
        reasoning: list[str] = []
        if isinstance(content, str):
            if content.strip():
                texts.append(content)
        else:
            for i, block in enumerate(content):
                btype = block["type"]
                if btype == "text":
                    text = block.get("text")
                    if not isinstance(text, str):
                        raise InvalidRequest(f"{where}.content.{i}.text: must be a string")
                    if text.strip():            # empty text blocks poison sessions (§7.3)
                        texts.append(text)
                elif btype == "tool_use":
                    calls.append(self.tool_call(block, f"{where}.content.{i}"))
                elif btype == "thinking":
                    if caps.reasoning_roundtrip and isinstance(block.get("thinking"), str) \
                            and block["thinking"]:
                        reasoning.append(block["thinking"])
                elif btype == "redacted_thinking":
                    continue
                else:
                    part = _summary_part(block, btype)
                    if part is not None and part.get("type") == "text":
                        texts.append(part["text"])
        if not texts and not calls:
            return
        message: dict[str, Any] = {"role": "assistant"}
        if texts:
            message["content"] = "\n\n".join(texts)
        else:
            message["content"] = "" if caps.assistant_empty_string else None
        if reasoning:
            message["reasoning_content"] = "\n\n".join(reasoning)
        elif calls and caps.reasoning_roundtrip:
            # DeepSeek thinking mode 400s "Missing `reasoning_content` field" on a tool-calling
            # turn without it (history from another model, or a reply that had no reasoning).
            message["reasoning_content"] = ""
        if calls:
            message["tool_calls"] = calls
            self.pending = [call["id"] for call in calls]
        self.out.append(message)

    def tool_call(self, block: dict, where: str) -> dict:
        tool_id, name = _tool_use_fields(block, where)
        up_name = upstream_tool_name(name)
        if up_name != name:
            self.name_map[up_name] = name
        return {"id": upstream_tool_id(tool_id, self.caps.mistral_ids), "type": "function",
                "function": {"name": up_name, "arguments": _dumps_args(block.get("input"))}}

    def user(self, content: Any, where: str) -> None:
        parts, results = split_user_turn(content, where, _text_part, self.user_part)
        lifted: list[dict] = []
        if self.pending:
            answered = answered_results(results, self.pending, where, self.caps.mistral_ids)
            for i, block, call_id in answered:
                self.out.append({"role": "tool", "tool_call_id": call_id,
                                 "content": self.tool_result_text(block, lifted, f"{where}.content.{i}")})
            self.close_pending({call_id for _, _, call_id in answered})
        # else: results without a preceding call are orphans and are dropped (§1.6.4).

        parts.extend(lifted)
        if not parts:
            return
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "user":
            last["content"].extend(parts)        # merge consecutive user turns (§1.6.5)
        else:
            self.out.append({"role": "user", "content": parts})

    def user_part(self, block: dict, btype: str, where: str) -> dict | None:
        if btype == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}.text: must be a string")
            return _text_part(text) if text.strip() else None
        if btype == "image":
            return _image_part(block.get("source"), where + ".source")
        if btype == "document":
            return _document_part(block, self.caps, where)
        return _summary_part(block, btype)

    def tool_result_text(self, block: dict, lifted: list[dict], where: str) -> str:
        """String content of a tool message; images (and PDF file parts) go to `lifted`,
        because only user messages may carry them (§1.6.3)."""
        content = block.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            texts: list[str] = []
            for j, sub in enumerate(content):
                if not isinstance(sub, dict):
                    continue
                stype = sub.get("type")
                if stype == "text":
                    if isinstance(sub.get("text"), str) and sub["text"].strip():
                        texts.append(sub["text"])
                elif stype == "image":
                    part = _image_part(sub.get("source"), f"{where}.content.{j}.source")
                    if part["type"] == "text":
                        texts.append(part["text"])
                    else:
                        texts.append(IMAGE_MOVED)
                        lifted.append(part)
                elif stype == "document":
                    part = _document_part(sub, self.caps, f"{where}.content.{j}")
                    if part["type"] == "text":
                        texts.append(part["text"])
                    else:
                        texts.append(DOCUMENT_MOVED)
                        lifted.append(part)
                else:
                    part = _summary_part(sub, stype)
                    if part is not None:
                        texts.append(part["text"])
            text = "\n".join(texts)
        else:
            text = ""
        if not text.strip():
            text = EMPTY_RESULT
        if block.get("is_error") is True:
            text = TOOL_ERROR_PREFIX + text
        return text

    def finish(self) -> list[dict]:
        self.close_pending()
        for message in self.out:
            if message["role"] == "user":
                parts = message["content"]
                # All-text content goes as one string: some servers accept nothing else.
                if all(p["type"] == "text" for p in parts):
                    message["content"] = "\n\n".join(p["text"] for p in parts)
        if self.system_texts:
            self.out.insert(0, {"role": "system", "content": "\n\n".join(self.system_texts)})
        return self.out


def split_user_turn(content: Any, where: str, text_part: Callable[[str], dict],
                    user_part: Callable[[dict, str, str], dict | None]) -> tuple[list[dict], list[tuple[int, dict]]]:
    """A validated user turn's content: (the parts of its user message, (index, tool_result
    block) pairs). `text_part` and `user_part` build the dialect's parts."""
    parts: list[dict] = []
    results: list[tuple[int, dict]] = []
    if isinstance(content, str):
        if content.strip():
            parts.append(text_part(content))
        return parts, results
    for i, block in enumerate(content):
        btype = block["type"]
        if btype == "tool_result":
            results.append((i, block))
        else:
            part = user_part(block, btype, f"{where}.content.{i}")
            if part is not None:
                parts.append(part)
    return parts, results


def answered_results(results: list[tuple[int, dict]], pending: list[str], where: str,
                     mistral_ids: bool) -> list[tuple[int, dict, str]]:
    """The tool results that answer a pending call, once each, with its upstream call id:
    orphans and duplicates are left out (upstream would 400)."""
    open_calls = set(pending)
    out: list[tuple[int, dict, str]] = []
    for i, block in results:
        call_id = upstream_tool_id(_tool_result_id(block, f"{where}.content.{i}"), mistral_ids)
        if call_id in open_calls:
            open_calls.discard(call_id)
            out.append((i, block, call_id))
    return out


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages.{i}: must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(f"messages.{i}.role: must be one of 'user', 'assistant', 'system', "
                                 f"got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"messages.{i}.content: must be a string or a list of content blocks")
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise InvalidRequest(f"messages.{i}.content.{j}: must be a content block with a 'type'")


def _custom_tools(body: dict) -> list[dict]:
    """The client's custom tools (validated), in order; server tools are left out."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i}: must be an object")
        if tool.get("type") not in _CUSTOM_TOOL_TYPES:
            continue                 # server tool (web_search_*, bash_*, ...): no schema upstream
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools.{i}.name: must be a non-empty string")
        if "input_schema" in tool and not isinstance(tool["input_schema"], dict):
            raise InvalidRequest(f"tools.{i}.input_schema: must be an object (a JSON schema)")
        out.append(tool)
    return out


def _tools(body: dict, caps: Capabilities, name_map: dict[str, str]) -> list[dict]:
    out = []
    for tool in _custom_tools(body):
        entry = function_tool(tool, caps.gemini_schema)
        up_name = entry["function"]["name"]
        if up_name != tool["name"]:
            name_map[up_name] = tool["name"]
        out.append(entry)
    return out


def _check_options(body: dict) -> None:
    """stream, thinking and tool_choice have the shape the Anthropic API requires (whether or
    not the upstream gets them: tool_choice is checked even without tools)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(f"stream: must be a boolean, got {_shown(stream)}")
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise InvalidRequest("thinking: must be an object")
        ttype = thinking.get("type")
        if ttype not in _THINKING_TYPES:
            raise InvalidRequest(f"thinking.type: must be one of 'enabled', 'disabled', 'adaptive', "
                                 f"got {_shown(ttype)}")
        budget = thinking.get("budget_tokens")
        if budget is not None and (not _is_int(budget)
                                   or not _MIN_THINKING_BUDGET <= budget <= _MAX_OUTPUT_TOKENS):
            raise InvalidRequest(f"thinking.budget_tokens: must be an integer from {_MIN_THINKING_BUDGET} "
                                 f"to {_MAX_OUTPUT_TOKENS}, got {_shown(budget)}")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict):
            raise InvalidRequest("tool_choice: must be an object")
        ctype = choice.get("type")
        if ctype not in _TOOL_CHOICE_TYPES:
            raise InvalidRequest(f"tool_choice.type: must be one of 'auto', 'any', 'tool', 'none', "
                                 f"got {_shown(ctype)}")
        name = choice.get("name")
        if ctype == "tool" and (not isinstance(name, str) or not name):
            raise InvalidRequest("tool_choice.name: must be a non-empty string")
        parallel = choice.get("disable_parallel_tool_use")
        if parallel is not None and not isinstance(parallel, bool):
            raise InvalidRequest("tool_choice.disable_parallel_tool_use: must be a boolean")


def choose_tool(body: dict, caps: Capabilities, tools: list[dict], name_of: Callable[[dict], str],
                forced_choice: Callable[[str], Any]) -> tuple[Any, bool, list[dict]]:
    """(upstream tool_choice or None, disable_parallel, tools to send) for a validated body that
    has tools (§1.8); Chat Completions and Responses differ only in how a tool names itself
    (`name_of`) and how a forced tool is written (`forced_choice`)."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return None, False, tools
    ctype = choice.get("type")
    disable_parallel = choice.get("disable_parallel_tool_use") is True
    if ctype in ("auto", "none"):
        return ctype, disable_parallel, tools
    if ctype == "any":
        return ("auto" if caps.no_forced_tool_choice else "required"), disable_parallel, tools
    if ctype == "tool" and not caps.no_forced_tool_choice:
        up_name = upstream_tool_name(choice["name"])
        forced = [t for t in tools if name_of(t) == up_name]
        if not forced:
            # A server tool (web_search, ...) that was dropped: forcing a function the body
            # does not define is a 400 upstream; let the model choose instead.
            return "auto", disable_parallel, tools
        if caps.string_tool_choice:
            # The server ignores an object here (llama.cpp answers as if "auto"); "required"
            # over a list holding only the forced tool means the same thing.
            log.debug("tool_choice %r sent as \"required\" with only that tool (string_tool_choice)",
                      choice["name"])
            return "required", disable_parallel, forced
        return forced_choice(up_name), disable_parallel, tools
    return "auto", disable_parallel, tools


def add_tools(out: dict, body: dict, caps: Capabilities, tools: list[dict], name_of: Callable[[dict], str],
              forced_choice: Callable[[str], Any]) -> None:
    """Put translated ``tools`` (none: nothing; vLLM rejects ``tools: []`` and tool_choice needs
    tools, §1.1), their tool_choice and parallel_tool_calls into the upstream body ``out``."""
    if not tools:
        return
    choice, disable_parallel, out["tools"] = choose_tool(body, caps, tools, name_of, forced_choice)
    if choice is not None:
        out["tool_choice"] = choice
    if disable_parallel and not caps.no_parallel_param:
        out["parallel_tool_calls"] = False


def add_sampling_and_user(out: dict, body: dict, caps: Capabilities) -> None:
    """temperature/top_p/top_k and the hashed end-user id, the same in both upstream dialects."""
    if not caps.no_sampling:
        for key in ("temperature", "top_p"):
            if body.get(key) is not None:
                out[key] = body[key]
    if caps.pass_top_k and body.get("top_k") is not None:
        out["top_k"] = body["top_k"]
    if caps.send_user:
        metadata = body.get("metadata")
        user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
        if isinstance(user_id, str) and user_id:
            # Claude Code's value is ~150 chars; OpenAI limits identifiers to 64.
            out["user"] = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:64]


def request_context(body: dict, model: str, upstream_model: str, name_map: dict, stop: list[str],
                    caps: Capabilities, max_tokens: int) -> RequestContext:
    """What the response translators need of a translated request (either dialect)."""
    thinking = body.get("thinking")
    client_thinking = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    return RequestContext(
        requested_model=model,
        upstream_model=upstream_model,
        stream=body.get("stream") is True,
        name_map=name_map,
        stop_sequences=stop,
        show_thinking=client_thinking or caps.always_show_reasoning or caps.reasoning_roundtrip,
        estimated_input_tokens=estimate_tokens(body),
        max_tokens=max_tokens,
    )


def _max_tokens(value: int, caps: Capabilities) -> int:
    if caps.reasoning and value < _MIN_REASONING_TOKENS:
        value = _MIN_REASONING_TOKENS
    if caps.max_output_cap is not None and value > caps.max_output_cap:
        value = caps.max_output_cap   # Claude Code asks 32k-128k; many models cap far lower
    return max(1, value)


def _reasoning(body: dict, caps: Capabilities, out: dict) -> None:
    """Reasoning controls for thinking / output_config.effort, by reasoning_style (§1.9)."""
    thinking = body.get("thinking")
    ttype = thinking.get("type") if isinstance(thinking, dict) else None
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort not in _EFFORTS:
        effort = None
    budget = thinking.get("budget_tokens") if ttype == "enabled" else None
    if not _is_int(budget):
        budget = None
    style = caps.reasoning_style
    if style == "openai":
        if effort is not None:
            out["reasoning_effort"] = _OPENAI_EFFORT[effort]
        elif budget is not None:
            out["reasoning_effort"] = "low" if budget < 4000 else "medium" if budget <= 16000 else "high"
    elif style == "openrouter":
        if ttype == "disabled":
            return                    # the client turned thinking off; effort alone must not enable it
        if effort is not None:
            out["reasoning"] = {"effort": _OPENAI_EFFORT[effort]}
        elif budget is not None:
            out["reasoning"] = {"max_tokens": budget}
        elif ttype in ("enabled", "adaptive"):
            out["reasoning"] = {"enabled": True}
    elif style == "deepseek":
        if ttype in ("enabled", "adaptive"):
            out["thinking"] = {"type": "enabled"}
        if effort is not None:
            out["reasoning_effort"] = _DEEPSEEK_EFFORT[effort]


def validate_request(body: Any) -> None:
    """The checks of the top-level client fields every translator applies first (Chat
    Completions and Responses alike); raises InvalidRequest naming the field. Content blocks
    are checked as the translators walk them, through the same helpers."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: must be a non-empty string")
    _validate_messages(body.get("messages"))

    if "max_tokens" in body:
        raw = body["max_tokens"]
        if not _is_int(raw) or not 1 <= raw <= _MAX_OUTPUT_TOKENS:
            raise InvalidRequest(f"max_tokens: must be an integer from 1 to {_MAX_OUTPUT_TOKENS}, "
                                 f"got {_shown(raw)}")

    stop_raw = body.get("stop_sequences")
    if stop_raw is not None and (not isinstance(stop_raw, list)
                                 or not all(isinstance(s, str) for s in stop_raw)):
        raise InvalidRequest("stop_sequences: must be a list of strings")
    if stop_raw is not None and len(stop_raw) > _MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"stop_sequences: at most {_MAX_STOP_SEQUENCES} stop sequences, "
                             f"got {len(stop_raw)}")
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None and not (_is_number(body[key]) and math.isfinite(body[key])):
            raise InvalidRequest(f"{key}: must be a finite number")
    _check_options(body)


def translate_request(body: dict, upstream_model: str, caps: Capabilities) -> tuple[dict, RequestContext]:
    """Chat Completions body for `upstream_model` and the context for translating the reply.

    Raises InvalidRequest (-> 400) for malformed client input. The returned body may share
    memoized tool entries with other requests: serialize it, do not mutate it."""
    validate_request(body)
    messages = body["messages"]
    model = body["model"]
    max_tokens = _max_tokens(body["max_tokens"], caps) if "max_tokens" in body else 0
    stop_raw = body.get("stop_sequences")

    name_map: dict[str, str] = {}
    builder = _Builder(caps, name_map)
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system", caps.strip_billing_header)
        if text.strip():
            builder.system_texts.append(text)
    for i, message in enumerate(messages):
        role, content, where = message["role"], message["content"], f"messages.{i}"
        if role == "user":
            builder.user(content, where)
        elif role == "assistant":
            builder.assistant(content, where)
        else:
            builder.system(content, where)
    upstream_messages = builder.finish()

    stream = body.get("stream") is True
    out: dict[str, Any] = {"model": upstream_model}
    if max_tokens:
        out[caps.token_field] = max_tokens
    if stream:
        out["stream"] = True
        if not caps.no_stream_options:
            out["stream_options"] = {"include_usage": True}
    out["messages"] = upstream_messages

    add_tools(out, body, caps, _tools(body, caps, name_map), lambda t: t["function"]["name"],
              lambda name: {"type": "function", "function": {"name": name}})

    stop: list[str] = []
    if stop_raw and not caps.no_stop:
        stop = [s for s in stop_raw if s][:_MAX_STOP]
        if stop:
            out["stop"] = stop

    add_sampling_and_user(out, body, caps)
    if caps.reasoning:
        _reasoning(body, caps, out)
    return out, request_context(body, model, upstream_model, name_map, stop, caps, max_tokens)
