"""Anthropic's web_search server tool over a provider's native web search (issue 14).

Pure and I/O-free. Claude Code's WebSearch sends a "side request" whose `tools` hold the server
tool `{"type":"web_search_20250305","name":"web_search",...}` and reads the reply's
`server_tool_use` / `web_search_tool_result` blocks and text. Here:

* `web_search_request(body)`: is this such a request, and what did it ask for (query, max_uses,
  allowed/blocked domains, user_location);
* `search_style(provider, model, api)`: which native search the upstream has (the Responses
  `web_search` tool, a Chat Completions search model's `web_search_options`, OpenRouter's `web`
  plugin) or None;
* `add_search_options(upstream_body, ...)`: the translated upstream body with that search on;
* `message_from_responses` / `message_from_chat`: the provider's reply (web_search_call items,
  url_citation annotations) -> an Anthropic Message with server_tool_use, web_search_tool_result
  (one web_search_result per distinct URL) and text blocks carrying web_search_result_location
  citations, plus usage.server_tool_use.web_search_requests;
* `WebSearchStream`: the same from a streamed reply (the text is split by the annotations that
  only arrive at its end, so the blocks are emitted once the reply is complete);
* `unavailable_message`: the honest answer when no native search is at hand.

Domain filters the provider cannot enforce are applied to the results and citations here.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .common import anthropic_message, random_id
from .errors import ProxyError, map_upstream_error
from .response import translate_response
from .responses_response import responses_error, translate_responses_response
from .stream import AnthropicEventStream, events_from_message

__all__ = [
    "WebSearchRequest",
    "web_search_request",
    "search_style",
    "is_chat_search_model",
    "add_search_options",
    "message_from_responses",
    "message_from_chat",
    "unavailable_message",
    "WebSearchStream",
    "SETTING_HINT",
]

TOOL_PREFIX = "web_search_"
QUERY_PREFIX = "Perform a web search for the query:"  # Claude Code's side-request wording
SETTING_HINT = ("set -web-search provider,model (CLASP_WEB_SEARCH) to a target with native web search, "
                "e.g. openai,gpt-5-mini or openrouter,openai/gpt-4o-mini")
# OpenAI Chat Completions models that search by themselves (web_search_options).
_CHAT_SEARCH_MARKERS = ("-search-preview", "-search-api")
_OPENROUTER_MAX_RESULTS = 5  # the web plugin's own default
_LOCATION_KEYS = ("country", "region", "city", "timezone")


@dataclass(frozen=True)
class WebSearchRequest:
    """What a web-search request asks for."""
    query: str                             # the user's query (Claude Code's side-request text)
    max_uses: int | None = None
    allowed_domains: tuple[str, ...] = ()
    blocked_domains: tuple[str, ...] = ()
    user_location: dict | None = None      # {"country","region","city","timezone"} present ones


def _domains(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for d in value:
        if isinstance(d, str) and d.strip():
            d = d.strip().lower()
            if "://" in d:
                d = urlsplit(d).hostname or ""
            d = d.split("/", 1)[0].lstrip(".")
            if d:
                out.append(d)
    return tuple(out)


def _user_query(body: dict) -> str:
    """The text of the last user message, without Claude Code's "Perform a web search..." lead."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = " ".join(b.get("text", "") for b in content
                            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
        else:
            text = ""
        text = text.strip()
        if text.startswith(QUERY_PREFIX):
            text = text[len(QUERY_PREFIX):].strip()
        return text
    return ""


