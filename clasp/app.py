"""The proxy application: builds the components once and dispatches by path.

Endpoints other than /v1/messages are answered here; /v1/messages runs through
clasp.pipeline.messages, where its stages are composed in order:

    auth (here) -> rate limit -> parse -> route -> access (model, budget)
         -> cache / queue / breaker / retry / fallback -> upstream
         -> translate (whole response or relayed stream) -> spend
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TextIO

from clasp import __version__
from clasp.config import Config, ConfigError, parse_model_flags
from clasp.ops.access import AccessControl, check_key_state
from clasp.ops.auth import DEFAULT_KEY_NAME, AuthPolicy
from clasp.ops.guard import RequestGuard
from clasp.ops.logs import AccessLog, DebugLog
from clasp.ops.memory import IdleTrimmer, resident_bytes
from clasp.ops.keys import ApiKey, KeyFile
from clasp.ops.metrics import Metrics, render_json, render_prometheus
from clasp.ops.pricing import PriceTable, parse_prices
from clasp.ops.spend import SpendLedger
from clasp.pipeline.chain import UpstreamChain
from clasp.pipeline.count_tokens import CountTokens
from clasp.pipeline.messages import MessagesPipeline
from clasp.pipeline.relay import Relay
from clasp.pipeline.web_search import WebSearch
from clasp.pipeline.wire import send_error, send_json
from clasp.redaction import redact_variants, secret_variants
from clasp.routing.providers import Router
from clasp.server.http import Request, Responder
from clasp.store.select import open_store
from clasp.translate.capabilities import capabilities_for
from clasp.translate.errors import ProxyError
from clasp.translate.jsontext import utf8
from clasp.upstream.client import UpstreamClient
from clasp.upstream.servers import ServerRegistry


class App:
    """The proxy: one instance per process, shared by all connections."""

    def __init__(self, cfg: Config, *, clock=time.monotonic, log_stream: TextIO | None = None,
                 client: UpstreamClient | None = None, group=None, wall=time.time) -> None:
        """``group``: this worker's GroupLink to the parent of a ``-workers N`` group (state and
        metrics shared with the other workers), None for a process on its own."""
        self.cfg = cfg
        self.clock = clock
        self.wall = wall
        self.router = Router(cfg)
        self.client = client or UpstreamClient(connect_timeout=cfg.connect_timeout,
                                               read_timeout=cfg.read_timeout, pool_size=cfg.pool_size)
        self.guard = RequestGuard.from_config(cfg)
        self.keys = None
        if cfg.keys_file or cfg.keys:
            # "default" stays CLASP_AUTH_API_KEY's name: a client key may not take it
            reserved = (ApiKey(DEFAULT_KEY_NAME),) if cfg.auth_api_key else ()
            self.keys = KeyFile(cfg.keys_file, (*reserved, *cfg.keys), check_interval=cfg.keys_check_interval,
                                clock=clock)
        self.auth = AuthPolicy(cfg.auth_required, cfg.auth_api_key, cfg.auth_allow_anonymous_health,
                               cfg.auth_allow_anonymous_metrics, keys=self.keys)
        # state shared by requests (and by replicas, with Redis): rate-limit buckets, counters, cache
        self.group = group  # this worker's link to its -workers N parent, else None
        self.store = store = open_store(cfg, clock=clock, group=group)
        self.limiter = limiter = None
        if cfg.rate_limit:
            from clasp.ops.ratelimit import RateLimiter
            self.limiter = limiter = RateLimiter(cfg.rate_limit_requests, cfg.rate_limit_window,
                                                 cfg.rate_limit_burst, clock=clock, store=store)
        self.cache = cache = None
        if cfg.cache:
            from clasp.ops.cache import StoreCache
            self.cache = cache = StoreCache(store, cfg.cache_ttl, cfg.cache_max_size)
        model_flags = parse_model_flags(cfg.model_flags)
        try:  # fail at start-up, not on the first request
            capabilities_for(self.router.primary.provider, self.router.primary.default_model, model_flags)
        except ValueError as e:
            raise ConfigError(f"CLASP_MODEL_FLAGS: {e}") from None
        stream = log_stream or sys.stderr
        secrets = cfg.secrets()
        variants = secret_variants(secrets)  # and their JSON-escaped forms
        access_log = AccessLog(stream, cfg.log_format, secrets=secrets) if cfg.access_log else None
        self.access_log = access_log
        self.servers = ServerRegistry(self.client, enabled=cfg.probe_upstream)
        debug_log = (DebugLog(stream, cfg.debug_log_requests, cfg.debug_log_responses, secrets)
                     if cfg.debug_log_requests or cfg.debug_log_responses else None)
        self.metrics = Metrics(clock=clock, redact=lambda text: redact_variants(text, variants))
        self.spend = SpendLedger(self.store, PriceTable(parse_prices(cfg.prices)), self.metrics, wall=wall)
        self.access = access = AccessControl(self.store, self.spend, wall=wall)
        self.chain = chain = UpstreamChain(cfg, self.client, self.metrics, targets=list(self.router.targets),
                              model_flags=model_flags, servers=self.servers, cache=cache, debug_log=debug_log,
                              secret_variants=variants)
        self.relay = relay = Relay(clock=clock, ping_interval=cfg.stream_ping_interval, cache=cache, debug_log=debug_log,
                      secret_variants=variants, max_sse_event_size=cfg.max_sse_event_size)
        self.pipeline = MessagesPipeline(clock=clock, router=self.router, chain=chain, relay=relay,
                                         metrics=self.metrics, limiter=limiter, access_log=access_log,
                                         debug_log=debug_log, access=access, spend=self.spend,
                                         web_search=WebSearch(cfg, self.router, chain, relay))
        self.count = CountTokens(self.router, chain, limiter, access)
        self.metrics.set_sources(
            breakers=(lambda: {name: b.state for name, b in chain.breakers.items()}) if cfg.circuit_breaker else None,
            queue=(lambda: {"depth": chain.queue.depth(), **chain.queue.stats}) if chain.queue else None,
            cache=cache.stats if cache is not None else None,
            memory=self._memory_stats, store=store.health)
        if group is not None:
            group.snapshot_source = self.metrics.snapshot
        self.trimmer = IdleTrimmer(cfg.memory_trim_after) if cfg.memory_trim_after > 0 else None
        self._housekeeping: asyncio.Future | None = None
        self._store_check: asyncio.Future | None = None

    def _memory_stats(self) -> dict:
        return {"rss_bytes": resident_bytes(), "trims": self.trimmer.trims if self.trimmer is not None else 0}

    def reload_keys(self) -> bool:
        """SIGHUP: read the keys file again (a broken one keeps the keys in force)."""
        return self.keys.reload() if self.keys is not None else False

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        await self.spend.flush()  # the last requests' spend reaches the store
        await self.client.close()
        await self.store.close()
        if self.group is not None:
            await self.group.close()

    # ------------------------------------------------------------------ dispatch

    def start(self) -> None:
        """Start background housekeeping (inside the running event loop)."""
        if self.trimmer is not None and self._housekeeping is None:
            self._housekeeping = asyncio.ensure_future(self.trimmer.run())
        connect = getattr(self.store, "connect", None)
        if connect is not None and self._store_check is None:  # a shared store: is it reachable?
            self._store_check = asyncio.ensure_future(connect())  # (kept: a bare task may be collected)

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
        key = None
        cancelled = False
        try:
            authorized = await self._dispatch(req, resp)
            if authorized is not None:
                client_id, key = authorized
        except ProxyError as err:  # an endpoint's own refusal (GET /costs with -redis-fail-closed: 503)
            if resp.started:
                raise
            await send_error(resp, err)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if client_id is None and self.access_log is not None:
                self.access_log.log(method=req.method, path=req.path,
                                    status=resp.status or (499 if cancelled else 500),
                                    latency_ms=round((self.clock() - started) * 1000, 1))
        if client_id is not None:
            await self.pipeline.handle(req, resp, client_id, consume=True, key=key)

    async def _dispatch(self, req: Request, resp: Responder) -> tuple[str, ApiKey | None] | None:
        """Route by path (query ignored, base-URL prefixes tolerated) and answer everything but an
        authorized /v1/messages, for which the client identity (rate-limit key) and its ApiKey
        (limits, models, budgets; None without authentication) are returned."""
        path = req.path.rstrip("/") or "/"
        if path.endswith("/v1/messages"):
            endpoint, methods = "/v1/messages", ("POST",)
        elif path.endswith("/v1/messages/count_tokens"):
            endpoint, methods = "/v1/messages/count_tokens", ("POST",)
        elif path == "/":
            endpoint, methods = "/", ("GET", "HEAD")
        elif path in ("/health", "/metrics", "/metrics/prometheus", "/dashboard", "/costs"):
            endpoint, methods = path, ("GET", "HEAD")
        elif path.endswith("/v1/models"):
            endpoint, methods = "/v1/models", ("GET", "HEAD")
        else:
            await send_error(resp, ProxyError(404, "not_found_error", f"no such endpoint: {req.path}",
                                               {"x-should-retry": "false"}, False))
            return None
        if req.method not in methods:
            err = ProxyError(405, "invalid_request_error",
                             f"method {req.method} not allowed on {endpoint} (use {', '.join(methods)})",
                             {"allow": ", ".join(methods), "x-should-retry": "false"}, False)
            await send_error(resp, err)
            return None
        refused = self.guard.check(req.method, req.headers)  # web pages: before auth and parsing
        if refused is not None:
            await send_error(resp, refused)
            return None
        client_id = req.client
        key = None
        if self.auth.requires_auth(endpoint):
            key = self.auth.authenticate(req.headers)
            identity = None if key is None else key.identity or client_id
            if identity is None and endpoint == "/dashboard" and "text/html" in req.headers.get("accept", ""):
                # A browser cannot send the key when it opens a page: it gets the page (code only, no
                # data) with the 401, asks the person for the key and sends it on its /metrics fetches.
                await self._send_dashboard(req, resp, 401)
                return None
            if identity is None:
                await send_error(resp, ProxyError(401, "authentication_error", "invalid or missing API key "
                                                   "(send it as x-api-key or Authorization: Bearer)",
                                                   {"x-should-retry": "false"}, False))
                return None
            try:
                check_key_state(key, self.wall())  # disabled or expired: 401 naming it
            except ProxyError as err:
                await send_error(resp, err)
                return None
            client_id = identity
        if endpoint == "/v1/messages":
            return client_id, key
        if endpoint == "/v1/messages/count_tokens":
            await self.count.handle(req, resp, client_id, key)
        elif endpoint == "/":
            await send_json(resp, 200, self.info())
        elif endpoint == "/health":
            store = self.store.health()
            await send_json(resp, 200, {"status": "ok" if store["status"] == "ok" else "degraded",
                                        "version": __version__, "provider": self.router.primary.name,
                                        "store": store})
        elif endpoint == "/metrics":
            snap = await self.metrics_snapshot()
            data = render_json(snap)
            if self.cfg.workers > 1:  # which worker answered, and what each has served
                data["worker"] = {"pid": os.getpid(), "workers": self.cfg.workers,
                                  **({"processes": snap["workers"]} if "workers" in snap else {})}
            await send_json(resp, 200, data)
        elif endpoint == "/dashboard":
            await self._send_dashboard(req, resp, 200)
        elif endpoint == "/costs":
            ring = self.keys.ring.by_name.values() if self.keys is not None else ()
            await send_json(resp, 200, await self.spend.report(ring))
        elif endpoint == "/metrics/prometheus":
            await resp.send(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                            utf8(render_prometheus(await self.metrics_snapshot())))
        else:
            await send_json(resp, 200, self.models())
        return None

    async def metrics_snapshot(self) -> dict:
        """This process's metrics, or in a worker group the group's (merged by the parent)."""
        snap = self.metrics.snapshot()
        group = self.group
        if group is None or group.broken:
            return snap
        from clasp.store.group import OP_METRICS, GroupUnavailable
        try:  # the parent waits at most 2 s for each worker's snapshot
            merged = (await asyncio.wait_for(group.call(OP_METRICS, snap), 10.0))[0]
        except (GroupUnavailable, asyncio.TimeoutError):
            return snap
        return merged if merged is not None else snap

    async def _send_dashboard(self, req: Request, resp: Responder, status: int) -> None:
        from clasp.ops.dashboard import HEADERS, page
        # HEAD: the server sends the head only, with this body's length
        await resp.send(status, [*HEADERS, *((("x-should-retry", "false"),) if status == 401 else ())], page())

    def info(self) -> dict:
        return {"name": "clasp", "version": __version__, "provider": self.router.primary.name,
                "model": self.router.primary.default_model or None,
                "endpoints": ["POST /v1/messages", "POST /v1/messages/count_tokens", "GET /health",
                              "GET /metrics", "GET /metrics/prometheus", "GET /dashboard", "GET /costs",
                              "GET /v1/models", "GET /"]}

    def models(self) -> dict:
        names = ["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"]
        data = []
        for name in names:
            route = self.router.resolve(name)[0]
            data.append({"type": "model", "id": name, "display_name": f"{name} -> {route.model}",
                         "created_at": "2025-01-01T00:00:00Z"})
        return {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}

    async def messages(self, req: Request, resp: Responder, client_id: str) -> None:
        """POST /v1/messages for an authorized client (embedding and tests)."""
        await self.pipeline.handle(req, resp, client_id)
