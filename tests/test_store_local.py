"""LocalStore: the per-process implementation of clasp.store.Store."""

import asyncio

from clasp.store.local import LocalStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


def test_bucket_allows_burst_then_refills_at_rate():
    clock = Clock()
    store = LocalStore(clock=clock)
    decisions = [run(store.take("k", 1.0, 3)) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].remaining == 2 and decisions[3].retry_after_s > 0
    clock.t += 1.0
    assert run(store.take("k", 1.0, 3)).allowed
    assert run(store.take("other", 1.0, 3)).allowed  # buckets are independent


def test_hash_counters_add_and_expire():
    clock = Clock()
    store = LocalStore(clock=clock)
    run(store.hincr("spend:day", {"a": 1.5, "b": 2}, ttl_s=10))
    run(store.hincr("spend:day", {"a": 1.0}, ttl_s=10))
    assert run(store.hmget("spend:day", ["a", "b", "c"])) == [2.5, 2.0, 0.0]
    assert run(store.hgetall("spend:day")) == {"a": 2.5, "b": 2.0}
    clock.t += 11
    assert run(store.hgetall("spend:day")) == {}
    run(store.hincr("total", {"a": 1}))
    clock.t += 10 ** 6
    assert run(store.hmget("total", ["a"])) == [1.0]  # no ttl: kept


def test_cache_ttl_and_lru_bound():
    clock = Clock()
    store = LocalStore(clock=clock, cache_max_size=2)
    run(store.cache_put("a", b"1", 5))
    run(store.cache_put("b", b"2", 5))
    assert run(store.cache_get("a")) == b"1"
    run(store.cache_put("c", b"3", 5))  # evicts b, the least recently used
    assert run(store.cache_get("b")) is None
    clock.t += 6
    assert run(store.cache_get("a")) is None


def test_counter_expiry_bookkeeping_stays_bounded_by_the_hashes_not_the_updates():
    # spend books 4 hashes with a time to live on every request: the expiry schedule must hold one
    # entry per hash, not one per update (it grew by 4 entries a request, for 35 days)
    clock = Clock()
    store = LocalStore(clock=clock)
    for i in range(5000):
        store.hincr_now("day", {"n": 1.0}, ttl_s=100)
        store.hincr_now("month", {"n": 1.0}, ttl_s=1000)
        clock.t += 0.01
    assert len(store._expiry_heap) <= 4
    assert run(store.hmget("day", ["n"])) == [5000.0]
    # each update moves the expiry on: still there 99 s after the last one, gone after 100 s
    clock.t += 99
    assert run(store.hmget("day", ["n"])) == [5000.0]
    clock.t += 1.5
    store.hincr_now("other", {"n": 1.0})  # any update sweeps what expired
    store.hincr_now("other", {"n": 1.0})
    assert "day" not in store._hashes and run(store.hmget("day", ["n"])) == [0.0]
    assert run(store.hmget("month", ["n"])) == [5000.0]
    clock.t += 1000
    for _ in range(3):
        store.hincr_now("other", {"n": 1.0})
    assert store._hashes.keys() == {"other"} and not store._expiry_heap and not store._expires


def test_a_shorter_time_to_live_still_expires_the_hash_on_time():
    clock = Clock()
    store = LocalStore(clock=clock)
    store.hincr_now("h", {"n": 1.0}, ttl_s=1000)
    store.hincr_now("h", {"n": 1.0}, ttl_s=10)
    clock.t += 11
    store.hincr_now("other", {"n": 1.0})
    assert "h" not in store._hashes
    assert run(store.hgetall("h")) == {}
