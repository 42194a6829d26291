"""The request pipeline, composed in one place.

    auth -> rate limit -> parse -> cache -> route -> queue / breaker / retry / fallback
         -> upstream -> translate (whole response or relayed stream)

Everything protocol-shaped lives in clasp.translate; this module only moves bytes between the
HTTP server, the upstream client and the translators, and keeps the books (metrics, logs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from clasp import __version__
from clasp.config import Config, ConfigError, parse_model_flags
from clasp.ops.auth import AuthPolicy
from clasp.ops.logs import AccessLog, DebugLog
from clasp.ops.memory import IdleTrimmer, resident_bytes
from clasp.ops.metrics import Metrics
from clasp.redaction import drop_secrets, secret_variants
from clasp.resilience.breaker import CircuitBreaker
from clasp.resilience.queue import QueueFull, QueueTimeout, RequestQueue
from clasp.resilience.retry import RetryPolicy
from clasp.routing.providers import Route, Router, Target
from clasp.server.http import Request, Responder
from clasp.translate.capabilities import Capabilities, capabilities_for
from clasp.translate.common import random_id
from clasp.translate.errors import (InvalidRequest, ProxyError, error_response,
                                    map_transport_error, map_upstream_error)
from clasp.translate.request import RequestContext, translate_request
from clasp.translate.response import translate_response
from clasp.translate.schema import encoded_tools
from clasp.translate.sse import SSEParser, encode_event, encode_events
from clasp.translate.stream import StreamTranslator, events_from_message
from clasp.translate.tokens import estimate_tokens
from clasp.upstream.client import UpstreamClient, UpstreamError, UpstreamResponse

log = logging.getLogger("clasp")

_JSON = ("content-type", "application/json")
_SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                ("x-accel-buffering", "no")]
_PING = encode_event({"type": "ping"})
_DONE = "[DONE]"
# Seconds of upstream silence after finish_reason (usage and [DONE] not yet seen) before the
# stream is finalized anyway (PROTOCOL §3.3).
_FINISH_GRACE_S = 5.0
# Statuses meaning "the provider is unavailable" (queue and fallback act on these).
_UNAVAILABLE = frozenset({408, 429, 500, 502, 503, 504, 529})


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _payload_bytes(body: dict) -> bytes:
    """_json_bytes(body) for an upstream request body, with the memoized JSON of its tools list
    spliced in (the same bytes; the ~30 KB of Claude Code tools is not re-serialized per turn)."""
    tools = body.get("tools")
    encoded = encoded_tools(tools) if isinstance(tools, list) and tools else None
    if encoded is None:
        return _json_bytes(body)
    before: dict = {}
    after: dict = {}
    part = before
    for key, value in body.items():
        if key == "tools":
            part = after
        else:
            part[key] = value
    parts = [b'"tools":' + encoded]
    if before:
        parts.insert(0, _json_bytes(before)[1:-1])
    if after:
        parts.append(_json_bytes(after)[1:-1])
    return b"{" + b",".join(parts) + b"}"


@dataclass
class Exchange:
    """Book-keeping of one /v1/messages request, for metrics and the access log."""
    started: float
    requested_model: str = ""
    upstream_model: str = ""
    provider: str = ""
    stream: bool = False
    status: int = 0
    ttft: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    cache: str = ""

    def book(self, usage: dict, tool_calls: int) -> None:
        """Token counts of an Anthropic usage object (cache reads count as input) and tool calls."""
        self.input_tokens = usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0)
        self.output_tokens = usage.get("output_tokens", 0)
        self.tool_calls = tool_calls


class App:
    """The proxy: one instance per process, shared by all connections."""

    def __init__(self, cfg: Config, *, clock=time.monotonic, log_stream: TextIO | None = None,
                 client: UpstreamClient | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.router = Router(cfg)
        self.client = client or UpstreamClient(connect_timeout=cfg.connect_timeout,
                                               read_timeout=cfg.read_timeout, pool_size=cfg.pool_size)
        self.auth = AuthPolicy(cfg.auth, cfg.auth_api_key, cfg.auth_allow_anonymous_health,
                               cfg.auth_allow_anonymous_metrics)
        self.limiter = None
        if cfg.rate_limit:
            from clasp.ops.ratelimit import RateLimiter
            self.limiter = RateLimiter(cfg.rate_limit_requests, cfg.rate_limit_window, cfg.rate_limit_burst,
                                       clock=clock)
        self.cache = None
        if cfg.cache:
            from clasp.ops.cache import ResponseCache
            self.cache = ResponseCache(cfg.cache_max_size, cfg.cache_ttl, clock=clock)
        self.retry = RetryPolicy(max_retries=cfg.max_retries, base_delay_s=cfg.retry_base_delay_ms / 1000)
        self.breakers: dict[str, CircuitBreaker] = {}
        if cfg.circuit_breaker:
            self.breakers = {name: CircuitBreaker(cfg.cb_threshold, cfg.cb_recovery, cfg.cb_timeout)
                             for name in self.router.targets}
        self.queue = (RequestQueue(cfg.queue_max_size, cfg.queue_max_wait, cfg.queue_retry_delay / 1000,
                                   cfg.queue_max_retries) if cfg.queue else None)
        self.metrics = Metrics(clock=clock)
        self.metrics.set_sources(
            breakers=(lambda: {name: b.state for name, b in self.breakers.items()}) if self.breakers else None,
            queue=(lambda: {"depth": self.queue.depth(), **self.queue.stats}) if self.queue else None,
            cache=self.cache.stats if self.cache is not None else None,
            memory=self._memory_stats)
        stream = log_stream or sys.stderr
        self.secrets = cfg.secrets()
        self._secret_variants = secret_variants(self.secrets)  # and their JSON-escaped forms
        self.access_log = AccessLog(stream, cfg.log_format, secrets=self.secrets) if cfg.access_log else None
        self.debug_log = (DebugLog(stream, cfg.debug_log_requests, cfg.debug_log_responses, self.secrets)
                          if cfg.debug_log_requests or cfg.debug_log_responses else None)
        self.model_flags = parse_model_flags(cfg.model_flags)
        try:  # fail at start-up, not on the first request
            capabilities_for(self.router.primary.provider, self.router.primary.default_model, self.model_flags)
        except ValueError as e:
            raise ConfigError(f"CLASP_MODEL_FLAGS: {e}") from None
        self._caps: dict[tuple[str, str], Capabilities] = {}
        self.trimmer = IdleTrimmer(cfg.memory_trim_after) if cfg.memory_trim_after > 0 else None
        self._housekeeping: asyncio.Future | None = None

    def _memory_stats(self) -> dict:
        return {"rss_bytes": resident_bytes(), "trims": self.trimmer.trims if self.trimmer is not None else 0}

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        await self.client.close()

    # ------------------------------------------------------------------ dispatch

    def start(self) -> None:
        """Start background housekeeping (inside the running event loop)."""
        if self.trimmer is not None and self._housekeeping is None:
            self._housekeeping = asyncio.ensure_future(self.trimmer.run())

    async def handle(self, req: Request, resp: Responder) -> None:
        """The server's handler."""
        trimmer = self.trimmer
        if trimmer is None:
            return await self._handle(req, resp)
        trimmer.started()
        try:
            await self._handle(req, resp)
        finally:
            trimmer.finished()

    async def _handle(self, req: Request, resp: Responder) -> None:
        """Every request gets one access line: /v1/messages writes its own (model, tokens, TTFT,
        cache); everything else, rejections included, is logged here."""
        started = self.clock()
        client_id: str | None = None
        cancelled = False
        try:
            client_id = await self._dispatch(req, resp)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if client_id is None and self.access_log is not None:
                self.access_log.log(method=req.method, path=req.path,
                                    status=resp.status or (499 if cancelled else 500),
                                    latency_ms=round((self.clock() - started) * 1000, 1))
        if client_id is not None:
            await self.messages(req, resp, client_id, consume=True)

    async def _dispatch(self, req: Request, resp: Responder) -> str | None:
        """Route by path (query ignored, base-URL prefixes tolerated) and answer everything but an
        authorized /v1/messages, for which the client identity (rate-limit key) is returned."""
        path = req.path.rstrip("/") or "/"
        if path.endswith("/v1/messages"):
            endpoint, methods = "/v1/messages", ("POST",)
        elif path.endswith("/v1/messages/count_tokens"):
            endpoint, methods = "/v1/messages/count_tokens", ("POST",)
        elif path == "/":
            endpoint, methods = "/", ("GET", "HEAD")
        elif path in ("/health", "/metrics", "/metrics/prometheus"):
            endpoint, methods = path, ("GET", "HEAD")
        elif path.endswith("/v1/models"):
            endpoint, methods = "/v1/models", ("GET", "HEAD")
        else:
            await self._error(resp, ProxyError(404, "not_found_error", f"no such endpoint: {req.path}",
                                               {"x-should-retry": "false"}, False))
            return None
        if req.method not in methods:
            err = ProxyError(405, "invalid_request_error",
                             f"method {req.method} not allowed on {endpoint} (use {', '.join(methods)})",
                             {"allow": ", ".join(methods), "x-should-retry": "false"}, False)
            await self._error(resp, err)
            return None
        client_id = req.client
        if self.auth.requires_auth(endpoint):
            identity = self.auth.check(req.headers)
            if identity is None:
                await self._error(resp, ProxyError(401, "authentication_error", "invalid or missing API key "
                                                   "(send it as x-api-key or Authorization: Bearer)",
                                                   {"x-should-retry": "false"}, False))
                return None
            client_id = identity
        if endpoint == "/v1/messages":
            return client_id
        if endpoint == "/v1/messages/count_tokens":
            await self.count_tokens(req, resp)
        elif endpoint == "/":
            await self._send_json(resp, 200, self.info())
        elif endpoint == "/health":
            await self._send_json(resp, 200, {"status": "ok", "version": __version__,
                                              "provider": self.router.primary.name})
        elif endpoint == "/metrics":
            data = self.metrics.to_json()
            if self.cfg.workers > 1:  # each worker process counts its own requests
                data["worker"] = {"pid": os.getpid(), "workers": self.cfg.workers}
            await self._send_json(resp, 200, data)
        elif endpoint == "/metrics/prometheus":
            await resp.send(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                            self.metrics.to_prometheus().encode())
        else:
            await self._send_json(resp, 200, self.models())
        return None

    def info(self) -> dict:
        return {"name": "clasp", "version": __version__, "provider": self.router.primary.name,
                "model": self.router.primary.default_model or None,
                "endpoints": ["POST /v1/messages", "POST /v1/messages/count_tokens", "GET /health",
                              "GET /metrics", "GET /metrics/prometheus", "GET /v1/models", "GET /"]}

    def models(self) -> dict:
        names = ["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"]
        data = []
        for name in names:
            route = self.router.resolve(name)[0]
            data.append({"type": "model", "id": name, "display_name": f"{name} -> {route.model}",
                         "created_at": "2025-01-01T00:00:00Z"})
        return {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}

    async def count_tokens(self, req: Request, resp: Responder) -> None:
        try:
            body = self._parse_body(req.body)
            if not isinstance(body.get("messages"), list):
                raise InvalidRequest("messages: field required (a list of messages)")
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise InvalidRequest("model: field required")
            tokens = estimate_tokens(body)
        except InvalidRequest as e:
            await self._error(resp, _invalid(str(e)))
            return
        await self._send_json(resp, 200, {"input_tokens": tokens})

    # ------------------------------------------------------------------ /v1/messages

    async def messages(self, req: Request, resp: Responder, client_id: str, *, consume: bool = False) -> None:
        """consume=True (the server's own Request): req.body is released once parsed."""
        ex = Exchange(started=self.clock())
        request_id = random_id("req_")
        try:
            await self._messages(req, resp, client_id, ex, request_id, consume)
        except ProxyError as err:
            ex.status = err.status
            if not resp.started:
                await self._error(resp, err, request_id)
        except asyncio.CancelledError:
            if not resp.finished:  # the server also cancels once a finished client hangs up
                ex.status = 499  # client closed the connection
            raise
        except Exception:
            if not resp.started:
                ex.status = 500  # the server answers 500: never count it as a success
            raise
        finally:
            self._record(req, ex)

    async def _messages(self, req: Request, resp: Responder, client_id: str, ex: Exchange,
                        request_id: str, consume: bool = False) -> None:
        # rate limit
        extra_headers: list[tuple[str, str]] = [("request-id", request_id)]
        if self.limiter is not None:
            decision = self.limiter.acquire(client_id)
            rl_headers = self.limiter.headers(decision)
            if not decision.allowed:
                raise ProxyError(429, "rate_limit_error", "rate limit exceeded for this client",
                                 dict(rl_headers), False)
            extra_headers.extend(rl_headers)
        # parse
        if self.debug_log:
            self.debug_log.incoming_request(req.body, req.headers)
        try:
            body = self._parse_body(req.body)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("model: field required")
        except InvalidRequest as e:
            raise _invalid(str(e)) from None
        if consume:
            req.body = b""  # ~50 KB per request that a long stream would otherwise pin
        ex.requested_model = model
        ex.stream = body.get("stream") is True
        # route, then try the chain (queue / breaker / retry / fallback inside)
        try:
            routes = self.router.resolve(model)
        except ConfigError as e:  # "provider,model" naming a provider without credentials
            raise ProxyError(400, "invalid_request_error", f"model {model!r} is not available: {e}",
                             {"x-should-retry": "false"}, False) from None
        # The parsed client body (~120 KB for a Claude Code request) is handed over in a box
        # that _obtain empties once every route is translated: with hundreds of concurrent
        # streams it must not be held while waiting for the upstream, or for a whole stream.
        box = [body]
        body = None
        outcome = await self._obtain(box, routes, ex)
        if isinstance(outcome, CachedResponse):
            ex.cache = "HIT"
            ex.status = 200
            ex.provider, ex.upstream_model = outcome.provider, outcome.upstream_model
            await resp.send(200, [_JSON, *extra_headers, ("x-clasp-provider", outcome.provider),
                                  ("x-clasp-cache", "HIT")], outcome.body)
            return
        route, ctx, caps, upstream, cache_key = outcome
        ex.provider, ex.upstream_model = route.target.name, route.model
        extra_headers.append(("x-clasp-provider", route.target.name))
        if cache_key is not None:
            ex.cache = "MISS"
            extra_headers.append(("x-clasp-cache", "MISS"))
        is_sse = "text/event-stream" in upstream.headers.get("content-type", "")
        if ex.stream and is_sse:
            await self._relay_stream(upstream, resp, ctx, caps, ex, extra_headers)
        else:
            await self._relay_whole(upstream, resp, ctx, caps, ex, extra_headers, cache_key)

    def _parse_body(self, raw: bytes) -> dict:
        if not raw:
            raise InvalidRequest("request body is empty; expected a JSON object")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        return body

    def caps_for(self, target: Target, model: str) -> Capabilities:
        key = (target.name, model)
        caps = self._caps.get(key)
        if caps is None:
            caps = capabilities_for(target.provider, model, self.model_flags)
            if len(self._caps) > 1024:
                self._caps.clear()
            self._caps[key] = caps
        return caps

    async def _obtain(self, box: list[dict], routes: list[Route], ex: Exchange):
        """Get a 2xx upstream response (or a cache hit), applying queue, breaker, retry, fallback.
        `box` holds the parsed client body; it is emptied once no route needs it any more."""
        prepared: dict[int, tuple] = {}

        def prepare(i: int) -> tuple:
            # translate once per route: fallbacks may need other capabilities
            if i not in prepared:
                body = box[0]
                route = routes[i]
                caps = self.caps_for(route.target, route.model)
                try:
                    upstream_body, ctx = translate_request(body, route.model, caps)
                except InvalidRequest as e:
                    raise _invalid(str(e)) from None
                ctx.requested_model = ex.requested_model
                payload = _payload_bytes(upstream_body)
                cache_key = None
                if self.cache is not None and not ctx.stream:
                    from clasp.ops.cache import cache_key as make_key, is_cacheable
                    if is_cacheable(body):
                        cache_key = make_key(upstream_body, route.target.name, ex.requested_model)
                prepared[i] = (ctx, caps, payload, cache_key)
                if len(prepared) == len(routes):
                    box.clear()
            return prepared[i]

        async def chain():
            last: ProxyError | None = None
            for i, route in enumerate(routes):
                ctx, caps, payload, cache_key = prepare(i)
                if cache_key is not None:
                    hit = self.cache.get(cache_key)
                    if hit is not None:
                        return hit
                if i > 0:
                    self.metrics.record_fallback(routes[0].target.name, route.target.name)
                try:
                    upstream = await self._call_target(route, ctx, payload, ex)
                except ProxyError as err:
                    last = err
                    if _is_unavailable(err):
                        continue  # next target in the fallback chain, if any
                    raise
                return route, ctx, caps, upstream, cache_key
            assert last is not None
            raise last

        try:
            return await chain()
        except ProxyError as err:
            if self.queue is None or not _is_unavailable(err):
                raise
        try:
            return await self.queue.run(chain, _is_unavailable)
        except ProxyError as err:
            if not _is_unavailable(err):
                raise  # the provider answered: the request itself failed
            # queue retries used up while the provider stayed unavailable: as explicit as a wait expiry
            raise ProxyError(529, "overloaded_error", f"the provider stayed unavailable after "
                             f"{self.queue.max_retries} retries in the queue: {err.message}",
                             {"retry-after": "5"}, True) from None
        except QueueFull:
            raise ProxyError(529, "overloaded_error", "the provider is unavailable and the request queue is "
                             "full; try again later", {"retry-after": "5"}, True) from None
        except QueueTimeout as e:
            if isinstance(e.last, ProxyError):
                raise ProxyError(529, "overloaded_error", f"the provider stayed unavailable while the request "
                                 f"waited in the queue: {e.last.message}", {"retry-after": "5"}, True) from None
            raise ProxyError(529, "overloaded_error", "the provider stayed unavailable while the request "
                             "waited in the queue", {"retry-after": "5"}, True) from None

    async def _call_target(self, route: Route, ctx: RequestContext, payload: bytes,
                           ex: Exchange) -> UpstreamResponse:
        """One target: breaker gate, then the call with retries. Returns a 2xx response."""
        target = route.target
        ex.provider, ex.upstream_model = target.name, route.model  # attributes failures too (logs, metrics)
        breaker = self.breakers.get(target.name)
        if breaker is None and self.cfg.circuit_breaker:
            # targets made on demand ("provider,model" requests) get their breaker on first use
            breaker = self.breakers[target.name] = CircuitBreaker(self.cfg.cb_threshold, self.cfg.cb_recovery,
                                                                  self.cfg.cb_timeout)
        if breaker is not None and not breaker.allow():
            after = max(1, int(breaker.retry_after_s() + 0.999))
            raise ProxyError(503, "overloaded_error", f"{target.name}: circuit breaker is open after repeated "
                             f"upstream failures", {"retry-after": str(after)}, True)
        headers = [("content-type", "application/json"), *target.headers]
        if ctx.stream:
            headers.append(("accept", "text/event-stream"))
        if self.debug_log:
            self.debug_log.upstream_request(target.url, headers, payload)

        async def attempt(n: int):
            if n:
                self.metrics.record_retry(target.name)
            try:
                upstream = await self.client.request("POST", target.url, headers, payload)
            except UpstreamError as e:
                self.metrics.record_upstream_error(target.name, _transport_kind(e))
                return map_transport_error(e, target.name)
            if upstream.status < 300:
                return upstream
            raw = await _read_error_body(upstream)
            if self.debug_log:
                self.debug_log.upstream_response(upstream.status, upstream.headers, raw)
            self.metrics.record_upstream_error(target.name, upstream.status)
            return _scrub(map_upstream_error(upstream.status, upstream.headers, raw, target.name, ctx),
                          self._secret_variants)

        def classify(outcome):
            if isinstance(outcome, ProxyError):
                return outcome.retryable, outcome.headers
            return False, None

        try:
            outcome = await self.retry.call_with_retries(attempt, classify)
        except BaseException:
            # cancelled (client left) or an unexpected error: free a half-open probe slot,
            # or the breaker would wait forever for this probe's verdict
            if breaker is not None:
                breaker.release()
            raise
        if isinstance(outcome, ProxyError):
            if breaker is not None:
                if _is_unavailable(outcome):
                    breaker.record_failure()
                else:
                    breaker.record_success()  # the provider answered; the request was at fault
            raise outcome
        if breaker is not None:
            breaker.record_success()
        return outcome

    # ------------------------------------------------------------------ relays

    async def _relay_whole(self, upstream: UpstreamResponse, resp: Responder, ctx: RequestContext,
                           caps: Capabilities, ex: Exchange, headers: list, cache_key: str | None) -> None:
        try:
            raw = await upstream.read()
        except UpstreamError as e:
            raise map_transport_error(e, ex.provider) from None
        finally:
            upstream.close()
        if self.debug_log:
            self.debug_log.upstream_response(upstream.status, upstream.headers, raw)
        ex.ttft = self.clock() - ex.started
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            raise ProxyError(502, "api_error", f"{ex.provider}: upstream returned a non-JSON body",
                             {}, True) from None
        if "error" in data and not data.get("choices"):
            raise _scrub(map_upstream_error(upstream.status, upstream.headers, raw, ex.provider, ctx),
                         self._secret_variants)
        message = translate_response(data, ctx, caps)
        ex.book(message.get("usage", {}), sum(1 for b in message["content"] if b.get("type") == "tool_use"))
        ex.status = 200
        if ex.stream:
            # the upstream ignored stream:true (or is configured not to stream): synthesize events
            translator = StreamTranslator(ctx, caps, message_id=message["id"])
            events = translator.start() + events_from_message(message)
            await resp.start(200, [*_SSE_HEADERS, *headers])
            payload = encode_events(events)
            if self.debug_log:
                self.debug_log.translated_response(payload)
            resp.write(payload)
            await resp.end()
            return
        body = _json_bytes(message)
        if self.debug_log:
            self.debug_log.translated_response(body)
        if cache_key is not None and self.cache is not None:
            self.cache.put(cache_key, CachedResponse(body, ex.provider, ex.upstream_model))
        await resp.send(200, [_JSON, *headers], body)

    async def _relay_stream(self, upstream: UpstreamResponse, resp: Responder, ctx: RequestContext,
                            caps: Capabilities, ex: Exchange, headers: list) -> None:
        """Relay upstream SSE as Anthropic SSE: each upstream read is translated, written and
        drained before the next read, so memory stays bounded and events flow as they arrive."""
        translator = StreamTranslator(ctx, caps, provider=ex.provider)
        parser = SSEParser()
        await resp.start(200, [*_SSE_HEADERS, *headers])
        ex.status = 200
        debug = self.debug_log
        out = encode_events(translator.start())
        if debug:
            debug.translated_response(out)
        resp.write(out)
        await resp.drain()
        clock = self.clock
        state = {"last": clock()}
        pinger = asyncio.ensure_future(self._ping_loop(resp, state))
        failed = False
        chunks = upstream.iter_chunks()
        try:
            while True:
                try:
                    if translator.finish_reason is None:
                        data = await chunks.__anext__()
                    else:
                        # finish_reason seen, usage not yet: some servers then go silent without
                        # [DONE] or EOF; finalize after a short silence (PROTOCOL §3.3)
                        data = await asyncio.wait_for(chunks.__anext__(), _FINISH_GRACE_S)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    log.info("%s: no [DONE] or usage %gs after finish_reason; finishing the stream",
                             ex.provider, _FINISH_GRACE_S)
                    upstream.close()  # half-read: never pooled
                    break
                if debug:
                    debug.upstream_response(upstream.status, upstream.headers, data)
                events = self._translate_payloads(parser.feed(data), translator, ex.provider)
                if events:
                    if ex.ttft is None:
                        ex.ttft = clock() - ex.started
                    failed = events[-1]["type"] == "error"
                    out = encode_events(events)
                    if debug:
                        debug.translated_response(out)
                    resp.write(out)
                    state["last"] = clock()
                    await resp.drain()
                if translator.done:
                    break
                if translator.finish_reason and translator.has_upstream_usage:
                    # everything is known: finish now rather than wait for [DONE] (PROTOCOL §3.3)
                    out = encode_events(translator.finish())
                    if debug:
                        debug.translated_response(out)
                    resp.write(out)
                    break
            if not translator.done:  # upstream ended: flush a pending event, then finalize
                events = self._translate_payloads(parser.close(), translator, ex.provider)
                if not translator.done:
                    events.extend(translator.finish())
                failed = bool(events) and events[-1]["type"] == "error"
                out = encode_events(events)
                if debug:
                    debug.translated_response(out)
                resp.write(out)
        except UpstreamError as e:
            upstream.close()
            err = map_transport_error(e, ex.provider)
            resp.write(encode_events(translator.fail(err)))
            failed = True
        except BaseException:
            upstream.close()  # cancelled (client left) or failed: never pool a half-read connection
            raise
        finally:
            pinger.cancel()
            ex.book(translator.usage or {}, translator.tool_count)
        if failed:
            # An error event ends the stream: finish the HTTP message cleanly (so the client parses
            # the event rather than seeing a broken transfer), then close the connection.
            ex.status = 502
            upstream.close()
            await resp.end()
            resp.abort()
            return
        await resp.end()
        await _drain(chunks, upstream)

    @staticmethod
    def _translate_payloads(payloads: list[str], translator: StreamTranslator, provider: str) -> list[dict]:
        events: list[dict] = []
        for payload in payloads:
            if payload == _DONE:
                events.extend(translator.finish())
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                log.warning("%s: skipped a malformed stream chunk", provider)
                continue
            if isinstance(chunk, dict):
                events.extend(translator.feed(chunk))
        return events

    async def _ping_loop(self, resp: Responder, state: dict) -> None:
        """Keep the client's idle timer happy while the upstream is silent (slow first token)."""
        interval = self.cfg.stream_ping_interval
        while True:
            await asyncio.sleep(interval)
            if self.clock() - state["last"] >= interval and not resp.closed:
                resp.write(_PING)
                state["last"] = self.clock()

    # ------------------------------------------------------------------ helpers

    async def _send_json(self, resp: Responder, status: int, obj: Any) -> None:
        await resp.send(status, [_JSON], _json_bytes(obj))

    async def _error(self, resp: Responder, err: ProxyError, request_id: str | None = None) -> None:
        status, headers, body = error_response(err, request_id)
        if request_id:
            headers = [*headers, ("request-id", request_id)]
        await resp.send(status, headers, body)

    def _record(self, req: Request, ex: Exchange) -> None:
        latency = self.clock() - ex.started
        self.metrics.record_request(provider=ex.provider or "-", model=ex.requested_model or "-",
                                    status=ex.status, streaming=ex.stream, tool_calls=ex.tool_calls,
                                    latency_s=latency, ttft_s=ex.ttft, input_tokens=ex.input_tokens,
                                    output_tokens=ex.output_tokens, cache=ex.cache.lower() or None)
        if self.access_log is not None:
            self.access_log.log(method=req.method, path=req.path, status=ex.status, model=ex.requested_model,
                                upstream_model=ex.upstream_model, provider=ex.provider,
                                latency_ms=round(latency * 1000, 1),
                                ttft_ms=None if ex.ttft is None else round(ex.ttft * 1000, 1),
                                input_tokens=ex.input_tokens, output_tokens=ex.output_tokens,
                                cache=ex.cache or "-")


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    provider: str
    upstream_model: str


