"""The store of one process: token buckets, counter hashes and a cache in memory.

Memory stays bounded: buckets and cached values live in LRUs, and counter hashes expire by their time to live (swept a few at a time).
Not thread-safe: meant to be called from the single asyncio event loop.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from typing import Callable

from clasp.ops.ratelimit import RateDecision, rate_decision

__all__ = ["LocalStore"]

_EPS = 1e-9
_SWEEP_PER_CALL = 4
_PURGE_PER_PUT = 4  # expired cache entries reclaimed per cache_put


class LocalStore:
    kind = "local"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 10000,
                 cache_max_size: int = 1000) -> None:
        self._clock = clock
        self.max_buckets = max_buckets
        # bucket -> [tokens, last_update, rate, burst]; least recently used first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._hashes: dict[str, dict[str, float]] = {}
        self._expires: dict[str, float] = {}
        # When to look at a hash with a time to live again: one entry per hash (its time in
        # _scheduled), moved on when it is looked at, so the heap grows with the hashes, not the updates
        self._expiry_heap: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        self.cache_max_size = cache_max_size
        # key -> (expires_at, value); least recently used first
        self._cache: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.cache_evictions = 0    # removed to make room (LRU)
        self.cache_expirations = 0  # removed because their time to live passed

    # token buckets

    def take_now(self, bucket: str, rate_per_s: float, burst: int) -> RateDecision:
        """``take`` without the coroutine (for callers that are not async)."""
        now = self._clock()
        buckets = self._buckets
        capacity = float(burst)
        b = buckets.get(bucket)
        if b is None:
            self._sweep_buckets(now)
            tokens = capacity
            b = [capacity, now, rate_per_s, capacity]
            buckets[bucket] = b
            if len(buckets) > self.max_buckets:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(bucket)
            tokens = min(capacity, b[0] + max(0.0, now - b[1]) * rate_per_s)
        allowed = tokens + _EPS >= 1.0
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        b[0], b[1], b[2], b[3] = tokens, now, rate_per_s, capacity
        return rate_decision(allowed, tokens, rate_per_s, burst)

    async def take(self, bucket: str, rate_per_s: float, burst: int) -> RateDecision:
        return self.take_now(bucket, rate_per_s, burst)

    def _sweep_buckets(self, now: float) -> None:
        """Drop a few least-recently-used buckets that are full again (a new bucket is full too)."""
        buckets = self._buckets
        for _ in range(_SWEEP_PER_CALL):
            if not buckets:
                return
            key = next(iter(buckets))
            tokens, last, rate, capacity = buckets[key]
            if tokens + (now - last) * rate + _EPS >= capacity:
                del buckets[key]
            else:
                return

    # counter hashes

    def _live(self, name: str, now: float) -> dict[str, float] | None:
        expires = self._expires.get(name)
        if expires is not None and now >= expires:
            self._hashes.pop(name, None)
            del self._expires[name]
            return None
        return self._hashes.get(name)

    def hincr_now(self, name: str, fields: dict[str, float], ttl_s: float | None = None) -> None:
        now = self._clock()
        heap = self._expiry_heap
        if heap and heap[0][0] <= now:
            self._sweep_hashes(now)
        expires = self._expires.get(name)  # _live, inline: spend books 5 hashes per request
        if expires is not None and now >= expires:
            self._hashes.pop(name, None)
            del self._expires[name]
            h = None
        else:
            h = self._hashes.get(name)
        if h is None:
            h = self._hashes[name] = {}
        for field, value in fields.items():
            h[field] = h.get(field, 0.0) + value
        if ttl_s is not None:
            expires = now + ttl_s
            self._expires[name] = expires
            scheduled = self._scheduled.get(name)
            if scheduled is None or expires < scheduled:
                self._scheduled[name] = expires
                heapq.heappush(self._expiry_heap, (expires, name))

    async def hincr(self, name: str, fields: dict[str, float], ttl_s: float | None = None) -> None:
        self.hincr_now(name, fields, ttl_s)

    async def hmget(self, name: str, fields: list[str]) -> list[float]:
        h = self._live(name, self._clock()) or {}
        return [h.get(f, 0.0) for f in fields]

    async def hgetall(self, name: str) -> dict[str, float]:
        return dict(self._live(name, self._clock()) or {})

    def _sweep_hashes(self, now: float) -> None:
        heap = self._expiry_heap
        scheduled = self._scheduled
        for _ in range(_SWEEP_PER_CALL):
            if not heap or heap[0][0] > now:
                return
            at, name = heapq.heappop(heap)
            if scheduled.get(name) != at:
                continue  # superseded by an earlier time (a shorter time to live)
            del scheduled[name]
            if self._live(name, now) is not None:  # dropped if its current expiry has passed
                expires = self._expires.get(name)
                if expires is not None:  # updated since: look again then
                    scheduled[name] = expires
                    heapq.heappush(heap, (expires, name))

    # cache

    async def cache_get(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._cache[key]
            self.cache_expirations += 1
            return None
        self._cache.move_to_end(key)
        return entry[1]

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        cache = self._cache
        now = self._clock()
        cache[key] = (now + ttl_s, value)
        cache.move_to_end(key)
        # Expired entries still take room: reclaim a few stale ones at the cold end first
        # (a few only, so one call never does unbounded work).
        for _ in range(_PURGE_PER_PUT):
            oldest = next(iter(cache))
            if oldest == key or now < cache[oldest][0]:
                break
            del cache[oldest]
            self.cache_expirations += 1
        while len(cache) > self.cache_max_size:
            cache.popitem(last=False)
            self.cache_evictions += 1

    def cache_stats(self) -> dict:
        """Size and removals of the cache, for /metrics."""
        return {"size": len(self._cache), "max_size": self.cache_max_size, "evictions": self.cache_evictions,
                "expirations": self.cache_expirations}

    def bucket_count(self) -> int:
        """Token buckets held (full ones are dropped lazily)."""
        return len(self._buckets)

    def health(self) -> dict:
        return {"kind": self.kind, "status": "ok"}

    async def close(self) -> None:
        pass
