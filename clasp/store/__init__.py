"""Where state shared by requests lives: rate-limit buckets, spend counters, cached responses.

One interface, three places:

* ``LocalStore`` (store/local.py): this process only. The default; needs nothing.
* a worker-group store: the processes of one ``-workers N`` server share the parent's state.
* a Redis store: every replica (and every worker) behind a load balancer shares one Redis/Valkey.

Callers only use the methods of ``Store``; they never learn which one they talk to. The methods
are coroutines because the shared stores do I/O; the local one never suspends, so awaiting it
costs about a microsecond.

Counters are hashes of float fields (like Redis HINCRBYFLOAT): ``hincr`` adds to several fields of
one hash atomically and sets its time to live; ``hmget`` reads some fields (0.0 when missing);
``hgetall`` reads a whole hash. Names are plain strings; a store adds its own namespace prefix.

A shared store that cannot be reached falls back to per-process state (fail-open), or, set to
fail closed (-redis-fail-closed), raises a ProxyError (503) from the calls that decide whether a
request may proceed: ``take``, ``hmget`` and ``hgetall``. Callers let it propagate to the client.
"""

from __future__ import annotations

from typing import Protocol

from clasp.ops.ratelimit import RateDecision

__all__ = ["Store", "RateDecision"]


class Store(Protocol):
    kind: str  # "local", "group" or "redis": for /health and logs

    async def take(self, bucket: str, rate_per_s: float, burst: int) -> RateDecision:
        """Take one token from the token bucket ``bucket`` (capacity ``burst``, refilled at
        ``rate_per_s`` tokens per second; a new bucket starts full), atomically."""
        ...

    async def hincr(self, name: str, fields: dict[str, float], ttl_s: float | None = None) -> None:
        """Add each value to its field of hash ``name`` in one atomic step; with ``ttl_s`` the
        hash expires that many seconds after this update."""
        ...

    async def hmget(self, name: str, fields: list[str]) -> list[float]:
        """The values of ``fields`` in hash ``name`` (0.0 for a missing field or hash)."""
        ...

    async def hgetall(self, name: str) -> dict[str, float]:
        """All fields of hash ``name`` ({} when it does not exist or expired)."""
        ...

    async def cache_get(self, key: str) -> bytes | None:
        """A cached value, or None (missing, expired, or the store is unreachable)."""
        ...

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds (best effort)."""
        ...

    def health(self) -> dict:
        """{"kind": ..., "status": "ok" | "degraded", ...} for /health."""
        ...

    async def close(self) -> None:
        ...