def _invalid(message: str) -> ProxyError:
    return ProxyError(400, "invalid_request_error", message, {"x-should-retry": "false"}, False)


def _scrub(err: ProxyError, secrets: list[str]) -> ProxyError:
    """Drop configured keys from an upstream error message: some servers echo the key they got."""
    message = drop_secrets(err.message, secrets)
    return err if message == err.message else dataclasses.replace(err, message=message)


def _transport_kind(exc: UpstreamError) -> str:
    """The metrics label of an upstream failure that produced no HTTP status."""
    return {"UpstreamTimeout": "timeout", "ConnectError": "connect"}.get(type(exc).__name__, "connection")


def _is_unavailable(outcome: object) -> bool:
    return isinstance(outcome, ProxyError) and (outcome.status in _UNAVAILABLE or outcome.retryable)


async def _read_error_body(upstream: UpstreamResponse) -> bytes:
    try:
        return await upstream.read()
    except UpstreamError:
        return b""
    finally:
        upstream.close()


async def _drain(chunks, upstream: UpstreamResponse, timeout_s: float = 1.0) -> None:
    """Read what is left of a finished upstream stream (usually just `[DONE]` and the chunked
    terminator) so its connection can go back to the pool; give up quickly otherwise."""
    async def rest() -> None:
        async for _ in chunks:
            pass
    try:
        await asyncio.wait_for(rest(), timeout_s)
    except (asyncio.TimeoutError, UpstreamError):
        pass
    finally:
        upstream.close()  # no-op when the body was read to the end and pooled
