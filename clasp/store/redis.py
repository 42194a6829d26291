"""The shared store: every replica (and worker) behind a load balancer uses one Redis or Valkey.

Same semantics as LocalStore (store/local.py); the differences are only where state lives:

* ``take``: one Lua script per decision (atomic), the bucket a hash ``tokens``/``ts`` that expires
  once it would be full again. Time is the Redis server's (``TIME`` inside the script), so
  replicas whose clocks differ still share one correct bucket.
* ``hincr``: one Lua script (HINCRBYFLOAT per field, then PEXPIRE); ``hmget``/``hgetall`` plain reads.
* ``cache_get``/``cache_put``: GET, SET PX (Redis' own memory policy bounds the size).
* Keys: ``<prefix>bucket:<name>``, ``<prefix>hash:<name>``, ``<prefix>cache:<key>``.

Degraded mode (Redis unreachable, or an error mid-command): the store marks itself down and a
background task retries (backoff 0.25 s doubling up to 5 s); meanwhile no request touches Redis,
so none waits a connect timeout. While down:

* fail-open (default): ``take`` uses a per-process bucket, ``hincr`` adds to per-process counters
  and remembers the increments, which are added to Redis when it is back (so spend is not lost;
  only increments beyond ``MAX_PENDING`` hashes are dropped, and logged); ``hmget``/``hgetall`` read
  the per-process counters (what this process booked during the outage); the cache misses.
* fail-closed (``-redis-fail-closed``): ``take``, ``hmget`` and ``hgetall`` raise StoreUnavailable, a
  503 for the client; counters and the cache behave as in fail-open.

An error reply (Redis answers but refuses: OOM under maxmemory, READONLY after a failover,
LOADING after a restart) is no outage: that one call falls back as above, and refused increments
are added by a background task (same backoff) once Redis takes writes again.

One warning is logged when an outage starts, one info line when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from clasp.ops.ratelimit import RateDecision, rate_decision
from clasp.store.local import LocalStore
from clasp.store.resp import RedisClient, RedisConnectionError, RedisError, Script, pairs, parse_url
from clasp.translate.errors import ProxyError

__all__ = ["RedisStore", "StoreUnavailable"]

log = logging.getLogger("clasp")

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0
MAX_PENDING = 10000  # hashes whose outage increments are kept for Redis

# KEYS[1] bucket; ARGV rate (tokens/s), burst. Returns {allowed, tokens as a string}.
TAKE = Script("""
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  tokens = burst
else
  local elapsed = now - ts
  if elapsed > 0 then tokens = tokens + elapsed * rate end
  if tokens > burst then tokens = burst end
