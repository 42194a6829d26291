"""POST /v1/messages, composed in order (auth happened at dispatch):

    rate limit (global, then the key's) -> parse -> route -> access (model allowed, budget)
               -> web search? (its own branch: web_search.py)
               -> chain (cache, queue, breaker, retries, fallback)
               -> relay (translate the whole response, or the stream as it arrives)
               -> spend (tokens and cost booked per key, model and target)
"""

from __future__ import annotations

import asyncio
from typing import Callable

from clasp.ops.access import allowed_routes
from clasp.ops.auth import ANONYMOUS
from clasp.ops.logs import AccessLog, DebugLog
from clasp.ops.metrics import NOT_ROUTED, Metrics
from clasp.pipeline.chain import UpstreamChain, routes_for
from clasp.pipeline.exchange import CachedResponse, Exchange
from clasp.pipeline.relay import Relay, book_route, send_cached
from clasp.pipeline.web_search import WebSearch, web_search_request
from clasp.pipeline.wire import invalid, parse_body, send_error
from clasp.routing.providers import Router
from clasp.server.http import Request, Responder
from clasp.translate.common import random_id
from clasp.translate.errors import InvalidRequest, ProxyError


class MessagesPipeline:
    def __init__(self, *, clock: Callable[[], float], router: Router, chain: UpstreamChain, relay: Relay,
                 metrics: Metrics, limiter=None, access_log: AccessLog | None = None,
                 debug_log: DebugLog | None = None, access=None, spend=None,
                 web_search: WebSearch | None = None) -> None:
        """``access``: per-key enforcement (clasp.ops.access.AccessControl); ``spend``: the
        SpendLedger booking each answered request; ``web_search``: the web-search branch."""
        self.clock = clock
        self.router = router
        self.chain = chain
        self.relay = relay
        self.metrics = metrics
        self.limiter = limiter
        self.access_log = access_log
        self.debug_log = debug_log
        self.access = access
        self.spend = spend
        self.web_search = web_search

    async def handle(self, req: Request, resp: Responder, client_id: str, *, consume: bool = False,
                     key=None) -> None:
        """consume=True (the server's own Request): req.body is released once parsed. ``key``: the
        client's ApiKey (its limits, models and budgets), None for none."""
        ex = Exchange(started=self.clock())
        ex.key = key.name if key is not None else ""
        request_id = random_id("req_")
        metrics = self.metrics
        metrics.active_requests += 1
        try:
            await self._run(req, resp, client_id, ex, request_id, consume, key)
        except ProxyError as err:
            ex.status = err.status
            ex.error_type, ex.error_message = err.error_type, err.message
            if not resp.started:
                await send_error(resp, err, request_id)
        except asyncio.CancelledError:
            if resp.interrupted:  # shutdown: a 529, or a stream's final overloaded_error event
                ex.status = 529
            elif not resp.finished:  # the server also cancels once a finished client hangs up
                ex.status = 499  # client closed the connection
            raise
        except Exception:
            if not resp.started:
                ex.status = 500  # the server answers 500: never count it as a success
            raise
        finally:
            metrics.active_requests -= 1
            self._record(req, ex)

    async def _run(self, req: Request, resp: Responder, client_id: str, ex: Exchange,
                   request_id: str, consume: bool, key=None) -> None:
        # rate limit
        extra_headers: list[tuple[str, str]] = [("request-id", request_id)]
        if self.limiter is not None:
            extra_headers.extend(await self.limiter.admit(client_id))
        access = self.access
        if access is not None and key is not None and key.rate_limit:
            extra_headers.extend(await access.admit(key))
        # parse
        if self.debug_log:
            self.debug_log.incoming_request(req.body, req.headers)
        try:
            body = parse_body(req.body)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("model: field required")
        except InvalidRequest as e:
            raise invalid(str(e)) from None
        if consume:
            req.body = b""  # ~50 KB per request that a long stream would otherwise pin
        ex.requested_model = model
        ex.stream = body.get("stream") is True
        # route
        routes = routes_for(self.router, model)
        # access: the key may use this model (some of its routes) and has budget left
        if access is not None and key is not None:
            routes = allowed_routes(key, model, routes)
            await access.check_budget(key)
        # web search: Anthropic's web_search server tool (Claude Code's WebSearch) goes to a
        # target with native search, or gets an honest "unavailable"
        if self.web_search is not None:
            search = web_search_request(body)
            if search is not None:
                box = [body]
                body = None
                await self.web_search.handle(box, search, resp, ex, extra_headers)
                return
        # chain: cache, queue, breaker, retries, fallback.
        # The parsed client body (~120 KB for a Claude Code request) is handed over in a box
        # that the chain empties once every route is translated: with hundreds of concurrent
        # streams it must not be held while waiting for the upstream, or for a whole stream.
        box = [body]
        body = None
        outcome = await self.chain.obtain(box, routes, ex)
        if isinstance(outcome, CachedResponse):
            await send_cached(resp, ex, outcome, extra_headers)
            return
        route, ctx, caps, upstream, cache_key = outcome
        book_route(ex, route, cache_key, extra_headers)
        # relay
        is_sse = "text/event-stream" in upstream.headers.get("content-type", "")
        if ex.stream and is_sse:
            self.metrics.active_streams += 1
            try:
                await self.relay.stream(upstream, resp, ctx, caps, ex, extra_headers, route.api)
            finally:
                self.metrics.active_streams -= 1
        else:
            await self.relay.whole(upstream, resp, ctx, caps, ex, extra_headers, cache_key, route.api)

    def _record(self, req: Request, ex: Exchange) -> None:
        latency = self.clock() - ex.started
        # Only a routed request (the chain chose a target for it, or the cache answered) is counted
        # under its requested name: a request rejected before that is no series of its own.
        model = ex.requested_model if ex.provider and ex.requested_model else NOT_ROUTED
        self.metrics.record_request(provider=ex.provider or NOT_ROUTED, model=model,
                                    status=ex.status, streaming=ex.stream, tool_calls=ex.tool_calls,
                                    latency_s=latency, ttft_s=ex.ttft, input_tokens=ex.input_tokens,
                                    output_tokens=ex.output_tokens, cache=ex.cache.lower() or None,
                                    api=ex.api, upstream_model=ex.upstream_model,
                                    error_type=ex.error_type, error_message=ex.error_message)
        spend, cost = self.spend, None
        if spend is not None and ex.upstream_model and ex.cache != "HIT" and (ex.input_tokens or ex.output_tokens):
            cost = spend.record(ex.key or ANONYMOUS, ex.provider, ex.upstream_model,
                                ex.input_tokens - ex.cached_tokens, ex.cached_tokens, ex.output_tokens)
        if self.access_log is not None:
            self.access_log.log(method=req.method, path=req.path, status=ex.status, model=ex.requested_model,
                                upstream_model=ex.upstream_model, provider=ex.provider,
                                latency_ms=round(latency * 1000, 1),
                                ttft_ms=None if ex.ttft is None else round(ex.ttft * 1000, 1),
                                input_tokens=ex.input_tokens, output_tokens=ex.output_tokens,
                                cache=ex.cache or "-", key=ex.key or None,
                                cost_usd=None if cost is None else f"{cost:.6f}".rstrip("0").rstrip("."))