def web_search_request(body: dict) -> WebSearchRequest | None:
    """The web search a request asks for: its `tools` hold a web_search_* server tool (whatever
    the model); None otherwise."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if isinstance(kind, str) and kind.startswith(TOOL_PREFIX):
            max_uses = tool.get("max_uses")
            if not isinstance(max_uses, int) or isinstance(max_uses, bool) or max_uses < 1:
                max_uses = None
            loc = tool.get("user_location")
            location = None
            if isinstance(loc, dict):
                location = {k: loc[k] for k in _LOCATION_KEYS if isinstance(loc.get(k), str) and loc[k]} or None
            return WebSearchRequest(_user_query(body), max_uses, _domains(tool.get("allowed_domains")),
                                    _domains(tool.get("blocked_domains")), location)
    return None


def is_chat_search_model(model: str) -> bool:
    """gpt-4o-search-preview, gpt-4o-mini-search-preview, gpt-5-search-api, ... (dated too)."""
    low = model.lower().rsplit("/", 1)[-1]
    return any(m in low for m in _CHAT_SEARCH_MARKERS)


def search_style(provider: str, model: str, api: str) -> str | None:
    """The native search an upstream has: "responses" (OpenAI Responses `web_search` tool),
    "chat" (a Chat Completions search model's `web_search_options`), "openrouter" (the `web`
    plugin, any model, either API), or None (Ollama, vLLM, most custom servers, Azure)."""
    if provider == "openrouter":
        return "openrouter"
    if provider == "openai":
        if is_chat_search_model(model):
            return "chat"
        if api == "responses":
            return "responses"
    return None


# ---------------------------------------------------------------------------------------------
# Request side

def add_search_options(upstream: dict, style: str, api: str, search: WebSearchRequest) -> dict:
    """The translated upstream body (chat or responses shape) with the provider's search on.
    Returns a new dict; `upstream` is not changed."""
    body = dict(upstream)
    loc = search.user_location
    if style == "responses":
        tool: dict = {"type": "web_search"}
        if search.allowed_domains:
            tool["filters"] = {"allowed_domains": list(search.allowed_domains)}
        if loc:
            tool["user_location"] = {"type": "approximate", **loc}
        body["tools"] = [tool]
        body["tool_choice"] = "auto"
        body.pop("parallel_tool_calls", None)
        if search.max_uses:
            body["max_tool_calls"] = search.max_uses
        # the sources the search read, beyond the cited ones (web_search_call.action.sources)
        body["include"] = [*[i for i in body.get("include") or () if i != "web_search_call.action.sources"],
                           "web_search_call.action.sources"]
    elif style == "chat":
        # search models take no tools and no sampling parameters
        for key in ("tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
                    "presence_penalty", "frequency_penalty", "n", "logprobs", "top_logprobs", "reasoning_effort"):
            body.pop(key, None)
        options: dict = {}
        if loc:
            options["user_location"] = {"type": "approximate", "approximate": dict(loc)}
        body["web_search_options"] = options
    elif style == "openrouter":
        body["plugins"] = [{"id": "web", "max_results": _OPENROUTER_MAX_RESULTS}]
    else:
        raise ValueError(f"unknown web search style {style!r}")
    return body


# ---------------------------------------------------------------------------------------------
# Reply side

def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _matches(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def domain_allowed(url: str, search: WebSearchRequest) -> bool:
    """The request's allowed_domains / blocked_domains (subdomains included) applied to a URL."""
    if not search.allowed_domains and not search.blocked_domains:
        return True
    host = _host(url)
    if search.allowed_domains and not _matches(host, search.allowed_domains):
        return False
    return not _matches(host, search.blocked_domains)


def _token(kind: str, text: str) -> str:
    """An opaque token for encrypted_content / encrypted_index (Claude Code keeps neither)."""
    return base64.b64encode(f"clasp:{kind}:{text}".encode("utf-8")).decode("ascii")


@dataclass
class _Citation:
    start: int
    end: int
    url: str
    title: str
    cited: str = ""        # the provider's quoted content, when it gives one (OpenRouter)


def _citation(obj: Any) -> _Citation | None:
    """A url_citation annotation, Responses (flat) or Chat Completions ({"url_citation": {...}})."""
    if not isinstance(obj, dict) or obj.get("type") != "url_citation":
        return None
    inner = obj.get("url_citation")
    data = inner if isinstance(inner, dict) else obj
    url = data.get("url")
    if not isinstance(url, str) or not url:
        return None
    title = data.get("title")
    start, end = data.get("start_index"), data.get("end_index")
    content = data.get("content")
    return _Citation(start if isinstance(start, int) and not isinstance(start, bool) else -1,
                     end if isinstance(end, int) and not isinstance(end, bool) else -1,
                     url, title if isinstance(title, str) and title else "",
                     content if isinstance(content, str) else "")


