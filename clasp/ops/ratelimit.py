"""Per-client token-bucket rate limiting (CLASP `-rate-limit` / `CLASP_RATE_LIMIT*`).

Meaning of the settings (defaults as in CLASP: requests=60, window=60, burst=10):

* ``burst`` is the bucket capacity: how many requests a client can send back to back.
* ``requests`` per ``window_s`` is the sustained rate: the bucket refills at
  ``requests / window_s`` tokens per second (1/s with the defaults).

So with the defaults a client may fire 10 requests at once, then one per second.

Rejections carry ``retry-after`` (Claude Code honours it) and the Anthropic rate-limit headers.
``anthropic-ratelimit-requests-limit`` is the bucket capacity, so ``remaining`` never exceeds
``limit``, and ``...-reset`` is when the bucket is full again, as Anthropic defines it.

Memory stays bounded under many distinct clients: buckets live in an LRU (``max_clients``), buckets
that have refilled to full are dropped lazily (a full bucket is exactly what a new client gets, so
nothing is lost), and optionally buckets idle for ``idle_evict_s`` are dropped. Dropping a non-full
bucket because of ``max_clients`` hands that client a fresh bucket: a deliberate trade of precision
for bounded memory.

The proxy passes its clasp.store.Store (App.store): ``admit`` then takes from the store's bucket
``rate:<client>``, in this process (LocalStore, the same algorithm) or in Redis, shared by every
replica. ``acquire`` keeps the buckets here (no store).

Not thread-safe: meant to be called from the single asyncio event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from clasp.translate.errors import ProxyError

__all__ = ["RateLimiter", "RateDecision", "format_rfc3339", "rate_limit_headers"]

# Cap on front-of-LRU entries examined per acquire(), so one call never does unbounded work.
_SWEEP_PER_CALL = 4
# Store bucket names of this limiter: "rate:" + client identity (an address or a key fingerprint).
BUCKET_PREFIX = "rate:"
# Float slack so that e.g. 3 s at 1/3 token/s counts as one whole token.
_EPS = 1e-9


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int              # bucket capacity (burst)
    remaining: int          # whole requests left right now (after this one, if allowed)
    retry_after_s: float    # 0 when allowed; else seconds until one request is available
    reset_s: float          # seconds until the bucket is full again


def rate_decision(allowed: bool, tokens: float, rate_per_s: float, burst: int) -> RateDecision:
    """The decision of a token bucket of capacity ``burst`` refilled at ``rate_per_s``, holding
    ``tokens`` after this request (one token taken if ``allowed``)."""
    return RateDecision(allowed=allowed, limit=int(burst), remaining=int(tokens + _EPS),
                        retry_after_s=0.0 if allowed else max(0.0, 1.0 - tokens) / rate_per_s,
                        reset_s=max(0.0, burst - tokens) / rate_per_s)


_last_rfc3339: tuple[float, str] = (float("nan"), "")


def format_rfc3339(ts: float) -> str:
    """UTC RFC 3339 timestamp with whole seconds, e.g. ``2025-01-02T03:04:05Z``."""
    global _last_rfc3339
    last = _last_rfc3339
    if last[0] == ts:  # every response of the same second shows the same reset time
        return last[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    _last_rfc3339 = (ts, text)
    return text


class RateLimiter:
    def __init__(
        self,
        requests: int = 60,
        window_s: float = 60,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10000,
        idle_evict_s: float | None = None,
        wall: Callable[[], float] = time.time,
        store=None,
    ) -> None:
        if requests <= 0 or window_s <= 0:
            raise ValueError("rate limit requests and window must be positive")
        if burst < 1:
            raise ValueError("rate limit burst must be at least 1")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if idle_evict_s is not None and idle_evict_s <= 0:
            raise ValueError("idle_evict_s must be positive")
        self.requests = int(requests)
        self.window_s = float(window_s)
        self.burst = int(burst)
        self.rate = self.requests / self.window_s  # tokens per second
        self.max_clients = int(max_clients)
        self.idle_evict_s = idle_evict_s
        self._clock = clock
        self._wall = wall
        # A clasp.store.Store: admit() then takes from its buckets (shared by replicas with Redis);
        # without one, acquire() keeps the buckets here.
        self.store = store
        # key -> [tokens, last_update]; order = least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        """Buckets held in this process."""
        if self.store is not None:
            count = getattr(self.store, "bucket_count", None)
            return count() if count is not None else 0
        return len(self._buckets)

    def acquire(self, key: str) -> RateDecision:
        """Take one token from ``key``'s bucket if available."""
        now = self._clock()
        buckets = self._buckets
        capacity = float(self.burst)
        rate = self.rate
        b = buckets.get(key)
        if b is None:
            self._sweep(now)
            tokens = capacity
            b = [capacity, now]
            buckets[key] = b
            if len(buckets) > self.max_clients:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            elapsed = now - b[1]
            tokens = b[0]
            if elapsed > 0:
                tokens = min(capacity, tokens + elapsed * rate)
        allowed = tokens + _EPS >= 1.0
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        b[0] = tokens
        b[1] = now
        return rate_decision(allowed, tokens, rate, self.burst)

    def _sweep(self, now: float) -> None:
        """Drop a few least-recently-used buckets that are full again or idle too long."""
        buckets = self._buckets
        capacity = float(self.burst)
        rate = self.rate
        idle = self.idle_evict_s
        for _ in range(_SWEEP_PER_CALL):
            if not buckets:
                return
            key = next(iter(buckets))
            tokens, last = buckets[key]
            age = now - last
            if (idle is not None and age >= idle) or tokens + age * rate + _EPS >= capacity:
                del buckets[key]
            else:
                return

    async def admit(self, key: str) -> list[tuple[str, str]]:
        """One request from ``key``: the rate-limit headers for its response, or ProxyError 429
        (with retry-after and the same headers) when the bucket is empty. With a store, its bucket
        ``rate:<key>`` decides (a store that cannot decide may raise its own ProxyError, a 503)."""
        store = self.store
        if store is None:
            decision = self.acquire(key)
        else:
            decision = await store.take(BUCKET_PREFIX + key, self.rate, self.burst)
        headers = self.headers(decision)
        if not decision.allowed:
            raise ProxyError(429, "rate_limit_error", "rate limit exceeded for this client", dict(headers), False)
        return headers

    def headers(self, decision: RateDecision) -> list[tuple[str, str]]:
        """Response headers for ``decision`` (lower-case names)."""
        return rate_limit_headers(decision, self._wall())


def rate_limit_headers(decision: RateDecision, now: float) -> list[tuple[str, str]]:
    """Response headers for ``decision`` taken at wall-clock time ``now`` (lower-case names)."""
    out: list[tuple[str, str]] = []
    if not decision.allowed:
        out.append(("retry-after", str(max(1, math.ceil(decision.retry_after_s)))))
    # Round the reset instant up so the client never retries before the bucket is really full.
    reset_at = math.ceil(now + decision.reset_s)
    out.append(("anthropic-ratelimit-requests-limit", str(decision.limit)))
    out.append(("anthropic-ratelimit-requests-remaining", str(decision.remaining)))
    out.append(("anthropic-ratelimit-requests-reset", format_rfc3339(reset_at)))
    return out
