"""StreamTranslator: OpenAI Chat Completions chunks -> Anthropic SSE events (PROTOCOL.md §3).

Pure and I/O-free: the caller parses upstream SSE (sse.SSEParser), json-decodes each payload,
calls feed() per chunk and finish() on [DONE]/EOF, and encodes the returned events
(sse.encode_events). Events are plain dicts; nothing is copied.

Invariants the client relies on (§3.1): message_start first; exactly one open block; indices
0,1,2... in start order; every delta matches its block type; every block gets its stop (except a
tool with half-built arguments on the error path); message_delta + message_stop last; nothing
after done.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from .common import (
    anthropic_message,
    anthropic_usage,
    completion_tokens,
    content_text,
    message_id as _new_message_id,
    parse_tool_arguments,
    reasoning_text,
    stop_reason_for,
    tool_use_id,
)
from .errors import ProxyError, error_event, map_upstream_error
from .jsontext import json_str

__all__ = ["StreamTranslator"]

log = logging.getLogger("clasp.translate")

_dumps = json_str  # tool input as partial_json: compact, and valid JSON even with NaN upstream

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_STOP_EVENT = "content_block_stop"
_DELTA_EVENT = "content_block_delta"


class _Tool:
    """One upstream tool call being assembled."""

    __slots__ = ("up_id", "name", "parts", "size", "placed", "queued", "complete", "seen")

    def __init__(self, up_id: str | None, seen: int) -> None:
        self.up_id = up_id
        self.name = ""
        self.parts: list[str] = []   # argument pieces; joined lazily (no O(n^2) concatenation)
        self.size = 0
        self.placed = False          # a content block was started for it
        self.queued = False
        self.complete: bool | None = None  # cached "args parse as JSON"; None = unknown
        self.seen = seen             # first-seen order

    def args(self) -> str:
        parts = self.parts
        if len(parts) > 1:
            joined = "".join(parts)
            self.parts = [joined]
            return joined
        return parts[0] if parts else ""

    def is_complete(self) -> bool:
        """True when the accumulated arguments are one complete JSON value."""
        if self.complete is None:
            if not self.size:
                self.complete = False
            else:
                try:
                    json.loads(self.args())
                    self.complete = True
                except (ValueError, RecursionError):
                    self.complete = False
        return self.complete


class AnthropicEventStream:
    """The Anthropic side every stream translator shares (PROTOCOL §3.1): the message_start
    envelope, one open content block at a time with indices in order, the terminal error event,
    and the state the relay reads. Subclasses translate one upstream dialect into it."""

    def _init_events(self, ctx: Any, caps: Any, message_id: str | None, provider: str) -> None:
        self.ctx = ctx
        self.caps = caps
        self.provider = provider                # prefixes mid-stream error messages (§4)
        self.message_id = message_id or _new_message_id()
        self._show_thinking = bool(getattr(ctx, "show_thinking", False))
        self._buffer_tools = bool(getattr(caps, "buffer_tool_args", False))
        self._name_map: dict = getattr(ctx, "name_map", None) or {}
        self._estimated_input = int(getattr(ctx, "estimated_input_tokens", 0) or 0)
        self._next_index = 0
        self._open_kind: str | None = None      # "thinking" | "text" | "tool"
        self._open_index = -1
        self._open_tool: Any = None             # the dialect's tool state while a tool block is open
        self._seen_ids: set[str] = set()
        self._tool_blocks = 0
        self._finish_reason: str | None = None
        self._raw_usage: dict | None = None     # chat-shaped upstream usage, once reported
        self.output_chars = 0
        self.started = False
        self.done = False

    @property
    def finish_reason(self) -> str | None:
        """How the upstream said it finished, once it did (the relay may then stop reading)."""
        return self._finish_reason

    @property
    def tool_count(self) -> int:
        """Tool-use blocks emitted so far (for metrics)."""
        return self._tool_blocks

    @property
    def has_upstream_usage(self) -> bool:
        """True once the upstream reported usage."""
        return self._raw_usage is not None

    def _message_start(self, usage: dict) -> dict:
        return {"type": "message_start", "message": anthropic_message(
            getattr(self.ctx, "requested_model", ""), [], None, None, usage, self.message_id)}

    def _finish(self, out: list[dict], stop_reason: str | None, stop_sequence: str | None) -> None:
        """message_delta (stop reason, final usage) and message_stop: the stream is done."""
        self.usage = anthropic_usage(self._raw_usage, self._estimated_input, self.output_chars)
        out.append({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": self.usage})
        out.append({"type": "message_stop"})
        self.done = True

    def fail(self, error: dict | ProxyError) -> list[dict]:
        """Terminal error event. An open block is stopped first unless it is a tool with
        incomplete arguments (the client would run a half-built call); no message_stop."""
        if self.done:
            return []
        out: list[dict] = []
        if self._open_kind is not None:
            tool = self._open_tool
            if tool is not None and not self._tool_complete(tool):
                self._open_kind = None
                self._open_tool = None
            else:
                self._close_open(out)
        out.append(_error_event(error))
        self.usage = anthropic_usage(self._raw_usage, self._estimated_input, self.output_chars)
        self.done = True
        return out

    def _tool_complete(self, tool: Any) -> bool:
        """Whether an open tool's arguments are complete JSON (the dialect knows its tool state)."""
        raise NotImplementedError

    def _open_block(self, kind: str, block: dict, out: list[dict]) -> None:
        if self._open_kind is not None:
            self._close_open(out)
        index = self._next_index
        self._next_index = index + 1
        self._open_kind = kind
        self._open_index = index
        out.append({"type": "content_block_start", "index": index, "content_block": block})

    def _close_open(self, out: list[dict], signature: str = "") -> None:
        kind = self._open_kind
        if kind is None:
            return
        if kind == "thinking":
            # Claude Code expects a signature before a thinking block closes: clasp's own
            # (Responses reasoning round trip) or "", never a fake one.
            out.append({"type": _DELTA_EVENT, "index": self._open_index,
                        "delta": {"type": "signature_delta", "signature": signature}})
        out.append({"type": _STOP_EVENT, "index": self._open_index})
        self._open_kind = None
        self._open_tool = None


