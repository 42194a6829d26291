"""Bounded FIFO wait room for requests whose provider is currently unavailable.

Defaults follow CLASP's CLASP_QUEUE_* settings: 100 entries, 30 s maximum wait, 1 s
between retries, 3 retries per request.

The caller enters the queue after it has already seen the provider unavailable, so
each round is: sleep ``retry_delay_s`` (never past the entry's deadline), wait for this
entry's turn, then call ``attempt()``.

Ordering: entries start their n-th retry in arrival order - an entry may start round n
only once every entry ahead of it has started its own round n. Only the *start* of
attempts is ordered; attempts themselves run concurrently, so one slow upstream call
does not serialize the whole room. Because every entry sleeps the same delay after its
previous attempt, waiting for the turn is normally instant; it only matters when an
entry ahead is slower (e.g. its attempt hung on a connect timeout).

Every entry leaves the room in a ``finally``: on success, on a terminal error, on
timeout and when the waiting task is cancelled (the client disconnected), so a
departed request never holds a slot or blocks the entries behind it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Awaitable, Callable, Dict, Optional, TypeVar, Union

__all__ = ["QueueFull", "QueueTimeout", "RequestQueue"]

T = TypeVar("T")


class QueueFull(Exception):
    """The wait room already holds ``max_size`` requests."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"request queue is full ({max_size} waiting)")
        self.max_size = max_size


class QueueTimeout(Exception):
    """The provider stayed unavailable until the entry's deadline.

    ``last`` is the last "unavailable" outcome (a result or an exception), or None if
    no attempt was made; the caller owns it (e.g. to answer with the upstream's own
    error, or to close it).
    """

    def __init__(self, waited_s: float, attempts: int, last: object = None) -> None:
        super().__init__(f"provider still unavailable after {waited_s:.1f}s in queue ({attempts} attempts)")
        self.waited_s = waited_s
        self.attempts = attempts
        self.last = last


class _Entry:
    __slots__ = ("seq", "rounds_started")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.rounds_started = 0


class RequestQueue:
    """FIFO retry room; see the module docstring for the ordering rule."""

    def __init__(
        self,
        max_size: int = 100,
        max_wait_s: float = 30.0,
        retry_delay_s: float = 1.0,
        max_retries: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if max_size < 1 or max_retries < 1:
            raise ValueError("max_size and max_retries must be >= 1")
        if max_wait_s < 0 or retry_delay_s < 0:
            raise ValueError("max_wait_s and retry_delay_s must be >= 0")
        self.max_size = int(max_size)
        self.max_wait_s = float(max_wait_s)
        self.retry_delay_s = float(retry_delay_s)
        self.max_retries = int(max_retries)
        self._clock = clock
        self._sleep = sleep
        self._seq = itertools.count()
        # Insertion-ordered: iteration order is arrival order; removal is O(1).
        self._entries: Dict[int, _Entry] = {}
        # Broadcast "something moved" to entries waiting for their turn; created lazily
        # so the queue is not tied to the event loop that existed at construction.
        self._changed: Optional[asyncio.Event] = None
        self._stats = {
            "enqueued": 0,
            "served": 0,        # left with a non-"unavailable" outcome
            "exhausted": 0,     # left after max_retries unavailable outcomes
            "timeouts": 0,
            "rejected_full": 0,
            "cancelled": 0,
        }

    def __repr__(self) -> str:
        return f"RequestQueue(depth={len(self._entries)}, max_size={self.max_size})"

    def depth(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> Dict[str, int]:
        """Counters (a copy): enqueued, served, exhausted, timeouts, rejected_full, cancelled."""
        return dict(self._stats)

    # -- ordering ------------------------------------------------------------------------

    def _notify(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    def _is_turn(self, entry: _Entry, round_no: int) -> bool:
        for other in self._entries.values():
            if other is entry:
                return True
            if other.rounds_started < round_no:
                return False
        return True  # not reached: the entry is in the room while it waits

    async def _wait_turn(self, entry: _Entry, round_no: int, deadline: float) -> bool:
        """Wait until ``entry`` may start round ``round_no``; False if the deadline hit first."""
        while not self._is_turn(entry, round_no):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            event = self._changed
            if event is None:
                event = self._changed = asyncio.Event()
            # Race the broadcast against the injected sleep (not wait_for's loop timer)
            # so the deadline follows the same clock as everything else. Rare path:
            # only taken when an entry ahead is slower than this one.
            moved = asyncio.ensure_future(event.wait())
            expired = asyncio.ensure_future(self._sleep(remaining))
            try:
                await asyncio.wait((moved, expired), return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                expired.cancel()
        return True

    # -- the room ---------------------------------------------------------------------------

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        unavailable: Callable[[Union[T, BaseException]], bool],
        on_discard: Optional[Callable[[Union[T, BaseException]], object]] = None,
    ) -> T:
        """Wait in the room and retry ``attempt()`` until the provider answers.

        ``unavailable(outcome)`` gets each result or raised exception; a False verdict
        ends the wait (result returned / exception raised). After ``max_retries``
        unavailable outcomes the last one is returned/raised. QueueFull if the room is
        full on entry; QueueTimeout once ``max_wait_s`` has passed since entry.
        ``on_discard(outcome)`` (optional) receives each unavailable outcome that is
        neither returned nor attached to QueueTimeout (superseded by a later attempt, or
        held when the task was cancelled), so the caller can release it (e.g. close a
        response).
        """
        if len(self._entries) >= self.max_size:
            self._stats["rejected_full"] += 1
            raise QueueFull(self.max_size)
        entry = _Entry(next(self._seq))
        self._entries[entry.seq] = entry
        self._stats["enqueued"] += 1
        entered = self._clock()
        deadline = entered + self.max_wait_s
        last: object = None
        have_last = False
        try:
            for round_no in range(1, self.max_retries + 1):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                # Sleep at most until the deadline: the total wait never exceeds max_wait_s.
                await self._sleep(min(self.retry_delay_s, remaining))
                if not await self._wait_turn(entry, round_no, deadline):
                    break
                entry.rounds_started = round_no
                self._notify()
                if have_last and on_discard is not None:
                    on_discard(last)  # type: ignore[arg-type]
                    last, have_last = None, False
                try:
                    result = await attempt()
                except Exception as exc:  # CancelledError propagates untouched
                    if not unavailable(exc):
                        self._stats["served"] += 1
                        raise
                    last, have_last = exc, True
                else:
                    if not unavailable(result):
                        self._stats["served"] += 1
                        return result
                    last, have_last = result, True
                if round_no == self.max_retries:
                    self._stats["exhausted"] += 1
                    if isinstance(last, BaseException):
                        raise last
                    return last  # type: ignore[return-value]
            self._stats["timeouts"] += 1
            raise QueueTimeout(self._clock() - entered, entry.rounds_started, last if have_last else None)
        except asyncio.CancelledError:
            self._stats["cancelled"] += 1
            if have_last and on_discard is not None:
                on_discard(last)  # type: ignore[arg-type]  # nobody else will release it
            raise
        finally:
            del self._entries[entry.seq]
            self._notify()
