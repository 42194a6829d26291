"""Circuit breaker: stop sending requests to an upstream that keeps failing.

States (defaults from CLASP's CLASP_CIRCUIT_BREAKER_* settings):

* ``closed``    - requests pass; ``threshold`` (5) CONSECUTIVE failures open the circuit
                  (any success resets the streak).
* ``open``      - requests are rejected at once (the pipeline answers 503 with
                  ``retry_after_s()``) until ``timeout_s`` (30 s) has elapsed since opening.
* ``half_open`` - at most ``half_open_max`` probe requests in flight; ``recovery`` (2)
                  successes close the circuit, any failure re-opens it and restarts the timer.

What counts as a failure is the caller's decision (upstream 5xx/timeouts/connect
errors, not a client's 400). Single event loop, so no locking. Time comes from the
injected ``clock`` so tests never sleep.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

__all__ = ["CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a bounded half-open probe window."""

    __slots__ = (
        "threshold", "recovery", "timeout_s", "half_open_max", "_clock",
        "_state", "_failures", "_successes", "_probes", "_opened_at",
        "opened_count", "rejections",
    )

    def __init__(
        self,
        threshold: int = 5,
        recovery: int = 2,
        timeout_s: float = 30.0,
        half_open_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or recovery < 1 or half_open_max < 1:
            raise ValueError("threshold, recovery and half_open_max must be >= 1")
        if timeout_s < 0:
            raise ValueError("timeout_s must be >= 0")
        self.threshold = int(threshold)
        self.recovery = int(recovery)
        self.timeout_s = float(timeout_s)
        self.half_open_max = int(half_open_max)
        self._clock = clock
        self._state = CLOSED
        self._failures = 0      # consecutive failures while closed
        self._successes = 0     # successes while half-open
        self._probes = 0        # half-open requests in flight
        self._opened_at = 0.0
        self.opened_count = 0   # times the circuit tripped (closed/half_open -> open)
        self.rejections = 0     # requests refused by allow()

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failures={self._failures}, "
            f"opened_count={self.opened_count}, rejections={self.rejections})"
        )

    # -- state -------------------------------------------------------------------------

    def _refresh(self) -> None:
        # The open -> half_open move is time-driven, so it happens lazily on any read.
        if self._state == OPEN and self._clock() - self._opened_at >= self.timeout_s:
            self._state = HALF_OPEN
            self._successes = 0
            self._probes = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open turns half_open once the timeout elapsed)."""
        self._refresh()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until the circuit lets a probe through (0.0 unless open)."""
        self._refresh()
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.timeout_s - self._clock())

    def _trip(self) -> None:
        self._state = OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self._successes = 0
        self._probes = 0
        self.opened_count += 1

    # -- request lifecycle ---------------------------------------------------------------

    def allow(self) -> bool:
        """May a request go upstream now? A True in half_open takes a probe slot that
        must be given back by record_success(), record_failure() or release()."""
        self._refresh()
        state = self._state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self._probes < self.half_open_max:
            self._probes += 1
            return True
        self.rejections += 1
        return False

    def record_success(self) -> None:
        state = self._state
        if state == CLOSED:
            self._failures = 0
        elif state == HALF_OPEN:
            if self._probes > 0:
                self._probes -= 1
            self._successes += 1
            if self._successes >= self.recovery:
                self._state = CLOSED
                self._failures = 0
                self._successes = 0
                self._probes = 0
        # OPEN: a late success from a request admitted before the trip proves little;
        # the timeout and half-open probes decide recovery.

    def record_failure(self) -> None:
        state = self._state
        if state == CLOSED:
            self._failures += 1
            if self._failures >= self.threshold:
                self._trip()
        elif state == HALF_OPEN:
            self._trip()
        # OPEN: late failures of requests admitted before the trip must not keep
        # pushing the recovery timer out.

    def release(self) -> None:
        """A request ended without a verdict (client left, request invalid): free its
        half-open probe slot without counting a success or a failure."""
        if self._state == HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def snapshot(self) -> Dict[str, object]:
        """Plain-dict view for /metrics."""
        return {
            "state": self.state,
            "consecutive_failures": self._failures,
            "opened_count": self.opened_count,
            "rejections": self.rejections,
            "retry_after_s": self.retry_after_s(),
        }