class StreamTranslator(AnthropicEventStream):
    """State machine of PROTOCOL §3.3 for one streamed response."""

    def __init__(self, ctx: Any, caps: Any, message_id: str | None = None, *,
                 provider: str = "upstream") -> None:
        self._init_events(ctx, caps, message_id, provider)
        self._think_tags = bool(getattr(caps, "think_tags", False))
        self._tools: list[_Tool] = []           # first-seen order
        self._slots: dict = {}                  # index (or id/position) -> current _Tool
        self._slot_ids: dict = {}               # (slot, upstream id) -> _Tool
        self._queued: list[_Tool] = []
        self._ws_buf = ""
        self._pending_text: list[str] = []
        self._pending_thinking: list[str] = []
        self._think_state = 0 if self._think_tags else 2   # 0 undecided, 1 inside <think>, 2 plain
        self._think_buf = ""
        self._strip_lead = False                # text right after </think>: drop leading whitespace
        self._matched_stop: object = None
        self.usage: dict = {
            "input_tokens": self._estimated_input,
            "output_tokens": 1,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }

    # ------------------------------------------------------------------ public API
    # (finish_reason, tool_count, has_upstream_usage, fail: AnthropicEventStream)

    def start(self) -> list[dict]:
        """message_start (estimated input, output 1) and one ping; before any upstream chunk."""
        if self.started:
            return []
        self.started = True
        return [self._message_start(dict(self.usage)), {"type": "ping"}]

    def feed(self, chunk: dict) -> list[dict]:
        """Translate one parsed upstream chunk; returns the events to send now."""
        if self.done:
            return []
        out: list[dict] = [] if self.started else self.start()
        if not isinstance(chunk, dict):
            return out
        err = chunk.get("error")
        if err:
            out.extend(self._upstream_error(err))
            return out
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self._raw_usage = usage              # any chunk may carry it; last wins
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return out                           # Azure filter chunk, include_usage chunk
        choice = choices[0]
        if not isinstance(choice, dict):
            return out
        if choice.get("index", 0) not in (0, None):
            choice = next((c for c in choices if isinstance(c, dict) and c.get("index") == 0), None)
            if choice is None:
                return out
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message")
        if delta and isinstance(delta, dict):
            # 1. reasoning
            if "reasoning_content" in delta or "reasoning" in delta or "reasoning_details" in delta:
                r = reasoning_text(delta)
                if r:
                    self.output_chars += len(r)
                    if self._show_thinking:
                        self._thinking(r, out)
            # 2. text (the hot path: an open text block costs one event with two dicts)
            content = delta.get("content")
            if content is not None or "refusal" in delta:
                t = content if content.__class__ is str else content_text(content)
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    t += refusal
                if t:
                    self.output_chars += len(t)
                    if self._think_state != 2:
                        t = self._split_think(t, out)
                    if t:
                        if self._open_kind == "text":
                            out.append({"type": _DELTA_EVENT, "index": self._open_index,
                                        "delta": {"type": "text_delta", "text": t}})
                        else:
                            self._text(t, out)
            # 3. tool calls ([] / null mean none)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                self._tool_calls(calls, out)
            else:
                fc = delta.get("function_call")      # legacy single-call form
                if fc and isinstance(fc, dict):
                    self._tool_calls([{"index": "function_call", "function": fc}], out)
        # 4. finish_reason: stored; finalize happens in finish() (usage may still follow)
        fr = choice.get("finish_reason")
        if fr:
            self._finish_reason = fr
            if not usage:
                usage = choice.get("usage")         # Moonshot/Kimi: usage inside the final choice
                if usage and isinstance(usage, dict):
                    self._raw_usage = usage
            matched = choice.get("stop_reason")     # vLLM names the matched stop string
            if matched is not None:
                self._matched_stop = matched
            if fr == "error":
                out.extend(self.fail({"type": "api_error",
                                      "message": f"{self.provider}: upstream reported finish_reason \"error\""}))
        return out

    def finish(self) -> list[dict]:
        """[DONE] or EOF: close blocks, emit queued tools and pending text, message_delta, message_stop.

        Without any finish_reason and with a tool whose arguments are not complete JSON the
        stream was cut: report an error instead of handing the client a half-built call."""
        if self.done:
            return []
        out: list[dict] = [] if self.started else self.start()
        self._flush_think_tags(out)
        if self._finish_reason is None:
            open_tool = self._open_tool
            if (open_tool is not None and not open_tool.is_complete()) or any(
                (t.name or t.size) and not t.is_complete() for t in self._queued
            ):
                out.extend(self.fail({"type": "api_error",
                                      "message": f"{self.provider}: upstream stream ended unexpectedly"}))
                return out
        self._close_open(out)
        for tool in self._queued:
            if not tool.name:
                # An empty fragment that never became a call, or arguments without a name: a
                # nameless tool_use is useless to the client (the non-streaming path drops it too).
                if tool.size:
                    log.warning("%s: dropping a streamed tool call without a function name", self.provider)
                continue
            tool.queued = False
            self._start_tool(tool, out)
            repaired = parse_tool_arguments(tool.args())
            if repaired:
                out.append({"type": _DELTA_EVENT, "index": self._open_index,
                            "delta": {"type": "input_json_delta", "partial_json": _dumps(repaired)}})
            self._close_open(out)
        self._queued = []
        if self._pending_thinking:
            self._open_block("thinking", {"type": "thinking", "thinking": ""}, out)
            out.append({"type": _DELTA_EVENT, "index": self._open_index,
                        "delta": {"type": "thinking_delta", "thinking": "".join(self._pending_thinking)}})
            self._pending_thinking = []
            self._close_open(out)
        if self._pending_text:
            text = "".join(self._pending_text)
            self._pending_text = []
            if not text.isspace():
                self._open_block("text", {"type": "text", "text": ""}, out)
                out.append({"type": _DELTA_EVENT, "index": self._open_index,
                            "delta": {"type": "text_delta", "text": text}})
                self._close_open(out)
        stop_reason, stop_sequence = stop_reason_for(
            self._finish_reason, self._tool_blocks > 0, self._matched_stop,
            getattr(self.ctx, "stop_sequences", None) or [],
            completion_tokens(self._raw_usage), getattr(self.ctx, "max_tokens", 0) or 0)
        self._finish(out, stop_reason, stop_sequence)
        return out

    # ------------------------------------------------------------------ blocks

    def _tool_complete(self, tool: _Tool) -> bool:
        return tool.is_complete()

    def _open_tool_incomplete(self) -> bool:
        tool = self._open_tool
        return tool is not None and not tool.is_complete()

    def _thinking(self, r: str, out: list[dict]) -> None:
        if self._open_kind != "thinking":
            if self._pending_thinking or self._pending_text or self._open_tool_incomplete():
                # Closing a tool mid-arguments would commit a half-built call; defer.
                self._pending_thinking.append(r)
                return
            self._open_block("thinking", {"type": "thinking", "thinking": ""}, out)
        out.append({"type": _DELTA_EVENT, "index": self._open_index,
                    "delta": {"type": "thinking_delta", "thinking": r}})

    def _text(self, t: str, out: list[dict]) -> None:
        """Text while no text block is open (the open-text case is inlined in feed())."""
        if self._strip_lead:
            t = t.lstrip()                       # the "\n\n" after </think> (as the non-streaming path)
            if not t:
                return
            self._strip_lead = False
        if self._pending_text:
            self._pending_text.append(t)         # keep order behind text already waiting
            return
        if t.isspace():
            self._ws_buf += t                    # never open a block for whitespace alone
            return
        if self._open_tool_incomplete():
            self._pending_text.append(self._ws_buf + t)
            self._ws_buf = ""
            return
        self._open_block("text", {"type": "text", "text": ""}, out)
        if self._ws_buf:
            t = self._ws_buf + t
            self._ws_buf = ""
        out.append({"type": _DELTA_EVENT, "index": self._open_index,
                    "delta": {"type": "text_delta", "text": t}})

    # ------------------------------------------------------------------ <think> tags

    def _split_think(self, t: str, out: list[dict]) -> str:
        """Flag think_tags: a leading <think>...</think> in content is reasoning. Returns the
        part of t that is ordinary text. Tags may be split across chunks."""
        if self._think_state == 0:
            buf = self._think_buf + t
            s = buf.lstrip()
            if not s or (len(s) < len(_THINK_OPEN) and _THINK_OPEN.startswith(s)):
                self._think_buf = buf            # undecided yet
                return ""
            self._think_buf = ""
            if not s.startswith(_THINK_OPEN):
                self._think_state = 2
                return buf
            self._think_state = 1
            t = s[len(_THINK_OPEN):]
        buf = self._think_buf + t
        end = buf.find(_THINK_CLOSE)
        if end >= 0:
            self._think_state = 2
            self._think_buf = ""
            if end and self._show_thinking:
                self._thinking(buf[:end], out)
            rest = buf[end + len(_THINK_CLOSE):].lstrip()
            if not rest:
                self._strip_lead = True          # the answer's leading whitespace may come next
            return rest
        keep = 0
        tail = buf[-(len(_THINK_CLOSE) - 1):]
        if "<" in tail:                          # hold back a possibly split "</think>"
            for k in range(len(tail), 0, -1):
                if _THINK_CLOSE.startswith(buf[-k:]):
                    keep = k
                    break
        if keep:
            self._think_buf = buf[-keep:]
            buf = buf[:-keep]
        else:
            self._think_buf = ""
        if buf and self._show_thinking:
            self._thinking(buf, out)
        return ""

    def _flush_think_tags(self, out: list[dict]) -> None:
        state, buf = self._think_state, self._think_buf
        self._think_state = 2
        self._think_buf = ""
        if not buf:
            return
        if state == 1:
            if self._show_thinking:
                self._thinking(buf, out)
        elif self._open_kind == "text":
            out.append({"type": _DELTA_EVENT, "index": self._open_index,
                        "delta": {"type": "text_delta", "text": buf}})
        else:
            self._text(buf, out)

    # ------------------------------------------------------------------ tool calls

    def _tool_for(self, tc: dict, pos: int, name: str, piece: str) -> _Tool:
        """Key a fragment to its call: by index; by (index, id) when a provider reuses an
        index for a different call; by id, else by position, when there is no index."""
        idx = tc.get("index")
        tid = tc.get("id")
        if not isinstance(tid, str) or not tid:
            tid = None
        if idx is None:
            slot: object = ("id", tid) if tid else ("pos", pos)
        else:
            slot = idx if idx.__class__ in (int, str) else repr(idx)
        cur = self._slots.get(slot)
        if cur is not None:
            if tid is None or tid == cur.up_id:
                if not (tid is None and name and cur.name and piece[:1] == "{"
                        and cur.is_complete() and piece != cur.args()):
                    return cur
                # Same slot, no id, a fresh named call after a complete one: a new call.
            else:
                known = self._slot_ids.get((slot, tid))
                if known is not None:
                    self._slots[slot] = known
                    return known
                if cur.up_id is None or not name:
                    # First id for a call opened without one, or an id-only continuation.
                    if cur.up_id is None:
                        cur.up_id = tid
                    self._slot_ids[(slot, tid)] = cur
                    return cur
        tool = _Tool(tid, len(self._tools))
        self._tools.append(tool)
        self._slots[slot] = tool
        if tid:
            self._slot_ids[(slot, tid)] = tool
        return tool

    def _tool_calls(self, calls: list, out: list[dict]) -> None:
        for pos, tc in enumerate(calls):
            if not isinstance(tc, dict):
                continue
            fn = tc.get("function")
            if not isinstance(fn, dict):
                fn = {}
            name = fn.get("name")
            if not isinstance(name, str):
                name = ""
            raw = fn.get("arguments")
            if raw is None:
                piece = ""
            elif isinstance(raw, str):
                piece = raw
            else:
                piece = _dumps(raw)               # Ollama may send an object
            tool = self._tool_for(tc, pos, name, piece)
            if name and not tool.name:
                tool.name = name                  # a later fragment may carry the name
            if piece and tool.size and len(piece) >= tool.size:
                current = tool.args()
                if piece.startswith(current):
                    # Cumulative snapshots: keep only what is new (an identical one adds nothing).
                    piece = piece[tool.size:]
            if piece:
                if tool.placed and tool is not self._open_tool:
                    continue  # its block is already closed with complete JSON: nothing can follow
                if (tool.size and piece.lstrip()[:1] in ("{", '"')
                        and tool.parts[-1].rstrip()[-1:] == "}" and tool.is_complete()):
                    # A second JSON value after complete arguments (a gateway's summary chunk
                    # repeating the call, double-encoded; a nameless call reusing the index):
                    # appending it would hand the client broken JSON.
                    log.warning("%s: ignoring extra arguments after a complete tool call", self.provider)
                    self._place(tool, "", out)
                    continue
                tool.parts.append(piece)
                tool.size += len(piece)
                tool.complete = None
                self.output_chars += len(piece)
            self._place(tool, piece, out)

    def _place(self, tool: _Tool, piece: str, out: list[dict]) -> None:
        if tool is self._open_tool:
            if piece:
                out.append({"type": _DELTA_EVENT, "index": self._open_index,
                            "delta": {"type": "input_json_delta", "partial_json": piece}})
            return
        if tool.placed:
            return
        queue = self._queued
        if (self._buffer_tools or not tool.name or (queue and queue[0] is not tool)
                or self._open_tool_incomplete()):
            # Buffered mode, name unknown, an earlier call still waiting, or another call is
            # mid-arguments (interleaved parallel calls): emit at finalize, in first-seen order.
            if not tool.queued:
                tool.queued = True
                queue.append(tool)
            return
        if tool.queued:
            queue.pop(0)
            tool.queued = False
        self._start_tool(tool, out)
        if tool.size:
            out.append({"type": _DELTA_EVENT, "index": self._open_index,
                        "delta": {"type": "input_json_delta", "partial_json": tool.args()}})
        self._ws_buf = ""                         # whitespace before a tool call is dropped

    def _start_tool(self, tool: _Tool, out: list[dict]) -> None:
        tool.placed = True
        block_id = tool_use_id(tool.up_id, self._seen_ids)
        name = self._name_map.get(tool.name, tool.name)
        self._open_block("tool", {"type": "tool_use", "id": block_id, "name": name, "input": {}}, out)
        self._open_tool = tool
        self._tool_blocks += 1

    # ------------------------------------------------------------------ errors

    def _upstream_error(self, err: object) -> list[dict]:
        """A chunk with top-level "error" (HTTP 200 already sent): map it like an HTTP error."""
        status = err.get("code") if isinstance(err, dict) else None
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            status = 500
        body = json.dumps({"error": err}, ensure_ascii=False).encode("utf-8")
        return self.fail(map_upstream_error(status, {}, body, self.provider, self.ctx))