def _cited_blocks(text: str, citations: list[_Citation], search: WebSearchRequest) -> list[dict]:
    """Text split at its annotations: plain text blocks, and text blocks whose `citations`
    hold the web_search_result_location of each annotation covering them."""
    usable = sorted((c for c in citations if 0 <= c.start < c.end <= len(text) and domain_allowed(c.url, search)),
                    key=lambda c: (c.start, c.end))
    segments: list[tuple[str, list[dict]]] = []
    pos = 0
    for c in usable:
        loc = {"type": "web_search_result_location", "cited_text": c.cited or text[c.start:c.end],
               "url": c.url, "title": c.title or c.url, "encrypted_index": _token("i", f"{c.start}:{c.url}")}
        if c.start < pos:  # overlaps the previous cited span: cite it there too
            if segments and segments[-1][1]:
                segments[-1][1].append(loc)
            continue
        if c.start > pos:
            segments.append((text[pos:c.start], []))
        segments.append((text[c.start:c.end], [loc]))
        pos = c.end
    if pos < len(text):
        segments.append((text[pos:], []))
    blocks: list[dict] = []
    carry = ""
    for seg, cites in segments:
        if not cites and not seg.strip():
            if blocks and "citations" not in blocks[-1]:
                blocks[-1]["text"] += seg
            else:
                carry += seg  # never an empty/whitespace-only block (PROTOCOL §2.2)
            continue
        block: dict = {"type": "text", "text": carry + seg}
        carry = ""
        if cites:
            block["citations"] = cites
        blocks.append(block)
    if carry and blocks:
        blocks[-1]["text"] += carry
    return blocks


class _Builder:
    """Collects the searches and text of one reply, in order, then builds its content."""

    def __init__(self, search: WebSearchRequest) -> None:
        self.search = search
        self.blocks: list[dict] = []
        self.searches = 0
        self.titles: dict[str, str] = {}
        self.open_results: list[dict] | None = None   # results of the last search with no sources

    def add_search(self, query: str, sources: list[tuple[str, str]] | None) -> None:
        tool_id = random_id("srvtoolu_")
        self.searches += 1
        self.blocks.append({"type": "server_tool_use", "id": tool_id, "name": "web_search",
                            "input": {"query": query or self.search.query}})
        results: list[dict] = []
        for url, title in sources or ():
            self._add_result(results, url, title)
        self.blocks.append({"type": "web_search_tool_result", "tool_use_id": tool_id, "content": results})
        # a search that named no sources gets the URLs its answer cites
        self.open_results = results if sources is None else None

    def _add_result(self, results: list[dict], url: str, title: str) -> None:
        if not domain_allowed(url, self.search) or any(r["url"] == url for r in results):
            return
        results.append({"type": "web_search_result", "url": url, "title": title or self.titles.get(url) or url,
                        "encrypted_content": _token("c", url), "page_age": None})

    def add_text(self, text: str, citations: list[_Citation]) -> None:
        for c in citations:
            if c.title:
                self.titles.setdefault(c.url, c.title)
        for block in self.blocks:  # titles the sources lacked, now that the citations name them
            if block["type"] == "web_search_tool_result":
                for r in block["content"]:
                    if r["title"] == r["url"] and r["url"] in self.titles:
                        r["title"] = self.titles[r["url"]]
        if self.open_results is not None:
            for c in citations:
                self._add_result(self.open_results, c.url, c.title)
        if text.strip():
            self.blocks.extend(_cited_blocks(text, citations, self.search))


def _with_search(message: dict, builder: _Builder) -> dict:
    kept = [b for b in message["content"] if b.get("type") != "text"]  # thinking, if shown
    message["content"] = kept + builder.blocks
    usage = dict(message.get("usage") or {})
    usage["server_tool_use"] = {"web_search_requests": builder.searches}
    message["usage"] = usage
    return message


