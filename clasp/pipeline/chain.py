"""From a parsed request to a 2xx upstream response: per route translate, then
cache -> queue -> (per target: circuit breaker -> upstream call with retries) -> fallback."""

from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, Callable, TypeVar, Union

from clasp.config import Config, ConfigError
from clasp.ops.logs import DebugLog
from clasp.ops.metrics import Metrics
from clasp.pipeline.exchange import CachedResponse, Exchange
from clasp.pipeline.wire import invalid, payload_bytes, scrub
from clasp.resilience.breaker import CircuitBreaker
from clasp.resilience.queue import QueueFull, QueueTimeout, RequestQueue
from clasp.resilience.retry import RetryPolicy
from clasp.routing.providers import Route, Router
from clasp.translate.capabilities import Capabilities, capabilities_for
from clasp.translate.context import RequestContext
from clasp.translate.errors import InvalidRequest, ProxyError, map_transport_error, map_upstream_error
from clasp.translate.request import translate_request
from clasp.upstream.client import UpstreamClient, UpstreamError, UpstreamResponse
from clasp.upstream.servers import UNKNOWN, ServerInfo, ServerRegistry

# Statuses meaning "the provider is unavailable" (queue and fallback act on these).
_UNAVAILABLE = frozenset({408, 429, 500, 502, 503, 504, 529})

# What the chain yields: a cache hit, or the route that answered with its 2xx response.
Obtained = Union[CachedResponse, "tuple[Route, RequestContext, Capabilities, UpstreamResponse, str | None]"]


def routes_for(router: Router, model: str) -> list[Route]:
    """The routes to try for a requested model; 400 for one this proxy does not offer (a
    "provider,model" the clients may not choose, or naming a provider without credentials)."""
    try:
        return router.resolve(model)
    except ConfigError as e:
        raise invalid(f"model {model!r} is not available: {e}") from None


def is_unavailable(outcome: object) -> bool:
    return isinstance(outcome, ProxyError) and (outcome.status in _UNAVAILABLE or outcome.retryable)