def _error_event(error: object) -> dict:
    """Normalise what fail() accepts: a ProxyError, a full error body, or the inner error."""
    if isinstance(error, dict):
        inner = error.get("error")
        if error.get("type") == "error" and isinstance(inner, dict):
            return {"type": "error", "error": inner}
        if isinstance(error.get("type"), str) and "message" in error:
            return {"type": "error", "error": error}
        return {"type": "error", "error": {"type": "api_error", "message": str(error.get("message", "upstream error"))}}
    return error_event(error)  # type: ignore[arg-type]


def events_from_message(message: dict) -> list[dict]:
    """The content and closing events of a whole Message, after StreamTranslator.start()'s
    message_start (for an upstream that answered JSON to a streaming request, PROTOCOL §3.4)."""
    events: list[dict] = []
    for i, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            citations = block.get("citations")
            start: dict = {"type": "text", "text": ""}
            if citations is not None:  # a cited block: its citations come before its text
                start = {"citations": [], "type": "text", "text": ""}
            events.append({"type": "content_block_start", "index": i, "content_block": start})
            for citation in citations or ():
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "citations_delta", "citation": citation}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "text_delta", "text": block["text"]}})
        elif kind == "server_tool_use":
            # as Anthropic streams it: input {} at the start, then the input as JSON deltas
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {"type": "server_tool_use", "id": block["id"], "name": block["name"],
                                             "input": {}}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "input_json_delta", "partial_json": ""}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "input_json_delta", "partial_json": _dumps(block["input"])}})
        elif kind == "web_search_tool_result":
            events.append({"type": "content_block_start", "index": i, "content_block": block})  # whole
        elif kind == "thinking":
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {"type": "thinking", "thinking": ""}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "thinking_delta", "thinking": block["thinking"]}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "signature_delta", "signature": block.get("signature", "")}})
        elif kind == "tool_use":
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"],
                                             "input": {}}})
            if block["input"]:
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "input_json_delta",
                                         "partial_json": _dumps(block["input"])}})
        events.append({"type": "content_block_stop", "index": i})
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                   "usage": message["usage"]})
    events.append({"type": "message_stop"})
    return events
