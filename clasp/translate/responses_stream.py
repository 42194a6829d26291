"""ResponsesStreamTranslator: OpenAI Responses API stream events -> Anthropic SSE events (issue 13).

Pure and I/O-free, like stream.StreamTranslator: the caller parses upstream SSE (sse.SSEParser),
json-decodes each payload, calls feed() per event and finish() at EOF, and encodes the returned
events (sse.encode_events). A Responses stream has no [DONE]: response.completed / .incomplete
end it (feed() then emits message_delta + message_stop), response.failed / error end it with an
error event, and a stream that just stops was cut (finish() reports an error).

Each output item (reasoning, message, function_call) becomes one content block. Items are
emitted one at a time in the order they appear: the first unfinished item is "live" and streams
its deltas; a later item that starts early (interleaved parallel calls) is held until the live
one is done, so the client sees one open block at a time with indices in order. Text that only
arrives in a `.done` event, an output_item.done or the final response object is caught up then.

Stop sequences (the Responses API has no `stop`) are applied here: text that could be the start
of one is held back; after a match nothing more is emitted and stop_reason is stop_sequence.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from .common import completion_tokens, parse_tool_arguments, tool_use_id
from .jsontext import json_str
from .responses_response import (
    ITEM_KINDS,
    THINKING_PART_SEPARATOR,
    arguments_text,
    first_stop,
    message_parts,
    reasoning_parts,
    reasoning_signature,
    responses_error,
    responses_stop_reason,
    responses_usage,
)
from .stream import AnthropicEventStream

__all__ = ["ResponsesStreamTranslator"]

log = logging.getLogger("clasp.translate")

_DELTA_EVENT = "content_block_delta"


class _Item:
    """One upstream output item being streamed (or held until it is its turn)."""

    __slots__ = ("kind", "item_id", "name", "call_id", "data", "lens", "pending", "last_key", "done",
                 "parts", "size", "sent")

    def __init__(self, kind: str, item_id: str | None) -> None:
        self.kind = kind                 # "message" | "reasoning" | "function_call"
        self.item_id = item_id
        self.name = ""                   # function_call
        self.call_id: str | None = None  # function_call
        self.data: dict = {}             # the latest item object seen (added / done / final)
        self.lens: dict = {}             # part key -> characters received (to catch up from .done)
        self.pending: list[str] = []     # text / thinking received while not live
        self.last_key: object = None     # reasoning: part of the last piece (separator between parts)
        self.done = False                # output_item.done seen
        self.parts: list[str] = []       # function_call arguments, joined lazily
        self.size = 0                    # characters in parts
        self.sent = 0                    # characters of parts already sent as input_json_delta

    def args(self) -> str:
        parts = self.parts
        if len(parts) > 1:
            self.parts = parts = ["".join(parts)]
        return parts[0] if parts else ""

    def update(self, data: dict) -> None:
        self.data = data
        if self.item_id is None:
            iid = data.get("id")
            if isinstance(iid, str) and iid:
                self.item_id = iid
        if self.kind == "function_call":
            name = data.get("name")
            if isinstance(name, str) and name and not self.name:
                self.name = name
            call_id = data.get("call_id")
            if isinstance(call_id, str) and call_id and self.call_id is None:
                self.call_id = call_id


class ResponsesStreamTranslator(AnthropicEventStream):
    """Anthropic event grammar (PROTOCOL §3.1) from a Responses API event stream."""

    def __init__(self, ctx: Any, caps: Any, message_id: str | None = None, *, provider: str = "") -> None:
        self._init_events(ctx, caps, message_id, provider)
        stops = [s for s in (getattr(ctx, "stop_sequences", None) or []) if isinstance(s, str) and s]
        self._stops = stops
        # Proper prefixes of the stop sequences: a text tail equal to one is held back.
        self._stop_prefixes = {s[:k] for s in stops for k in range(1, len(s))}
        self._stop_last_chars = {p[-1] for p in self._stop_prefixes}
        self._stop_hold_max = max((len(s) - 1 for s in stops), default=0)

        self._by_index: dict = {}               # output_index -> _Item
        self._by_id: dict = {}                  # item id -> _Item
        self._order: list[_Item] = []           # first-seen order = block order
        self._pos = 0                           # items before this are finished
        self._live: _Item | None = None         # the item whose deltas stream now
        self._ws = ""                           # leading whitespace of a text block not yet opened
        self._held = ""                         # text tail that may begin a stop sequence
        self._stopped = False                   # a stop sequence matched: emit nothing more
        self._matched: str | None = None
        self.usage: dict | None = None

    # ------------------------------------------------------------------ public API

    def start(self) -> list[dict]:
        """[message_start] (estimated input tokens, output 1); before any upstream event."""
        if self.started:
            return []
        self.started = True
        return [self._message_start({"input_tokens": self._estimated_input, "output_tokens": 1,
                                     "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})]

    def feed(self, event: dict) -> list[dict]:
        """Translate one parsed Responses event (the JSON of its data line); returns the events
        to send now. Unknown event types are ignored."""
        if self.done:
            return []
        out: list[dict] = [] if self.started else self.start()
        if event.__class__ is not dict:
            return out
        etype = event.get("type")
        if etype == "response.output_text.delta":  # the hot path
            delta = event.get("delta")
            if delta and delta.__class__ is str:
                item = self._item_for(event, "message", out)
                if (item is self._live and self._open_kind == "text" and not self._stops
                        and item.kind == "message"):
                    self.output_chars += len(delta)
                    key = _index(event.get("content_index"))
                    item.lens[key] = item.lens.get(key, 0) + len(delta)
                    out.append({"type": _DELTA_EVENT, "index": self._open_index,
                                "delta": {"type": "text_delta", "text": delta}})
                else:
                    self._receive(item, self._part_key(item, event), delta, out)
            return out
        handler = _HANDLERS.get(etype) if etype.__class__ is str else None
        if handler is not None:
            handler(self, event, out)
        return out

    def finish(self) -> list[dict]:
        """The upstream body ended. A terminal event already finished the message (nothing to
        add); without one the stream was cut, which is never a complete answer: an error event."""
        if self.done:
            return []
        out: list[dict] = [] if self.started else self.start()
        prefix = f"{self.provider}: " if self.provider else ""
        out.extend(self.fail({"type": "api_error", "message": f"{prefix}upstream stream ended before the "
                                                              "response was complete (no response.completed)"}))
        return out

    def _tool_complete(self, tool: _Item) -> bool:
        return _is_json(tool.args())

    # ------------------------------------------------------------------ items

    def _item_for(self, event: dict, kind: str, out: list[dict]) -> _Item:
        """The item an event belongs to: by output_index, else item_id; an event naming neither
        (minimal servers) continues the last unfinished item of its kind. Unknown -> a new item."""
        idx = event.get("output_index")
        if idx.__class__ is not int:
            idx = None
        iid = event.get("item_id")
        if iid.__class__ is not str or not iid:
            iid = None
        item = self._find(idx, iid)
        if item is not None:
            return item
        if idx is None and iid is None and self._order:
            last = self._order[-1]
            if last.kind == kind and not last.done:
                return last
        return self._new_item(kind, idx, iid, None, out)

    def _find(self, idx: int | None, iid: str | None) -> _Item | None:
        if idx is not None:
            item = self._by_index.get(idx)
            if item is not None:
                return item
        if iid is not None:
            item = self._by_id.get(iid)
            if item is not None:
                if idx is not None:
                    self._by_index[idx] = item
                return item
        return None

    def _new_item(self, kind: str, idx: int | None, iid: str | None, data: dict | None,
                  out: list[dict]) -> _Item:
        item = _Item(kind, iid)
        if data is not None:
            item.update(data)                   # before it may go live: a call's name opens its block
        if idx is not None:
            self._by_index[idx] = item
        if item.item_id is not None:
            self._by_id[item.item_id] = item
        self._order.append(item)
        if self._live is None:
            self._advance(out)
        return item

    def _item_from_object(self, event: dict, out: list[dict], added: bool) -> _Item | None:
        """The item of output_item.added / .done (its `item` object), updated with that object."""
        data = event.get("item")
        if not isinstance(data, dict) or data.get("type") not in ITEM_KINDS:
            return None  # web_search_call, ...: not a content block
        kind = data["type"]
        idx = event.get("output_index")
        if idx.__class__ is not int:
            idx = None
        iid = data.get("id")
        if iid.__class__ is not str or not iid:
            iid = None
        item = self._find(idx, iid)
        if item is None and not added and idx is None and iid is None and self._order:
            last = self._order[-1]              # an anonymous .done closes the item in progress
            if last.kind == kind and not last.done:
                item = last
        if item is None:
            return self._new_item(kind, idx, iid, data, out)
        if item.kind != kind:
            return None
        if iid is not None and iid not in self._by_id:
            self._by_id[iid] = item
        item.update(data)
        return item

    def _part_key(self, item: _Item, event: dict) -> object:
        if item.kind == "reasoning":
            return ("c", _index(event.get("content_index")))
        return _index(event.get("content_index"))

    def _advance(self, out: list[dict]) -> None:
        """Make the first unfinished item live (finishing those already done on the way)."""
        order = self._order
        while self._pos < len(order):
            item = order[self._pos]
            if self._live is not item:
                self._live = item
                self._start_item(item, out)
            if not item.done:
                return
            self._finish_item(item, out)
            self._pos += 1
        self._live = None

    def _start_item(self, item: _Item, out: list[dict]) -> None:
        if self._stopped:
            return
        if item.kind == "function_call":
            if item.name and not self._buffer_tools:
                self._start_tool(item, out)
                if item.size and not item.done:
                    out.append({"type": _DELTA_EVENT, "index": self._open_index,
                                "delta": {"type": "input_json_delta", "partial_json": item.args()}})
                    item.sent = item.size
        elif item.pending:
            text = "".join(item.pending)
            item.pending = []
            self._emit(item, text, out)

    def _finish_item(self, item: _Item, out: list[dict]) -> None:
        if self._stopped:
            return
        kind = item.kind
        if kind == "message":
            if self._held:
                held, self._held = self._held, ""
                self._emit_text(held, out)
            self._ws = ""                        # whitespace-only text never becomes a block
            if self._open_kind == "text":
                self._close_open(out)
        elif kind == "reasoning":
            if self._show_thinking:
                signature = reasoning_signature(item.data)
                if self._open_kind != "thinking" and signature:
                    self._open_block("thinking", {"type": "thinking", "thinking": ""}, out)
                if self._open_kind == "thinking":
                    self._close_open(out, signature)
        else:
            if not item.name:
                if item.size:
                    log.warning("%s: dropping a streamed function_call without a name", self.provider or "upstream")
                return
            if self._open_tool is not item:
                self._start_tool(item, out)
            if not item.sent:
                # Nothing streamed yet (arguments only in .done / output_item.done, or buffered):
                # send them whole, repaired like the non-streaming path.
                repaired = parse_tool_arguments(item.args())
                if repaired:
                    out.append({"type": _DELTA_EVENT, "index": self._open_index,
                                "delta": {"type": "input_json_delta", "partial_json": json_str(repaired)}})
            elif item.size > item.sent:
                out.append({"type": _DELTA_EVENT, "index": self._open_index,
                            "delta": {"type": "input_json_delta", "partial_json": item.args()[item.sent:]}})
            item.sent = item.size
            self._close_open(out)

    def _name_known(self, item: _Item, out: list[dict]) -> None:
        """A live call whose name was unknown when it went live: open its block now."""
        if (item is self._live and item.kind == "function_call" and item.name and self._open_tool is not item
                and not item.done):
            self._start_item(item, out)

    def _start_tool(self, item: _Item, out: list[dict]) -> None:
        block_id = tool_use_id(item.call_id, self._seen_ids)
        name = self._name_map.get(item.name, item.name)
        self._open_block("tool", {"type": "tool_use", "id": block_id, "name": name, "input": {}}, out)
        self._open_tool = item
        self._tool_blocks += 1

    # ------------------------------------------------------------------ content

    def _receive(self, item: _Item, key: object, piece: str, out: list[dict]) -> None:
        """Text or thinking of an item (a delta, or a catch-up from a .done/snapshot)."""
        self.output_chars += len(piece)
        lens = item.lens
        lens[key] = lens.get(key, 0) + len(piece)
        if self._stopped:
            return
        if item.kind == "reasoning":
            if not self._show_thinking:
                return
            if item.last_key is not None and key != item.last_key:
                piece = THINKING_PART_SEPARATOR + piece
            item.last_key = key
        elif item.kind != "message":
            return
        if item is self._live:
            self._emit(item, piece, out)
        else:
            item.pending.append(piece)

    def _catch_up(self, item: _Item, key: object, text: object, out: list[dict]) -> None:
        """A .done event or item object holds the part's full text: send what deltas missed."""
        if isinstance(text, str):
            have = item.lens.get(key, 0)
            if len(text) > have:
                self._receive(item, key, text[have:], out)

    def _receive_args(self, item: _Item, piece: str, out: list[dict], whole: bool = False) -> None:
        """Function-call arguments: streamed live when this call's block is open, unless nothing
        was streamed yet and this is the complete text (sent whole and repaired at the end)."""
        self.output_chars += len(piece)
        item.parts.append(piece)
        item.size += len(piece)
        if self._stopped or self._open_tool is not item or (whole and not item.sent):
            return
        out.append({"type": _DELTA_EVENT, "index": self._open_index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}})
        item.sent = item.size

    def _reconcile(self, item: _Item, out: list[dict]) -> None:
        """Catch up from the item object (output_item.added/.done, the final response)."""
        data = item.data
        kind = item.kind
        if kind == "message":
            for key, text in message_parts(data):
                self._catch_up(item, key, text, out)
        elif kind == "reasoning":
            for key, text in reasoning_parts(data):
                self._catch_up(item, key, text, out)
        else:
            self._final_args(item, arguments_text(data.get("arguments")), out)

    def _final_args(self, item: _Item, args: str, out: list[dict]) -> None:
        """The complete arguments (.done event or item object): add what the deltas missed. While
        nothing was sent yet, a final text that disagrees with the deltas replaces them."""
        if not args:
            return
        if not item.sent and item.size and not args.startswith(item.args()):
            item.parts = []
            item.size = 0
        if len(args) > item.size:
            self._receive_args(item, args[item.size:], out, whole=True)

    def _emit(self, item: _Item, piece: str, out: list[dict]) -> None:
        if item.kind == "message":
            self._text(piece, out)
        elif piece:
            if self._open_kind != "thinking":
                self._open_block("thinking", {"type": "thinking", "thinking": ""}, out)
            out.append({"type": _DELTA_EVENT, "index": self._open_index,
                        "delta": {"type": "thinking_delta", "thinking": piece}})

    def _text(self, t: str, out: list[dict]) -> None:
        if self._stops:
            buf = self._held + t if self._held else t
            hit = first_stop(buf, self._stops)
            if hit is not None:
                self._held = ""
                if hit[0]:
                    self._emit_text(buf[:hit[0]], out)
                self._stopped = True
                self._matched = hit[1]
                self._ws = ""
                self._close_open(out)
                return
            keep = self._hold_len(buf)
            if keep:
                self._held = buf[-keep:]
                t = buf[:-keep]
            else:
                self._held = ""
                t = buf
            if not t:
                return
        self._emit_text(t, out)

    def _hold_len(self, buf: str) -> int:
        """Length of the longest tail of buf that is a proper prefix of a stop sequence."""
        if not buf or buf[-1] not in self._stop_last_chars:
            return 0
        prefixes = self._stop_prefixes
        for k in range(min(len(buf), self._stop_hold_max), 0, -1):
            if buf[-k:] in prefixes:
                return k
        return 0

    def _emit_text(self, t: str, out: list[dict]) -> None:
        if self._open_kind != "text":
            if self._ws:
                t = self._ws + t
            if t.isspace():
                self._ws = t                     # never open a block for whitespace alone
                return
            self._ws = ""
            self._open_block("text", {"type": "text", "text": ""}, out)
        out.append({"type": _DELTA_EVENT, "index": self._open_index,
                    "delta": {"type": "text_delta", "text": t}})

    # ------------------------------------------------------------------ blocks

    # ------------------------------------------------------------------ event handlers

    def _on_item_added(self, event: dict, out: list[dict]) -> None:
        item = self._item_from_object(event, out, True)
        if item is not None:
            self._name_known(item, out)
            self._reconcile(item, out)

    def _on_item_done(self, event: dict, out: list[dict]) -> None:
        item = self._item_from_object(event, out, False)
        if item is None or item.done:
            return
        self._reconcile(item, out)
        item.done = True
        if item is self._live:
            self._advance(out)

    def _on_part_done(self, event: dict, out: list[dict]) -> None:
        part = event.get("part")
        if not isinstance(part, dict):
            return
        kind = "reasoning" if part.get("type") == "reasoning_text" else "message"
        item = self._item_for(event, kind, out)
        text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
        self._catch_up(item, self._part_key(item, event), text, out)

    def _on_text_done(self, event: dict, out: list[dict]) -> None:
        item = self._item_for(event, "message", out)
        self._catch_up(item, self._part_key(item, event), event.get("text"), out)

    def _on_refusal_delta(self, event: dict, out: list[dict]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            item = self._item_for(event, "message", out)
            self._receive(item, self._part_key(item, event), delta, out)

    def _on_refusal_done(self, event: dict, out: list[dict]) -> None:
        item = self._item_for(event, "message", out)
        self._catch_up(item, self._part_key(item, event), event.get("refusal"), out)

    def _on_summary_delta(self, event: dict, out: list[dict]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            item = self._item_for(event, "reasoning", out)
            self._receive(item, ("s", _index(event.get("summary_index"))), delta, out)

    def _on_summary_done(self, event: dict, out: list[dict]) -> None:
        item = self._item_for(event, "reasoning", out)
        self._catch_up(item, ("s", _index(event.get("summary_index"))), event.get("text"), out)

    def _on_summary_part_done(self, event: dict, out: list[dict]) -> None:
        part = event.get("part")
        if isinstance(part, dict):
            item = self._item_for(event, "reasoning", out)
            self._catch_up(item, ("s", _index(event.get("summary_index"))), part.get("text"), out)

    def _on_reasoning_text_delta(self, event: dict, out: list[dict]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            item = self._item_for(event, "reasoning", out)
            self._receive(item, ("c", _index(event.get("content_index"))), delta, out)

    def _on_reasoning_text_done(self, event: dict, out: list[dict]) -> None:
        item = self._item_for(event, "reasoning", out)
        self._catch_up(item, ("c", _index(event.get("content_index"))), event.get("text"), out)

    def _on_args_delta(self, event: dict, out: list[dict]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            item = self._item_for(event, "function_call", out)
            if item.kind == "function_call":
                self._receive_args(item, delta, out)

    def _on_args_done(self, event: dict, out: list[dict]) -> None:
        item = self._item_for(event, "function_call", out)
        if item.kind != "function_call":
            return
        name = event.get("name")
        if isinstance(name, str) and name and not item.name:
            item.name = name
            self._name_known(item, out)
        self._final_args(item, arguments_text(event.get("arguments")), out)

    def _on_terminal(self, event: dict, out: list[dict]) -> None:
        """response.completed / response.incomplete: catch up from the final object, finish
        every item in order, then message_delta + message_stop."""
        resp = event.get("response")
        if not isinstance(resp, dict):
            resp = {}
        status = resp.get("status")
        if not isinstance(status, str) or status not in ("completed", "incomplete"):
            status = "incomplete" if event.get("type") == "response.incomplete" else "completed"
        self._finish_reason = status
        usage = responses_usage(resp.get("usage"))
        if usage is not None:
            self._raw_usage = usage
        output = resp.get("output")
        if isinstance(output, list):
            self._reconcile_output(output, out)
        for item in self._order:
            item.done = True
        self._advance(out)
        self._close_open(out)
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        stop_reason, stop_sequence = responses_stop_reason(
            status, reason, self._tool_blocks > 0, self._matched, completion_tokens(self._raw_usage),
            int(getattr(self.ctx, "max_tokens", 0) or 0))
        self._finish(out, stop_reason, stop_sequence)

    def _reconcile_output(self, output: list, out: list[dict]) -> None:
        """Match the final output items to the streamed ones (by id, output index, else position
        among content items) and send whatever the stream did not carry."""
        order = self._order
        pos = 0
        for i, data in enumerate(output):
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            if kind not in ITEM_KINDS:
                continue
            iid = data.get("id")
            if not isinstance(iid, str) or not iid:
                iid = None
            item = self._by_id.get(iid) if iid else None
            if item is None:
                item = self._by_index.get(i)
                if item is not None and (item.kind != kind or (iid and item.item_id not in (None, iid))):
                    item = None
            if item is None and pos < len(order):
                cand = order[pos]
                if cand.kind == kind and cand.item_id in (None, iid) and not cand.data:
                    item = cand
            pos += 1
            if item is None:
                item = self._new_item(kind, None, iid, data, out)
            else:
                item.update(data)
            self._reconcile(item, out)

    def _on_failed(self, event: dict, out: list[dict]) -> None:
        resp = event.get("response")
        err = resp.get("error") if isinstance(resp, dict) else None
        if isinstance(resp, dict):
            usage = responses_usage(resp.get("usage"))
            if usage is not None:
                self._raw_usage = usage
        self._finish_reason = "failed"
        out.extend(self.fail(responses_error(err, self.provider, self.ctx)))

    def _on_error(self, event: dict, out: list[dict]) -> None:
        # {"type":"error","code","message","param"} (documented) or {"type":"error","error":{...}}
        err = event.get("error")
        if not isinstance(err, dict):
            err = {k: event[k] for k in ("code", "message", "param") if k in event}
        self._finish_reason = "error"
        out.extend(self.fail(responses_error(err, self.provider, self.ctx, "upstream stream error")))


def _index(value: object) -> int:
    """A part index from an event (content_index / summary_index); junk counts as 0."""
    return value if value.__class__ is int else 0


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


_HANDLERS = {
    "response.output_item.added": ResponsesStreamTranslator._on_item_added,
    "response.output_item.done": ResponsesStreamTranslator._on_item_done,
    "response.content_part.done": ResponsesStreamTranslator._on_part_done,
    "response.output_text.done": ResponsesStreamTranslator._on_text_done,
    "response.refusal.delta": ResponsesStreamTranslator._on_refusal_delta,
    "response.refusal.done": ResponsesStreamTranslator._on_refusal_done,
    "response.reasoning_summary_text.delta": ResponsesStreamTranslator._on_summary_delta,
    "response.reasoning_summary_text.done": ResponsesStreamTranslator._on_summary_done,
    "response.reasoning_summary_part.done": ResponsesStreamTranslator._on_summary_part_done,
    "response.reasoning_text.delta": ResponsesStreamTranslator._on_reasoning_text_delta,
    "response.reasoning_text.done": ResponsesStreamTranslator._on_reasoning_text_done,
    "response.function_call_arguments.delta": ResponsesStreamTranslator._on_args_delta,
    "response.function_call_arguments.done": ResponsesStreamTranslator._on_args_done,
    "response.completed": ResponsesStreamTranslator._on_terminal,
    "response.incomplete": ResponsesStreamTranslator._on_terminal,
    "response.failed": ResponsesStreamTranslator._on_failed,
    "error": ResponsesStreamTranslator._on_error,
}
# Not listed, deliberately no-ops: response.created / .in_progress / .queued (nothing to say
# before content), content_part.added and reasoning_summary_part.added (empty parts), and
# every event of item types that are not content blocks (web_search_call, ...).