end
local allowed = 0
if tokens + 1e-9 >= 1 then
  tokens = tokens - 1
  if tokens < 0 then tokens = 0 end
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, string.format('%.17g', tokens)}
""")

# KEYS[1] hash; ARGV ttl in ms (0 = none), then field, increment pairs.
HINCR = Script("""
for i = 2, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
""")


class StoreUnavailable(ProxyError):
    """The shared store is unreachable and -redis-fail-closed is set."""

    def __init__(self) -> None:
        super().__init__(503, "api_error", "the shared state store (Redis) is unreachable and this proxy is set "
                         "to refuse requests until it is back (-redis-fail-closed / CLASP_REDIS_FAIL_CLOSED)",
                         {"retry-after": "5"}, True)


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "clasp:", timeout: float = 1.0, fail_closed: bool = False,
                 clock: Callable[[], float] = time.monotonic, cache_max_size: int = 1000,
                 pool_size: int = 16) -> None:
        self.url = parse_url(url)
        self.client = RedisClient(self.url, timeout=timeout, pool_size=pool_size)
        self.prefix = prefix
        self.fail_closed = fail_closed
        self.local = LocalStore(clock=clock, cache_max_size=cache_max_size)  # used while Redis is down
        self.errors = 0           # operations that could not use Redis (failed, or skipped while it is down)
        self.outages = 0
        self.up = True            # False from a failure until a retry succeeds
        self.last_error = ""
        self._pending: dict[str, tuple[dict[str, float], float | None]] = {}
        self.dropped_increments = 0
        self._retry: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None  # adds increments an error reply refused, Redis being up
        self._closed = False
        self._last_reply_warning = -1e9

    def __repr__(self) -> str:
        return f"RedisStore({self.url.address}, prefix={self.prefix!r})"

    # ---- failure handling

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        if isinstance(e, RedisError):  # the server answered: a command problem, not an outage
            now = time.monotonic()
            if now - self._last_reply_warning >= 60:  # at most one line a minute
                self._last_reply_warning = now
                log.warning("Redis store %s refused a command: %s", self.url.address, e)
            return
        self.last_error = str(e)
        self.client.drop_idle()
        if not self.up:
            return
        self.up = False
        self.outages += 1
        log.warning("Redis store unreachable (%s); %s until it is back", e,
                    "refusing requests (fail-closed)" if self.fail_closed
                    else "using per-process rate limits and counters, cache off")
        if not self._closed:
            self._retry = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        delay = BACKOFF_START_S
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self.client.execute("PING")
                await self._flush_pending()
            except (RedisConnectionError, RedisError) as e:
                self.last_error = str(e)
                self.client.drop_idle()
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.up = True
            self.local = LocalStore(clock=self.local._clock, cache_max_size=self.local.cache_max_size)  # outage state done
            log.info("Redis store %s is reachable again", self.url.address)
            return

    async def _flush_pending(self) -> None:
        while self._pending:
            name = next(iter(self._pending))
            fields, ttl = self._pending.pop(name)  # increments made while this awaits start a new entry
            try:
                await self._hincr(name, fields, ttl)
            except BaseException:
                self._remember(name, fields, ttl)
                raise

    async def _drain_pending(self) -> None:
        """Redis is up but refused increments (an error reply: OOM, READONLY, LOADING): add them
        once it takes them again. An outage meanwhile hands the job to the reconnect task."""
        delay = BACKOFF_START_S
        while self._pending and self.up and not self._closed:
            await asyncio.sleep(delay)
            if not self.up:
                return
            try:
                await self._flush_pending()
            except RedisConnectionError as e:
                self._failed(e)
                return
            except RedisError:
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _remember(self, name: str, fields: dict[str, float], ttl_s: float | None) -> None:
        pending = self._pending.get(name)
        if pending is None:
            if len(self._pending) >= MAX_PENDING:
                self.dropped_increments += 1
                if self.dropped_increments == 1:
                    log.warning("Redis store down: too many counters changed; later increments stay in this "
                                "process only")
                return
            self._pending[name] = (dict(fields), ttl_s)
            return
        acc = pending[0]
        for f, v in fields.items():
            acc[f] = acc.get(f, 0.0) + v
        self._pending[name] = (acc, ttl_s)

    async def connect(self) -> None:
        """Check at start-up that Redis answers (logged either way); never raises."""
        try:
            await self.client.execute("PING")
        except (RedisConnectionError, RedisError) as e:
            self._failed(e)
            return
        log.info("shared state in Redis %s (key prefix %r)", self.url.address, self.prefix)

    # ---- Store

    async def _remote(self, command: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """(True, reply) from Redis, or (False, None) while it is down or when this call fails
        (which starts an outage: the caller then falls back, or refuses when fail-closed)."""
        if not self.up:
            self.errors += 1
            return False, None
        try:
            return True, await command()
        except (RedisConnectionError, RedisError) as e:
            self._failed(e)
            return False, None

    def _refuse_if_closed(self) -> None:
        if self.fail_closed:
            raise StoreUnavailable()

    async def take(self, bucket: str, rate_per_s: float, burst: int) -> RateDecision:
        ok, reply = await self._remote(lambda: self.client.eval(TAKE, [self.prefix + "bucket:" + bucket],
                                                                [repr(float(rate_per_s)), int(burst)]))
        if ok:
            allowed, tokens = reply
            return rate_decision(bool(allowed), float(tokens), rate_per_s, burst)
        self._refuse_if_closed()
        return self.local.take_now(bucket, rate_per_s, burst)

    async def hincr(self, name: str, fields: dict[str, float], ttl_s: float | None = None) -> None:
        ok, _ = await self._remote(lambda: self._hincr(name, fields, ttl_s))
        if not ok:
            self.local.hincr_now(name, fields, ttl_s)
            self._remember(name, fields, ttl_s)
            # Redis up but refusing writes (OOM, read-only replica, loading): no outage retries them
            if self.up and not self._closed and (self._drain is None or self._drain.done()):
                self._drain = asyncio.ensure_future(self._drain_pending())

    async def _hincr(self, name: str, fields: dict[str, float], ttl_s: float | None) -> None:
        args: list = [0 if ttl_s is None else max(1, int(ttl_s * 1000))]
        for f, v in fields.items():
            args.append(f)
            args.append(repr(float(v)))
        await self.client.eval(HINCR, [self.prefix + "hash:" + name], args)

    async def hmget(self, name: str, fields: list[str]) -> list[float]:
        if not fields:
            return []
        ok, values = await self._remote(lambda: self.client.execute("HMGET", self.prefix + "hash:" + name, *fields))
        if ok:
            return [0.0 if v is None else float(v) for v in values]
        self._refuse_if_closed()
        return await self.local.hmget(name, fields)

    async def hgetall(self, name: str) -> dict[str, float]:
        ok, reply = await self._remote(lambda: self.client.execute("HGETALL", self.prefix + "hash:" + name))
        if ok:
            return {k.decode("utf-8", "replace"): float(v) for k, v in pairs(reply).items()}
        self._refuse_if_closed()
        return await self.local.hgetall(name)

    async def cache_get(self, key: str) -> bytes | None:
        ok, value = await self._remote(lambda: self.client.execute("GET", self.prefix + "cache:" + key))
        return value if ok else None

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._remote(lambda: self.client.execute("SET", self.prefix + "cache:" + key, value,
                                                       "PX", max(1, int(ttl_s * 1000))))

    def health(self) -> dict:
        # /health is anonymous by default: no address or error text here (the log has them)
        return {"kind": self.kind, "status": "ok" if self.up else "degraded", "errors": self.errors,
                "fail_closed": self.fail_closed}

    async def close(self) -> None:
        self._closed = True
        for task in (self._retry, self._drain):
            if task is not None:
                task.cancel()
        self._retry = self._drain = None
        await self.client.close()