def _responses_search(item: dict) -> tuple[str, list[tuple[str, str]] | None] | None:
    """(query, sources or None) of a web_search_call item that searched; None for open_page / find."""
    action = item.get("action")
    if not isinstance(action, dict):
        return "", None
    kind = action.get("type")
    if kind not in (None, "search"):
        return None
    query = action.get("query")
    if not isinstance(query, str) or not query:
        queries = action.get("queries")
        query = next((q for q in queries if isinstance(q, str) and q), "") if isinstance(queries, list) else ""
    raw = action.get("sources")
    sources = None
    if isinstance(raw, list):
        sources = [(s["url"], s.get("title") if isinstance(s.get("title"), str) else "")
                   for s in raw if isinstance(s, dict) and isinstance(s.get("url"), str) and s["url"]]
    return query, sources or None


def message_from_responses(data: dict, ctx: Any, caps: Any, search: WebSearchRequest) -> dict:
    """A Responses API response with web_search_call items and url_citation annotations ->
    Anthropic Message. Raises ProxyError as translate_responses_response does."""
    message = translate_responses_response(data, ctx, caps)
    builder = _Builder(search)
    output = data.get("output") if isinstance(data.get("output"), list) else []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "web_search_call":
            found = _responses_search(item)
            if found is not None:
                builder.add_search(*found)
        elif kind == "message":
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if not isinstance(part, dict):
                    continue
                text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
                if not isinstance(text, str):
                    continue
                anns = part.get("annotations")
                citations = [c for c in map(_citation, anns if isinstance(anns, list) else ()) if c]
                if not builder.searches and citations:  # OpenRouter's plugin: no search items
                    builder.add_search(search.query, None)
                builder.add_text(text, citations)
    return _with_search(message, builder)


def message_from_chat(data: dict, ctx: Any, caps: Any, search: WebSearchRequest) -> dict:
    """A Chat Completions answer of a search model or OpenRouter's web plugin (annotations on
    the message) -> Anthropic Message with one search. Raises ProxyError as translate_response."""
    message = translate_response(data, ctx, caps)
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    anns = msg.get("annotations")
    citations = [c for c in map(_citation, anns if isinstance(anns, list) else ()) if c]
    text = "".join(b["text"] for b in message["content"] if b.get("type") == "text")
    builder = _Builder(search)
    builder.add_search(search.query, None)
    builder.add_text(text, citations)
    return _with_search(message, builder)


def unavailable_message(requested_model: str, search: WebSearchRequest, reason: str,
                        estimated_input_tokens: int = 0) -> dict:
    """The honest reply without native search: a web_search_tool_result error `unavailable`
    (Claude Code shows "Web search error: unavailable") and a text naming the setting."""
    tool_id = random_id("srvtoolu_")
    return anthropic_message(requested_model, [
            {"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": search.query}},
            {"type": "web_search_tool_result", "tool_use_id": tool_id,
             "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"}},
            {"type": "text", "text": f"Web search is not available through clasp: {reason}. To enable it, "
                                     f"{SETTING_HINT}."},
        ], "end_turn", None,
        {"input_tokens": estimated_input_tokens, "output_tokens": 0, "cache_read_input_tokens": 0,
         "cache_creation_input_tokens": 0, "server_tool_use": {"web_search_requests": 0}})


# ---------------------------------------------------------------------------------------------
# Streaming

