"""What every clasp.store.Store must do, written once: tests/test_store_contract.py runs these
checks against LocalStore and RedisStore (on tests/fakeredis.py), tests/real/test_redis_store.py
against RedisStore on a real redis-server.

Each check is ``async def check(store, advance)``; ``await advance(seconds)`` lets the store's time
pass (a fake clock, or a real sleep for a real server), so the numbers below are small."""

from __future__ import annotations

RATE = 2.0   # tokens per second: one token every 0.5 s
BURST = 3


async def bucket_allows_burst_then_refuses(store, advance):
    decisions = [await store.take("b", RATE, BURST) for _ in range(BURST + 1)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert all(d.limit == BURST for d in decisions)
    refused = decisions[-1]
    assert 0.3 < refused.retry_after_s <= 0.5          # one token at 2/s
    assert 1.3 < refused.reset_s <= 1.5                 # full again: three tokens
    assert decisions[0].retry_after_s == 0.0 and 0.3 < decisions[0].reset_s <= 0.5


async def bucket_refills_at_its_rate_and_caps_at_burst(store, advance):
    for _ in range(BURST):
        assert (await store.take("r", RATE, BURST)).allowed
    assert not (await store.take("r", RATE, BURST)).allowed
    await advance(0.55)                                 # one token back
    assert (await store.take("r", RATE, BURST)).allowed
    assert not (await store.take("r", RATE, BURST)).allowed   # a refusal consumes nothing ...
    await advance(0.55)
    assert (await store.take("r", RATE, BURST)).allowed       # ... so the next token is whole
    await advance(2.0)                                  # four tokens' time: capped at the burst of 3
    assert [(await store.take("r", RATE, BURST)).allowed for _ in range(BURST + 1)] == [True] * BURST + [False]


async def buckets_are_independent(store, advance):
    assert (await store.take("x", RATE, 1)).allowed
    assert not (await store.take("x", RATE, 1)).allowed
    assert (await store.take("y", RATE, 1)).allowed


async def counters_add_and_read(store, advance):
    await store.hincr("spend", {"a": 1.5, "b": 2})
    await store.hincr("spend", {"a": 1.0, "c": 0.25})
    assert await store.hmget("spend", ["a", "b", "c", "missing"]) == [2.5, 2.0, 0.25, 0.0]
    assert await store.hgetall("spend") == {"a": 2.5, "b": 2.0, "c": 0.25}
    assert await store.hmget("nothing", ["a"]) == [0.0]
    assert await store.hgetall("nothing") == {}
    assert await store.hmget("spend", []) == []


async def counters_expire_by_their_ttl(store, advance):
    await store.hincr("day", {"n": 1}, ttl_s=0.5)
    await store.hincr("kept", {"n": 1})
    await store.hincr("day", {"n": 1}, ttl_s=0.5)       # each update sets the time to live again
    assert await store.hmget("day", ["n"]) == [2.0]
    await advance(0.7)
    assert await store.hgetall("day") == {}
    assert await store.hmget("day", ["n"]) == [0.0]
    assert await store.hgetall("kept") == {"n": 1.0}


async def cache_keeps_bytes_until_the_ttl(store, advance):
    value = bytes(range(256)) + b"\r\n$-1\r\n"          # binary-safe, RESP-looking bytes too
    await store.cache_put("k", value, 0.5)
    assert await store.cache_get("k") == value
    assert await store.cache_get("other") is None
    await store.cache_put("k2", b"v2", 60)
    await store.cache_put("k2", b"v2 again", 60)        # a put replaces
    assert await store.cache_get("k2") == b"v2 again"
    await advance(0.7)
    assert await store.cache_get("k") is None
    assert await store.cache_get("k2") == b"v2 again"


async def health_says_ok(store, advance):
    h = store.health()
    assert h["status"] == "ok" and h["kind"] == store.kind


CHECKS = [bucket_allows_burst_then_refuses, bucket_refills_at_its_rate_and_caps_at_burst, buckets_are_independent,
          counters_add_and_read, counters_expire_by_their_ttl, cache_keeps_bytes_until_the_ttl, health_says_ok]
