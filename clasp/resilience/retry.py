"""Retry policy for upstream calls: how long to wait, and the retry loop.

Which outcomes are retryable is decided where upstream errors are classified
(``clasp.translate.errors.map_upstream_error``: status, error code, ``x-should-retry``).

Backoff is exponential with *equal jitter*: the n-th retry waits a random time in
``[d/2, d]`` where ``d = min(max_delay_s, base_delay_s * 2**n)``. Equal jitter (rather
than full jitter) keeps a guaranteed minimum pause, so a struggling upstream is never
hit again immediately, while still spreading concurrent clients apart. With a seeded
``rng`` the sequence is deterministic.

A wait requested by the upstream (``retry-after-ms``, then ``retry-after`` as seconds or
an HTTP-date) replaces the backoff, capped at ``max_retry_after_s`` so one response
cannot park a client request for minutes.

The proxy may only retry before any byte reached the client; the pipeline guarantees
that, this module does not know about responses at all.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Awaitable, Callable, Mapping, Optional, Tuple, TypeVar, Union

__all__ = ["RetryPolicy", "header_value"]

T = TypeVar("T")

# Far enough that 2**n cannot overflow a float; max_delay_s caps the result anyway.
_MAX_EXPONENT = 60


def header_value(headers: Optional[Mapping[str, str]], name: str) -> Optional[str]:
    """Case-insensitive header lookup; ``name`` must be lower-case.

    Upstream/server headers are lower-cased by contract, so the direct hit is the
    normal path; the scan only covers hand-built mappings (error path, cheap).
    """
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


class RetryPolicy:
    """Backoff and retryability rules, plus an async retry loop.

    ``max_retries`` counts retries, not attempts: 2 means up to 3 attempts.
    ``wall_clock`` (keyword-only, default ``time.time``) is only used to turn an
    HTTP-date ``retry-after`` into a duration; tests inject it.
    """

    __slots__ = ("max_retries", "base_delay_s", "max_delay_s", "max_retry_after_s", "_rng", "_wall_clock")

    def __init__(
        self,
        max_retries: int = 2,
        base_delay_s: float = 0.5,
        max_delay_s: float = 8.0,
        max_retry_after_s: float = 30.0,
        rng: Optional[random.Random] = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if base_delay_s < 0 or max_delay_s < 0 or max_retry_after_s < 0:
            raise ValueError("delays must be >= 0")
        self.max_retries = int(max_retries)
        self.base_delay_s = float(base_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self._rng = rng if rng is not None else random.Random()
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_retries={self.max_retries}, base_delay_s={self.base_delay_s}, "
            f"max_delay_s={self.max_delay_s}, max_retry_after_s={self.max_retry_after_s})"
        )

    # -- waiting -------------------------------------------------------------------

    def server_delay(self, headers: Optional[Mapping[str, str]]) -> Optional[float]:
        """Wait requested by the upstream in seconds (uncapped), or None if absent/invalid.

        ``retry-after-ms`` wins over ``retry-after`` (it is the more precise of the two).
        A date in the past means "now" (0.0).
        """
        if not headers:
            return None
        raw = header_value(headers, "retry-after-ms")
        if raw is not None:
            seconds = _parse_number(raw)
            if seconds is not None:
                return seconds / 1000.0
        raw = header_value(headers, "retry-after")
        if raw is None:
            return None
        seconds = _parse_number(raw)
        if seconds is not None:
            return seconds
        return self._seconds_until_http_date(raw)

    def delay(self, attempt: int, headers: Optional[Mapping[str, str]] = None) -> float:
        """Seconds to wait before the next try.

        ``attempt`` is the 0-based number of the attempt that just failed, so the first
        retry (after attempt 0) waits about ``base_delay_s``.
        """
        requested = self.server_delay(headers)
        if requested is not None:
            return min(requested, self.max_retry_after_s)
        exponent = min(max(int(attempt), 0), _MAX_EXPONENT)
        ceiling = min(self.max_delay_s, self.base_delay_s * (2.0 ** exponent))
        half = ceiling / 2.0
        return half + self._rng.random() * half

    def _seconds_until_http_date(self, raw: str) -> Optional[float]:
        try:
            from datetime import timezone  # rare: keep email/datetime out of start-up
            from email.utils import parsedate_to_datetime
            when = parsedate_to_datetime(raw.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:  # very old Pythons returned None for junk
            return None
        if when.tzinfo is None:
            # RFC 9110 dates are GMT; "-0000" parses as naive.
            when = when.replace(tzinfo=timezone.utc)
        try:
            target = when.timestamp()
        except (OverflowError, ValueError, OSError):
            return None
        return max(0.0, target - self._wall_clock())

    # -- the loop ------------------------------------------------------------------------

    async def call_with_retries(
        self,
        attempt_fn: Callable[[int], Awaitable[T]],
        classify: Callable[[Union[T, BaseException]], Tuple[bool, Optional[Mapping[str, str]]]],
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        on_retry: Optional[Callable[[int, float, Union[T, BaseException]], object]] = None,
    ) -> T:
        """Run ``attempt_fn(0)``, ``attempt_fn(1)``, ... until ``classify`` says stop.

        ``classify(outcome)`` gets the result or the raised exception and returns
        ``(retryable, headers)``; headers feed ``delay()`` (Retry-After). When the
        outcome is not retryable or retries are used up, the result is returned or the
        exception re-raised. ``on_retry(attempt_no, delay_s, outcome)`` runs before each
        sleep: the place to log and to release a discarded result (e.g. close an
        upstream response). Cancellation is never classified, it propagates at once.
        """
        attempt = 0
        while True:
            failed: Optional[BaseException] = None
            result: Optional[T] = None
            try:
                result = await attempt_fn(attempt)
                outcome: Union[T, BaseException] = result  # type: ignore[assignment]
            except Exception as exc:  # CancelledError is BaseException: not caught
                failed = exc
                outcome = exc
            retryable, headers = classify(outcome)
            if not retryable or attempt >= self.max_retries:
                if failed is not None:
                    raise failed
                return result  # type: ignore[return-value]
            wait = self.delay(attempt, headers)
            if on_retry is not None:
                on_retry(attempt, wait, outcome)
            # Drop references before sleeping so a discarded result can be collected.
            del outcome, result, failed
            await sleep(wait)
            attempt += 1


def _parse_number(raw: str) -> Optional[float]:
    """A non-negative finite number of (milli)seconds, or None."""
    try:
        value = float(raw.strip())
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value