class WebSearchStream(AnthropicEventStream):
    """A streamed search reply (Responses events or Chat Completions chunks) -> Anthropic events.

    Citations must precede the text they cite and results precede the answer, but providers send
    the annotations (and, for chat, the only trace of the search) after the text: the reply is
    collected and its blocks emitted, in the fixture's order, once it is complete. The relay
    meanwhile keeps the client's connection alive with pings."""

    def __init__(self, ctx: Any, caps: Any, search: WebSearchRequest, api: str, *,
                 provider: str = "upstream") -> None:
        self._init_events(ctx, caps, None, provider)
        self.search = search
        self.api = api
        self.usage: dict | None = None
        self._items: dict[int, dict] = {}      # responses: output_index -> finished item
        self._text: list[str] = []             # chat: content pieces
        self._annotations: list = []           # chat: url_citation annotations
        self._chat_id = ""

    def start(self) -> list[dict]:
        if self.started:
            return []
        self.started = True
        return [self._message_start({"input_tokens": self._estimated_input, "output_tokens": 1,
                                     "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}),
                {"type": "ping"}]

    def _tool_complete(self, tool: Any) -> bool:
        return True  # no tool blocks are left open

    def _emit(self, message: dict) -> list[dict]:
        self.usage = message["usage"]
        self.done = True
        return events_from_message(message)

    def _fail(self, err: ProxyError) -> list[dict]:
        return self.fail(err)

    def feed(self, chunk: dict) -> list[dict]:
        if self.done:
            return []
        out: list[dict] = [] if self.started else self.start()
        if not isinstance(chunk, dict):
            return out
        if self.api == "responses":
            out.extend(self._feed_responses(chunk))
        else:
            out.extend(self._feed_chat(chunk))
        return out

    def _feed_responses(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "response.output_item.done":
            item, index = event.get("item"), event.get("output_index")
            if isinstance(item, dict):
                self._items[index if isinstance(index, int) else len(self._items)] = item
            return []
        if kind in ("response.completed", "response.incomplete"):
            resp = event.get("response")
            resp = dict(resp) if isinstance(resp, dict) else {}
            if not resp.get("output") and self._items:
                resp["output"] = [self._items[k] for k in sorted(self._items)]
            self._finish_reason = resp.get("status") or "completed"
            self._raw_usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
            try:
                return self._emit(message_from_responses(resp, self.ctx, self.caps, self.search))
            except ProxyError as err:
                return self._fail(err)
        if kind == "response.failed":
            resp = event.get("response")
            err = resp.get("error") if isinstance(resp, dict) else None
            self._finish_reason = "failed"
            return self._fail(responses_error(err, self.provider, self.ctx))
        if kind == "error":
            err = event.get("error")
            if not isinstance(err, dict):
                err = {k: event[k] for k in ("code", "message", "param") if k in event}
            self._finish_reason = "error"
            return self._fail(responses_error(err, self.provider, self.ctx, "upstream stream error"))
        return []

    def _feed_chat(self, chunk: dict) -> list[dict]:
        err = chunk.get("error")
        if err:
            body = json.dumps({"error": err}, default=str).encode("utf-8")
            return self._fail(map_upstream_error(200, {}, body, self.provider, self.ctx))
        if isinstance(chunk.get("id"), str):
            self._chat_id = chunk["id"]
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            self._raw_usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []
        choice = choices[0]
        for key in ("delta", "message"):
            delta = choice.get(key)
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self._text.append(content)
                anns = delta.get("annotations")
                if isinstance(anns, list):
                    self._annotations.extend(anns)
        fr = choice.get("finish_reason")
        if isinstance(fr, str) and fr:
            self._finish_reason = fr
        return []

    def finish(self) -> list[dict]:
        """[DONE] / end of the body: the collected reply as blocks, message_delta, message_stop."""
        if self.done:
            return []
        out: list[dict] = [] if self.started else self.start()
        if self.api == "responses" or self._finish_reason is None:
            out.extend(self.fail({"type": "api_error", "message": f"{self.provider}: upstream stream ended "
                                                                  f"before the answer was complete"}))
            return out
        data = {"id": self._chat_id,
                "choices": [{"index": 0, "finish_reason": self._finish_reason,
                             "message": {"role": "assistant", "content": "".join(self._text),
                                         "annotations": self._annotations}}],
                "usage": self._raw_usage}
        try:
            out.extend(self._emit(message_from_chat(data, self.ctx, self.caps, self.search)))
        except ProxyError as err:
            out.extend(self._fail(err))
        return out
