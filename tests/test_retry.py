from __future__ import annotations

import asyncio
import random
from email.utils import formatdate

import pytest

from clasp.resilience.retry import RetryPolicy

NOW = 1_700_000_000.0


def policy(**kw) -> RetryPolicy:
    kw.setdefault("rng", random.Random(7))
    kw.setdefault("wall_clock", lambda: NOW)
    return RetryPolicy(**kw)


class FixedRandom(random.Random):
    """rng whose random() always returns one value, to pin the jitter edges."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_then_caps_at_max_delay():
    # random() == 1.0 gives the top of the equal-jitter range: the ceiling itself.
    p = RetryPolicy(base_delay_s=0.5, max_delay_s=8.0, rng=FixedRandom(1.0))
    assert [p.delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert p.delay(10_000) == 8.0  # huge attempt numbers neither overflow nor exceed the cap


def test_equal_jitter_keeps_at_least_half_the_ceiling():
    p = RetryPolicy(base_delay_s=0.5, max_delay_s=8.0, rng=FixedRandom(0.0))
    assert [p.delay(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_jitter_stays_in_bounds_and_varies():
    p = policy(base_delay_s=1.0, max_delay_s=8.0)
    for attempt in range(6):
        ceiling = min(8.0, 2.0 ** attempt)
        samples = [p.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 100  # really jittered, not a constant


def test_seeded_rng_makes_delays_reproducible():
    a = RetryPolicy(rng=random.Random(42))
    b = RetryPolicy(rng=random.Random(42))
    assert [a.delay(n) for n in range(5)] == [b.delay(n) for n in range(5)]


# -- server-requested waits ----------------------------------------------------------------


def test_retry_after_seconds_replaces_backoff():
    p = policy()
    assert p.delay(0, {"retry-after": "7"}) == 7.0
    assert p.delay(3, {"retry-after": "1.5"}) == 1.5
    assert p.delay(0, {"retry-after": "0"}) == 0.0


def test_retry_after_ms_wins_over_retry_after():
    p = policy()
    assert p.delay(0, {"retry-after-ms": "250", "retry-after": "20"}) == 0.25


def test_retry_after_http_date_uses_wall_clock():
    p = policy()
    in_12s = formatdate(NOW + 12, usegmt=True)
    assert p.delay(0, {"retry-after": in_12s}) == pytest.approx(12.0)
    in_past = formatdate(NOW - 100, usegmt=True)
    assert p.delay(0, {"retry-after": in_past}) == 0.0


def test_retry_after_is_capped():
    p = policy(max_retry_after_s=30.0)
    assert p.delay(0, {"retry-after": "3600"}) == 30.0
    assert p.delay(0, {"retry-after-ms": "90000"}) == 30.0
    assert p.delay(0, {"retry-after": formatdate(NOW + 3600, usegmt=True)}) == 30.0


def test_invalid_retry_after_falls_back_to_backoff():
    p = RetryPolicy(base_delay_s=0.5, rng=FixedRandom(1.0), wall_clock=lambda: NOW)
    for headers in ({"retry-after": "soon"}, {"retry-after": "-5"}, {"retry-after-ms": "nan"},
                    {"retry-after-ms": "inf"}, {}, None):
        assert p.delay(1, headers) == 1.0, headers
    # a bad retry-after-ms does not hide a good retry-after
    assert p.delay(1, {"retry-after-ms": "x", "retry-after": "3"}) == 3.0


def test_header_names_are_case_insensitive():
    p = policy()
    assert p.delay(0, {"Retry-After": "4"}) == 4.0


def test_invalid_configuration_rejected():
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay_s=-0.1)


# -- call_with_retries ---------------------------------------------------------------------------


class Resp:
    def __init__(self, status: int, headers=None):
        self.status = status
        self.headers = headers or {}
        self.closed = False


def classify_resp(p: RetryPolicy):
    def classify(outcome):
        if isinstance(outcome, BaseException):
            return isinstance(outcome, ConnectionError), None
        return outcome.status >= 500, outcome.headers
    return classify


def test_call_with_retries_succeeds_after_failures():
    p = RetryPolicy(max_retries=3, base_delay_s=0.5, rng=FixedRandom(1.0))
    outcomes = [ConnectionError("refused"), Resp(503, {"retry-after": "2"}), Resp(200)]
    seen_attempts, slept, retried = [], [], []

    async def attempt(n):
        seen_attempts.append(n)
        item = outcomes[n]
        if isinstance(item, BaseException):
            raise item
        return item

    async def fake_sleep(d):
        slept.append(d)

    def on_retry(n, d, outcome):
        retried.append((n, d, type(outcome).__name__))
        if isinstance(outcome, Resp):
            outcome.closed = True  # the caller releases discarded responses here

    result = asyncio.run(p.call_with_retries(attempt, classify_resp(p), sleep=fake_sleep, on_retry=on_retry))
    assert result.status == 200
    assert seen_attempts == [0, 1, 2]
    # backoff after the connect error, then the upstream's Retry-After
    assert slept == [0.5, 2.0]
    assert retried == [(0, 0.5, "ConnectionError"), (1, 2.0, "Resp")]
    assert outcomes[1].closed is True


def test_call_with_retries_exhaustion_returns_last_result():
    p = RetryPolicy(max_retries=2, rng=FixedRandom(1.0))
    calls = []

    async def attempt(n):
        calls.append(n)
        return Resp(529, {"x-attempt": str(n)})

    async def fake_sleep(d):
        pass

    result = asyncio.run(p.call_with_retries(attempt, classify_resp(p), sleep=fake_sleep))
    assert calls == [0, 1, 2]  # max_retries=2 -> 3 attempts
    assert result.status == 529 and result.headers["x-attempt"] == "2"


def test_call_with_retries_exhaustion_raises_last_exception():
    p = RetryPolicy(max_retries=2, rng=FixedRandom(1.0))

    async def attempt(n):
        raise ConnectionError(f"refused #{n}")

    async def fake_sleep(d):
        pass

    with pytest.raises(ConnectionError, match="refused #2"):
        asyncio.run(p.call_with_retries(attempt, classify_resp(p), sleep=fake_sleep))


def test_call_with_retries_stops_on_non_retryable():
    p = RetryPolicy(max_retries=5)
    calls = []

    async def attempt(n):
        calls.append(n)
        if n == 0:
            return Resp(500)
        return Resp(401)

    async def fake_sleep(d):
        pass

    result = asyncio.run(p.call_with_retries(attempt, classify_resp(p), sleep=fake_sleep))
    assert result.status == 401 and calls == [0, 1]

    async def boom(n):
        calls.append(n)
        raise ValueError("bad body")  # not retryable per classify

    calls.clear()
    with pytest.raises(ValueError):
        asyncio.run(p.call_with_retries(boom, classify_resp(p), sleep=fake_sleep))
    assert calls == [0]


def test_call_with_retries_zero_retries_makes_one_attempt():
    p = RetryPolicy(max_retries=0)
    calls = []

    async def attempt(n):
        calls.append(n)
        return Resp(503)

    async def fake_sleep(d):
        raise AssertionError("must not sleep")

    assert asyncio.run(p.call_with_retries(attempt, classify_resp(p), sleep=fake_sleep)).status == 503
    assert calls == [0]


def test_call_with_retries_cancellation_is_not_retried():
    p = RetryPolicy(max_retries=3)
    calls = []

    async def attempt(n):
        calls.append(n)
        raise asyncio.CancelledError()

    def classify(outcome):
        raise AssertionError("cancellation must not be classified")

    async def main():
        await p.call_with_retries(attempt, classify)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert calls == [0]