class UpstreamChain:
    def __init__(self, cfg: Config, client: UpstreamClient, metrics: Metrics, *, targets: list[str],
                 model_flags: dict, servers: ServerRegistry, cache=None, debug_log: DebugLog | None = None,
                 secret_variants: list[str] = ()) -> None:
        self.cfg = cfg
        self.client = client
        self.servers = servers
        self.metrics = metrics
        self.cache = cache
        self.debug_log = debug_log
        self.model_flags = model_flags
        self.secret_variants = list(secret_variants)
        self.retry = RetryPolicy(max_retries=cfg.max_retries, base_delay_s=cfg.retry_base_delay_ms / 1000)
        self.breakers: dict[str, CircuitBreaker] = {}
        if cfg.circuit_breaker:
            self.breakers = {name: self._breaker() for name in targets}
        self.queue = (RequestQueue(cfg.queue_max_size, cfg.queue_max_wait, cfg.queue_retry_delay / 1000,
                                   cfg.queue_max_retries) if cfg.queue else None)
        self._caps: dict[tuple[str, str, ServerInfo], Capabilities] = {}

    def _breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.cfg.cb_threshold, self.cfg.cb_recovery, self.cfg.cb_timeout)

    def caps_for(self, route: Route, server: ServerInfo = UNKNOWN) -> Capabilities:
        """Flags for the route's model: model family, then what the server needs (a probed
        llama.cpp), then CLASP_MODEL_FLAGS, which always win."""
        key = (route.target.name, route.model, server)
        caps = self._caps.get(key)
        if caps is None:
            flags = {**server.capability_defaults(), **self.model_flags}
            caps = capabilities_for(route.target.provider, route.model, flags)
            if len(route.model) > 256:
                return caps  # a client-chosen name passed through: not worth keeping (up to 32 MiB)
            if len(self._caps) > 1024:
                self._caps.clear()
            self._caps[key] = caps
        return caps

    async def obtain(self, box: list[dict], routes: list[Route], ex: Exchange,
                     shape: Callable[[dict, Route], dict] | None = None) -> Obtained:
        """Get a 2xx upstream response (or a cache hit), applying queue, breaker, retry, fallback.
        `box` holds the parsed client body; it is emptied once no route needs it any more.

        All of it is bounded by the first-byte timeout: the per-read timeout alone would let a hung
        upstream hold the request for (retries + 1) x read timeout, per fallback target. At expiry
        the pending upstream call is cancelled (its connection closed) and the client gets a 504.
        `shape(upstream_body, route)` (web search) adjusts each translated body before it is sent."""
        limit = self.cfg.first_byte_timeout
        try:
            return await _before_deadline(self._obtain(box, routes, ex, shape), limit)
        except _DeadlineExpired:
            where = ex.provider or "upstream"
            if ex.provider:
                self.metrics.record_upstream_error(ex.provider, "timeout")
            raise ProxyError(504, "timeout_error", f"{where}: no response from the upstream within {limit:g}s "
                             f"(first-byte timeout, -first-byte-timeout / CLASP_FIRST_BYTE_TIMEOUT)",
                             {}, False) from None

    async def _obtain(self, box: list[dict], routes: list[Route], ex: Exchange,
                      shape: Callable[[dict, Route], dict] | None = None) -> Obtained:
        prepared: dict[int, tuple] = {}

        def prepare(i: int, server: ServerInfo) -> tuple:
            # translate once per route: fallbacks may need other capabilities
            if i not in prepared:
                body = box[0]
                route = routes[i]
                caps = self.caps_for(route, server)
                try:
                    if route.api == "responses":
                        from clasp.translate.responses_request import translate_responses_request
                        upstream_body, ctx = translate_responses_request(body, route.model, caps)
                    else:
                        upstream_body, ctx = translate_request(body, route.model, caps)
                except InvalidRequest as e:
                    raise invalid(str(e)) from None
                ctx.requested_model = ex.requested_model
                if shape is not None:
                    upstream_body = shape(upstream_body, route)
                payload = payload_bytes(upstream_body)
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
                server = await self.servers.info(route.target)  # probed once per custom target
                ctx, caps, payload, cache_key = prepare(i, server)
                if cache_key is not None:
                    hit = await self.cache.get(cache_key)
                    if hit is not None:
                        return hit
                if i > 0:
                    self.metrics.record_fallback(routes[0].target.name, route.target.name)
                try:
                    upstream = await self.call_target(route, ctx, payload, ex)
                except ProxyError as err:
                    last = err
                    if is_unavailable(err):
                        continue  # next target in the fallback chain, if any
                    raise
                return route, ctx, caps, upstream, cache_key
            assert last is not None
            raise last

        try:
            return await chain()
        except ProxyError as err:
            if self.queue is None or not is_unavailable(err):
                raise
        try:
            return await self.queue.run(chain, is_unavailable)
        except ProxyError as err:
            if not is_unavailable(err):
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

    async def call_target(self, route: Route, ctx: RequestContext, payload: bytes,
                          ex: Exchange) -> UpstreamResponse:
        """One target: breaker gate, then the call with retries. Returns a 2xx response."""
        target = route.target
        ex.provider, ex.upstream_model = target.name, route.model  # attributes failures too (logs, metrics)
        breaker = self.breakers.get(target.name)
        if breaker is None and self.cfg.circuit_breaker:
            # targets made on demand ("provider,model" requests) get their breaker on first use
            breaker = self.breakers[target.name] = self._breaker()
        if breaker is not None and not breaker.allow():
            after = max(1, int(breaker.retry_after_s() + 0.999))
            raise ProxyError(503, "overloaded_error", f"{target.name}: circuit breaker is open after repeated "
                             f"upstream failures", {"retry-after": str(after)}, True)
        headers = [("content-type", "application/json"), *target.headers]
        if ctx.stream:
            headers.append(("accept", "text/event-stream"))
        if self.debug_log:
            self.debug_log.upstream_request(route.url, headers, payload)

        async def attempt(n: int):
            if n:
                self.metrics.record_retry(target.name)
            try:
                upstream = await self.client.request("POST", route.url, headers, payload)
            except UpstreamError as e:
                self.metrics.record_upstream_error(target.name, _transport_kind(e))
                return map_transport_error(e, target.name)
            if upstream.status < 300:
                return upstream
            raw = await read_error_body(upstream)
            if self.debug_log:
                self.debug_log.upstream_response(upstream.status, upstream.headers, raw)
            self.metrics.record_upstream_error(target.name, upstream.status)
            return scrub(map_upstream_error(upstream.status, upstream.headers, raw, target.name, ctx),
                         self.secret_variants)

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
                if is_unavailable(outcome):
                    breaker.record_failure()
                else:
                    breaker.record_success()  # the provider answered; the request was at fault
            raise outcome
        if breaker is not None:
            breaker.record_success()
        return outcome


class _DeadlineExpired(Exception):
    """The first-byte timeout of a request ran out (the awaited work was cancelled)."""


_T = TypeVar("_T")

if sys.version_info >= (3, 11):
    async def _before_deadline(work: Awaitable[_T], seconds: float) -> _T:
        """`await work`, cancelling it and raising _DeadlineExpired after `seconds`."""
        timeout = asyncio.timeout(seconds)  # one timer in this task (wait_for would add a task)
        try:
            async with timeout:
                return await work
        except TimeoutError:
            if timeout.expired():
                raise _DeadlineExpired from None
            raise
else:  # 3.10: no asyncio.timeout
    async def _before_deadline(work: Awaitable[_T], seconds: float) -> _T:
        """`await work`, cancelling it and raising _DeadlineExpired after `seconds`."""
        try:
            return await asyncio.wait_for(work, seconds)
        except asyncio.TimeoutError:
            raise _DeadlineExpired from None


def _transport_kind(exc: UpstreamError) -> str:
    """The metrics label of an upstream failure that produced no HTTP status."""
    return {"UpstreamTimeout": "timeout", "ConnectError": "connect"}.get(type(exc).__name__, "connection")


async def read_error_body(upstream: UpstreamResponse) -> bytes:
    try:
        return await upstream.read()
    except UpstreamError:
        return b""
    finally:
        upstream.close()
