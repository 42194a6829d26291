"""The web-search branch of POST /v1/messages (issue 14): a request whose tools hold Anthropic's
web_search server tool (Claude Code's WebSearch side request) goes to a target with native web
search, with that search turned on, and its reply becomes server_tool_use /
web_search_tool_result blocks and cited text (translate/web_search.py).

Where it goes (`search_route`, which `clasp doctor` reports too): the web-search target
(-web-search provider,model / CLASP_WEB_SEARCH), else the request's own target when its provider
searches natively (OpenAI's own API on the Responses dialect, whatever the request's dialect).
Without either the client gets an honest `unavailable` search result naming the setting, without
any upstream call, and the log one warning.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from clasp.config import APIS, PROVIDERS, Config, ConfigError
from clasp.pipeline.chain import UpstreamChain, routes_for
from clasp.pipeline.exchange import CachedResponse, Exchange
from clasp.pipeline.relay import SSE_HEADERS, Relay, book_route, send_cached
from clasp.pipeline.wire import JSON_HEADER, json_bytes
from clasp.routing.providers import Route, Router, Target
from clasp.server.http import Responder
from clasp.translate.sse import encode_events
from clasp.translate.stream import events_from_message
from clasp.translate.tokens import estimate_tokens

if TYPE_CHECKING:
    from clasp.translate.web_search import WebSearchRequest

# clasp.translate.web_search (the search translators, with the Responses API's) is imported when a
# search is configured or first asked for: a proxy that never sees one does not load it.

log = logging.getLogger("clasp")
# OpenAI's own API, where every chat model can search through the Responses API's web_search tool
OPENAI_API_HOST = "api.openai.com"

__all__ = ["WebSearch", "configured_search_route", "search_route", "unavailable_reason", "web_search_request"]


def web_search_request(body: dict) -> WebSearchRequest | None:
    """clasp.translate.web_search.web_search_request (the search a request asks for, or None), which
    is imported on the first request with a server tool: a request whose tools are all client
    tools (none has a "type", as Claude Code's own) cannot ask for a search."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not any(isinstance(t, dict) and "type" in t for t in tools):
        return None
    from clasp.translate.web_search import web_search_request as find
    return find(body)


def configured_search_route(router: Router, value: str) -> tuple[Route, str]:
    """-web-search "provider,model" (provider may be "provider@api") -> (route, search style)."""
    from clasp.translate.web_search import is_chat_search_model, search_style
    head, comma, model = value.partition(",")
    provider, at, api = head.strip().partition("@")
    model = model.strip()
    if not comma or provider not in PROVIDERS or not model or (at and api not in APIS):
        raise ConfigError(f"web search target must be 'provider,model' (provider one of {', '.join(PROVIDERS)}, "
                          f"optionally provider@api), got {value!r} (CLASP_WEB_SEARCH / -web-search)")
    if provider == "openai" and not api and not is_chat_search_model(model):
        api = "responses"  # OpenAI's web_search tool exists only in the Responses API
    try:
        route = router.route_to(provider, model, api)
    except ConfigError as e:
        raise ConfigError(f"CLASP_WEB_SEARCH: {e}") from None
    style = search_style(provider, model, route.api)
    if style is None and route.api == "responses":
        style = "responses"  # a Responses server the user says has the web_search tool
    if style is None:
        raise ConfigError(f"CLASP_WEB_SEARCH: {provider} model {model!r} has no native web search clasp can use "
                          f"(openai with the Responses API or a -search- chat model, openrouter, or a "
                          f"provider@responses server with the web_search tool)")
    return route, style


def _is_openai_api(target: Target) -> bool:
    """OpenAI's own API, not another OpenAI-compatible server behind OPENAI_BASE_URL (or a tier's
    or the fallback's base URL), which may have no /v1/responses."""
    return urlsplit(target.responses_url).hostname == OPENAI_API_HOST


def own_search(route: Route) -> tuple[Route, str | None]:
    """The native search of a request's own route and its style (None: it has none)."""
    from clasp.translate.web_search import search_style
    style = search_style(route.target.provider, route.model, route.api)
    if style is None and route.target.provider == "openai" and route.api == "chat" and _is_openai_api(route.target):
        # OpenAI searches with any chat model through the Responses API's web_search tool: the
        # same target (its key, the Responses URL under its base URL) and model on that dialect
        return replace(route, api="responses"), "responses"
    return route, style


def search_route(router: Router, target: tuple[Route, str] | None, requested: str) -> tuple[Route, str | None]:
    """Where a web search for the requested model goes and its search style (None: nowhere, the
    answer is "unavailable"): the -web-search `target`, else the request's own primary route."""
    if target is not None:
        return target
    return own_search(routes_for(router, requested)[0])


def unavailable_reason(route: Route) -> str:
    """Why a route cannot search (own_search gave no style), for the reply, the log and the doctor."""
    if route.target.provider == "openai":
        host = urlsplit(route.target.url).hostname
        return (f"openai model {route.model!r} on Chat Completions has no web search, and the base URL's host "
                f"{host} is not {OPENAI_API_HOST} (OpenAI searches on its own Responses API and with its "
                f"-search- chat models)")
    if route.target.provider == "azure":
        return f"azure deployment {route.model!r} has no native web search (Azure's Responses API has no web_search tool)"
    return f"{route.target.provider} model {route.model!r} has no native web search"


class WebSearch:
    def __init__(self, cfg: Config, router: Router, chain: UpstreamChain, relay: Relay) -> None:
        self.router = router
        self.chain = chain
        self.relay = relay
        self.target = configured_search_route(router, cfg.web_search) if cfg.web_search else None
        self._warned = False

    def _route(self, requested: str) -> tuple[Route, str | None]:
        """The route a web search goes to and its search style (None: no native search)."""
        return search_route(self.router, self.target, requested)

    async def handle(self, box: list[dict], search: WebSearchRequest, resp: Responder, ex: Exchange,
                     headers: list[tuple[str, str]]) -> None:
        """Answer one web-search request. `box` holds the parsed client body (emptied once translated)."""
        from clasp.translate.web_search import (
            WebSearchStream, add_search_options, message_from_chat, message_from_responses)
        route, style = self._route(ex.requested_model)
        if style is None:
            await self._unavailable(box, search, route, resp, ex, headers)
            return

        def shape(upstream_body: dict, r: Route) -> dict:
            return add_search_options(upstream_body, style, r.api, search)

        outcome = await self.chain.obtain(box, [route], ex, shape)  # no fallback: it may not search
        if isinstance(outcome, CachedResponse):
            await send_cached(resp, ex, outcome, headers)
            return
        route, ctx, caps, upstream, cache_key = outcome
        headers = list(headers)
        book_route(ex, route, cache_key, headers)
        api = route.api
        if ex.stream and "text/event-stream" in upstream.headers.get("content-type", ""):
            translator = WebSearchStream(ctx, caps, search, api, provider=route.target.name)
            await self.relay.stream(upstream, resp, ctx, caps, ex, headers, api, translator=translator)
            return
        translate = message_from_responses if api == "responses" else message_from_chat
        await self.relay.whole(upstream, resp, ctx, caps, ex, headers, cache_key, api,
                               translate=lambda data: translate(data, ctx, caps, search))

    async def _unavailable(self, box: list[dict], search: WebSearchRequest, route: Route, resp: Responder,
                           ex: Exchange, headers: list[tuple[str, str]]) -> None:
        from clasp.translate.web_search import SETTING_HINT, unavailable_message
        reason = unavailable_reason(route)
        if not self._warned:
            self._warned = True
            log.warning("web search requested, but %s; answering \"unavailable\" without calling the upstream. "
                        "To enable it, %s", reason, SETTING_HINT)
        message = unavailable_message(ex.requested_model, search, reason, estimate_tokens(box[0]))
        box.clear()
        ex.provider, ex.upstream_model, ex.api = route.target.name, route.model, route.api
        ex.status = 200
        ex.book(message["usage"], 0)
        headers = [*headers, ("x-clasp-provider", route.target.name)]
        if ex.stream:
            start = {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}
            await resp.start(200, [*SSE_HEADERS, *headers])
            resp.write(encode_events([start, {"type": "ping"}, *events_from_message(message)]))
            await resp.end()
            return
        await resp.send(200, [JSON_HEADER, *headers], json_bytes(message))
