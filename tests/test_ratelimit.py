from __future__ import annotations

import calendar
import time

import pytest

from clasp.ops.ratelimit import RateLimiter, format_rfc3339


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


WALL0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def make(**kw):
    clock = Clock()
    rl = RateLimiter(clock=clock, wall=lambda: WALL0 + (clock.t - 1000.0), **kw)
    return rl, clock


def parse_rfc3339(s: str) -> float:
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


def test_defaults_match_clasp():
    rl = RateLimiter()
    assert (rl.requests, rl.window_s, rl.burst) == (60, 60.0, 10)
    assert rl.rate == 1.0


def test_burst_then_reject():
    rl, _ = make(requests=60, window_s=60, burst=10)
    decisions = [rl.acquire("a") for _ in range(10)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == list(range(9, -1, -1))
    assert all(d.limit == 10 for d in decisions)
    d = rl.acquire("a")
    assert not d.allowed
    assert d.remaining == 0
    assert d.retry_after_s == pytest.approx(1.0)
    assert d.reset_s == pytest.approx(10.0)


def test_refill_over_time_at_requests_per_window():
    rl, clock = make(requests=30, window_s=60, burst=2)   # 0.5 token/s
    assert rl.acquire("a").allowed
    assert rl.acquire("a").allowed
    d = rl.acquire("a")
    assert not d.allowed and d.retry_after_s == pytest.approx(2.0)
    clock.advance(1.0)
    d = rl.acquire("a")
    assert not d.allowed and d.retry_after_s == pytest.approx(1.0)
    clock.advance(1.0)
    d = rl.acquire("a")
    assert d.allowed and d.remaining == 0
    # Sustained: one request every 2 s is always allowed, faster is not.
    for _ in range(5):
        clock.advance(2.0)
        assert rl.acquire("a").allowed
    clock.advance(1.0)
    assert not rl.acquire("a").allowed


def test_refill_caps_at_burst():
    rl, clock = make(requests=60, window_s=60, burst=3)
    for _ in range(3):
        rl.acquire("a")
    clock.advance(3600)
    results = [rl.acquire("a").allowed for _ in range(4)]
    assert results == [True, True, True, False]


def test_rejection_does_not_consume():
    rl, clock = make(requests=1, window_s=1, burst=1)
    assert rl.acquire("a").allowed
    for _ in range(5):
        assert not rl.acquire("a").allowed
    clock.advance(1.0)
    assert rl.acquire("a").allowed


def test_buckets_are_per_client():
    rl, _ = make(burst=1)
    assert rl.acquire("alice").allowed
    assert not rl.acquire("alice").allowed
    assert rl.acquire("bob").allowed


def test_headers_when_allowed():
    rl, _ = make(requests=60, window_s=60, burst=10)
    d = rl.acquire("a")
    h = dict(rl.headers(d))
    assert "retry-after" not in h
    assert h["anthropic-ratelimit-requests-limit"] == "10"
    assert h["anthropic-ratelimit-requests-remaining"] == "9"
    # Full again one second from now (1 token at 1/s).
    assert parse_rfc3339(h["anthropic-ratelimit-requests-reset"]) == WALL0 + 1
    assert h["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:21Z"


def test_headers_when_rejected():
    rl, clock = make(requests=1, window_s=4, burst=1)   # 0.25 token/s
    rl.acquire("a")
    clock.advance(0.5)
    d = rl.acquire("a")
    assert not d.allowed
    h = rl.headers(d)
    names = [k for k, _ in h]
    assert names[0] == "retry-after"
    hd = dict(h)
    assert hd["retry-after"] == "4"                       # 3.5 s rounded up
    assert hd["anthropic-ratelimit-requests-remaining"] == "0"
    assert parse_rfc3339(hd["anthropic-ratelimit-requests-reset"]) == WALL0 + 4  # 0.5 + 3.5, rounded up
    assert all(k == k.lower() for k in names)


def test_retry_after_is_at_least_one_second():
    rl, clock = make(requests=100, window_s=1, burst=1)   # 100 tokens/s
    rl.acquire("a")
    d = rl.acquire("a")
    assert not d.allowed and d.retry_after_s < 0.02
    assert dict(rl.headers(d))["retry-after"] == "1"


def test_format_rfc3339():
    assert format_rfc3339(0) == "1970-01-01T00:00:00Z"


def test_max_clients_bounds_memory_with_100k_distinct_keys():
    rl, _ = make(max_clients=1000)
    for i in range(100_000):
        assert rl.acquire(f"client-{i}").allowed
    assert len(rl) <= 1000


def test_lru_keeps_recent_clients():
    rl, _ = make(burst=1, max_clients=3)
    for k in ("a", "b", "c"):
        rl.acquire(k)
    rl.acquire("a")            # a is rejected but now most recently used
    rl.acquire("d")            # evicts b (least recently used), not a
    assert len(rl) == 3
    assert not rl.acquire("a").allowed     # a's empty bucket survived
    assert rl.acquire("b").allowed         # b got a fresh bucket


def test_full_buckets_are_dropped_lazily():
    rl, clock = make(requests=60, window_s=60, burst=10)
    for i in range(1000):
        rl.acquire(f"c{i}")
    assert len(rl) == 1000
    clock.advance(1.0)          # every bucket is full again (9 + 1 tokens)
    for i in range(1000):
        rl.acquire(f"n{i}")
    # Each new client sweeps several full buckets off the cold end, so the old ones are gone.
    assert len(rl) == 1000
    assert not any(k.startswith("c") for k in rl._buckets)


def test_non_full_buckets_are_not_dropped_by_the_sweep():
    rl, clock = make(requests=60, window_s=60, burst=10)
    for _ in range(10):
        rl.acquire("heavy")
    clock.advance(1.0)
    rl.acquire("other")
    d = rl.acquire("heavy")
    assert d.allowed and d.remaining == 0   # 1 token refilled and spent: the state was kept


def test_idle_eviction():
    rl, clock = make(requests=1, window_s=3600, burst=5, idle_evict_s=60)
    for _ in range(5):
        rl.acquire("a")
    assert not rl.acquire("a").allowed
    clock.advance(61)
    rl.acquire("b")             # a new client triggers the sweep
    assert "a" not in rl._buckets
    assert rl.acquire("a").allowed


@pytest.mark.parametrize(
    "kw", [{"requests": 0}, {"window_s": 0}, {"burst": 0}, {"max_clients": 0}, {"idle_evict_s": 0}]
)
def test_invalid_settings(kw):
    with pytest.raises(ValueError):
        RateLimiter(**kw)


def test_fractional_rate_refills_whole_tokens_exactly():
    rl, clock = make(requests=20, window_s=60, burst=1)   # one token every 3 s
    assert rl.acquire("a").allowed
    for _ in range(10):
        assert not rl.acquire("a").allowed
        clock.advance(3.0)
        d = rl.acquire("a")
        assert d.allowed and d.remaining == 0
