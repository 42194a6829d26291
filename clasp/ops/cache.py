"""Response cache (CLASP `-cache`, `-cache-max-size` default 1000, `-cache-ttl` default 3600 s).

CLASP caching rules: only non-streaming requests are cached, requests with temperature > 0 are not
(Anthropic's default temperature is 1.0, so the client must send ``temperature: 0`` explicitly),
LRU eviction when full, entries expire after the TTL, and responses carry ``X-CLASP-Cache: HIT|MISS``
(the header is the caller's job).

The entries live in a clasp.store.Store (LocalStore: an LRU bounded by -cache-max-size).
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["StoreCache", "cache_key", "is_cacheable"]


def cache_key(upstream_body: dict, target_id: str, requested_model: str) -> str:
    """Key for a translated request: what is sent, where it goes, and which model name is echoed back.

    The upstream body is serialized canonically (sorted keys, compact) so equal requests hash equal;
    target and requested model are part of the same JSON document, so no separator can be forged.
    """
    canonical = json.dumps(
        [target_id, requested_model, upstream_body], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_cacheable(anthropic_body: dict) -> bool:
    """Only deterministic requests: non-streaming with an explicit temperature of 0."""
    if anthropic_body.get("stream"):
        return False
    t = anthropic_body.get("temperature")
    # bool is an int subclass; `"temperature": false` is not a valid temperature of 0.
    return type(t) in (int, float) and t == 0


class StoreCache:
    """The response cache the proxy uses: CachedResponse values, serialized to bytes, in a
    clasp.store.Store (this process's LocalStore, bounded by ``max_size``; or Redis, shared by
    replicas and bounded by Redis' own memory policy). Counts hits and misses; the store counts
    evictions and expirations where it knows them."""

    def __init__(self, store, ttl_s: float = 3600, max_size: int = 1000) -> None:
        if max_size < 1:
            raise ValueError("cache max_size must be at least 1")
        if ttl_s <= 0:
            raise ValueError("cache ttl must be positive")
        self.store = store
        self.ttl_s = float(ttl_s)
        self.max_size = int(max_size)
        self.hits = 0
        self.misses = 0

    async def get(self, key: str):
        from clasp.pipeline.exchange import CachedResponse
        raw = await self.store.cache_get(key)
        value = CachedResponse.from_bytes(raw) if raw is not None else None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value

    async def put(self, key: str, value) -> None:
        await self.store.cache_put(key, value.to_bytes(), self.ttl_s)

    def stats(self) -> dict:
        """Counters for /metrics; size and evictions where the store knows them (LocalStore)."""
        out = {"hits": self.hits, "misses": self.misses, "size": 0, "max_size": 0}
        local = getattr(self.store, "cache_stats", None)
        if local is not None:
            out.update(local())
        return out
