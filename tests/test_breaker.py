from __future__ import annotations

import pytest

from clasp.resilience.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw):
    clock = Clock()
    return CircuitBreaker(clock=clock, **kw), clock


def trip(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        assert b.allow()
        b.record_failure()


def test_defaults_match_clasp():
    b = CircuitBreaker()
    assert (b.threshold, b.recovery, b.timeout_s, b.half_open_max) == (5, 2, 30.0, 1)
    assert b.state == "closed"


def test_opens_after_threshold_consecutive_failures():
    b, clock = make(threshold=3)
    trip(b, 2)
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open"
    assert b.opened_count == 1
    assert b.allow() is False and b.allow() is False
    assert b.rejections == 2


def test_success_resets_the_failure_streak():
    b, _ = make(threshold=3)
    trip(b, 2)
    b.record_success()
    trip(b, 2)
    assert b.state == "closed"  # 4 failures, but never 3 in a row
    b.record_failure()
    assert b.state == "open"


def test_full_cycle_closed_open_half_open_closed():
    b, clock = make(threshold=2, recovery=2, timeout_s=30.0)
    trip(b, 2)
    assert b.state == "open"
    assert b.retry_after_s() == 30.0
    clock.now += 29.5
    assert b.allow() is False
    assert b.retry_after_s() == pytest.approx(0.5)
    clock.now += 0.5
    assert b.state == "half_open"
    assert b.retry_after_s() == 0.0
    assert b.allow() is True           # probe 1
    assert b.allow() is False          # only one probe in flight
    b.record_success()
    assert b.state == "half_open"      # 1 of 2 recovery successes
    assert b.allow() is True           # probe 2
    b.record_success()
    assert b.state == "closed"
    assert all(b.allow() for _ in range(10))
    assert b.opened_count == 1
    assert b.rejections == 2


def test_half_open_failure_reopens_and_restarts_timer():
    b, clock = make(threshold=1, timeout_s=10.0)
    trip(b, 1)
    clock.now += 10
    assert b.allow() is True and b.state == "half_open"
    clock.now += 4  # the probe took 4 s
    b.record_failure()
    assert b.state == "open"
    assert b.opened_count == 2
    assert b.retry_after_s() == 10.0   # timer counted from the re-open, not the first trip
    clock.now += 9.9
    assert b.allow() is False
    clock.now += 0.1
    assert b.allow() is True


def test_half_open_failure_after_partial_recovery_reopens():
    b, clock = make(threshold=1, recovery=3, timeout_s=5.0)
    trip(b, 1)
    clock.now += 5
    assert b.allow()
    b.record_success()
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    clock.now += 5
    # recovery starts from zero again: three fresh successes needed
    for _ in range(2):
        assert b.allow()
        b.record_success()
    assert b.state == "half_open"
    assert b.allow()
    b.record_success()
    assert b.state == "closed"


def test_probe_limit_with_several_slots():
    b, clock = make(threshold=1, recovery=5, timeout_s=1.0, half_open_max=3)
    trip(b, 1)
    clock.now += 1
    assert [b.allow() for _ in range(5)] == [True, True, True, False, False]
    b.record_success()
    assert b.allow() is True and b.allow() is False


def test_release_frees_a_probe_slot_without_a_verdict():
    b, clock = make(threshold=1, recovery=1, timeout_s=1.0)
    trip(b, 1)
    clock.now += 1
    assert b.allow() is True
    assert b.allow() is False
    b.release()                        # the client left mid-probe
    assert b.state == "half_open"      # neither success nor failure was counted
    assert b.allow() is True
    b.record_success()
    assert b.state == "closed"


def test_release_without_probe_in_flight_is_harmless():
    b, clock = make(threshold=1, timeout_s=1.0)
    b.release()
    assert b.state == "closed"
    trip(b, 1)
    clock.now += 1
    b.release()                        # no probe taken yet: slot count must not go negative
    assert [b.allow(), b.allow()] == [True, False]


def test_late_outcomes_while_open_do_not_move_the_timer_or_close():
    b, clock = make(threshold=2, timeout_s=10.0)
    assert b.allow() and b.allow() and b.allow()   # three requests in flight
    b.record_failure()
    b.record_failure()
    assert b.state == "open"
    clock.now += 6
    b.record_failure()                 # third request fails late
    b.record_success()                 # ...or another one succeeds late
    assert b.state == "open"
    assert b.retry_after_s() == pytest.approx(4.0)
    assert b.opened_count == 1


def test_snapshot_for_metrics():
    b, clock = make(threshold=1, timeout_s=3.0)
    trip(b, 1)
    b.allow()
    snap = b.snapshot()
    assert snap == {"state": "open", "consecutive_failures": 0, "opened_count": 1,
                    "rejections": 1, "retry_after_s": 3.0}


def test_invalid_configuration_rejected():
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_max=0)
