from __future__ import annotations

import asyncio
import json

import pytest

from clasp.ops.cache import StoreCache, cache_key, is_cacheable
from clasp.pipeline.exchange import CachedResponse
from clasp.store.local import LocalStore


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


class ResponseCache:
    """The proxy's response cache as it runs (StoreCache over this process's LocalStore), driven
    synchronously; values are any JSON, kept as a CachedResponse body."""

    def __init__(self, max_size: int = 1000, ttl_s: float = 3600, clock=None) -> None:
        self.store = LocalStore(clock=clock or Clock(), cache_max_size=max_size)
        self.cache = StoreCache(self.store, ttl_s, max_size)
        self.max_size, self.ttl_s = self.cache.max_size, self.cache.ttl_s

    def get(self, key: str):
        hit = asyncio.run(self.cache.get(key))
        return None if hit is None else json.loads(hit.body)

    def put(self, key: str, value) -> None:
        asyncio.run(self.cache.put(key, CachedResponse(json.dumps(value).encode(), "p", "m")))

    def __len__(self) -> int:
        return self.stats()["size"]

    def stats(self) -> dict:
        return self.cache.stats()


def test_defaults_match_clasp():
    c = ResponseCache()
    assert c.max_size == 1000 and c.ttl_s == 3600


def test_hit_and_miss_counting():
    c = ResponseCache(clock=Clock())
    assert c.get("k") is None
    c.put("k", "resp")
    assert c.get("k") == "resp"
    assert c.get("k") == "resp"
    s = c.stats()
    assert (s["hits"], s["misses"], s["size"], s["max_size"], s["evictions"]) == (2, 1, 1, 1000, 0)


def test_lru_eviction_order():
    c = ResponseCache(max_size=3, clock=Clock())
    for k in "abc":
        c.put(k, k.upper())
    assert c.get("a") == "A"     # a becomes most recently used; b is now the oldest
    c.put("d", "D")
    assert c.get("b") is None
    assert [c.get(k) for k in "acd"] == ["A", "C", "D"]
    c.put("e", "E")              # oldest is now a (a, c, d were read in that order)
    assert c.get("a") is None
    assert len(c) == 3
    assert c.stats()["evictions"] == 2


def test_put_existing_key_replaces_without_eviction():
    c = ResponseCache(max_size=2, clock=Clock())
    c.put("a", 1)
    c.put("b", 2)
    c.put("a", 3)
    assert len(c) == 2 and c.stats()["evictions"] == 0
    assert c.get("a") == 3
    c.put("c", 4)                # b is least recently used
    assert c.get("b") is None and c.get("a") == 3


def test_ttl_expiry_counts_as_miss_and_removes():
    clock = Clock()
    c = ResponseCache(ttl_s=10, clock=clock)
    c.put("k", "v")
    clock.t += 9.9
    assert c.get("k") == "v"
    clock.t += 0.1               # exactly at the TTL: expired
    assert c.get("k") is None
    assert len(c) == 0
    s = c.stats()
    assert s["hits"] == 1 and s["misses"] == 1 and s["expirations"] == 1


def test_reading_does_not_extend_ttl():
    clock = Clock()
    c = ResponseCache(ttl_s=10, clock=clock)
    c.put("k", "v")
    for _ in range(3):
        clock.t += 4
        c.get("k")
    assert c.get("k") is None    # 12 s after put


def test_put_reclaims_expired_entries():
    clock = Clock()
    c = ResponseCache(max_size=100, ttl_s=10, clock=clock)
    for i in range(8):
        c.put(f"old{i}", i)
    clock.t += 11
    c.put("new1", 1)
    c.put("new2", 2)
    assert len(c) == 2
    assert c.stats()["evictions"] == 0 and c.stats()["expirations"] == 8


def test_invalid_settings():
    with pytest.raises(ValueError):
        ResponseCache(max_size=0)
    with pytest.raises(ValueError):
        ResponseCache(ttl_s=0)


def test_cache_key_canonical_and_discriminating():
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    reordered = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o"}
    k = cache_key(body, "openai", "claude-sonnet-4-5")
    assert k == cache_key(reordered, "openai", "claude-sonnet-4-5")
    assert len(k) == 64 and int(k, 16) >= 0
    assert k != cache_key(body, "openrouter", "claude-sonnet-4-5")
    assert k != cache_key(body, "openai", "claude-opus-4-1")
    changed = dict(body, messages=[{"role": "user", "content": "hi!"}])
    assert k != cache_key(changed, "openai", "claude-sonnet-4-5")
    # Target and model boundaries cannot be shifted to collide.
    assert cache_key(body, "ab", "c") != cache_key(body, "a", "bc")


def test_cache_key_does_not_mutate_body():
    body = {"b": 1, "a": [3, 2, 1]}
    cache_key(body, "t", "m")
    assert list(body) == ["b", "a"] and body["a"] == [3, 2, 1]


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0, "stream": False}, True),
        ({}, False),                              # absent means 1.0
        ({"temperature": None}, False),
        ({"temperature": 0.2}, False),
        ({"temperature": 1}, False),
        ({"temperature": 0, "stream": True}, False),
        ({"temperature": False}, False),
        ({"temperature": "0"}, False),
    ],
)
def test_is_cacheable(body, expected):
    body = dict(body, model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "x"}])
    assert is_cacheable(body) is expected
