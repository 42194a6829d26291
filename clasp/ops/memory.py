"""Give freed heap memory back to the OS once the proxy goes idle after traffic.

glibc keeps freed memory in the process for reuse: after a burst (500 streams, a few 1 MB
conversations) a proxy that is idle again would keep its peak RSS, ~57 MiB instead of ~32,
until restarted. ``malloc_trim(0)`` returns the free pages. It runs once per idle period
that follows traffic, never while a request is in flight, so serving never pays for it; on
other C libraries (musl, macOS) the trimmer is simply off.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable, Optional

__all__ = ["IdleTrimmer", "libc_malloc_trim", "resident_bytes"]


def resident_bytes() -> Optional[int]:
    """This process's resident set size (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


try:
    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # pragma: no cover - not a POSIX system
    _PAGE_SIZE = 4096


def libc_malloc_trim() -> Optional[Callable[[], object]]:
    """glibc's malloc_trim(0) as a callable, or None where there is no such function."""
    try:
        import ctypes  # only once traffic has come and gone: not part of the idle footprint
        fn = ctypes.CDLL(None).malloc_trim  # the process's own symbols, libc's included
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


class IdleTrimmer:
    """Counts requests in flight; `run()` trims once they have all been done for `idle_s`."""

    __slots__ = ("idle_s", "active", "trims", "_dirty", "_last_done", "_trim", "_clock")

    _UNAVAILABLE: Callable[[], object] = staticmethod(lambda: None)

    def __init__(self, idle_s: float, trim: Optional[Callable[[], object]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.active = 0
        self.trims = 0
        self._dirty = False      # requests were served since the last trim
        self._last_done = 0.0
        self._trim = trim
        self._clock = clock

    def started(self) -> None:
        self.active += 1
        self._dirty = True

    def finished(self) -> None:
        self.active -= 1
        self._last_done = self._clock()

    def due(self) -> bool:
        return self._dirty and self.active == 0 and self._clock() - self._last_done >= self.idle_s

    def trim_now(self) -> bool:
        """Trim if due; True if it did."""
        if not self.due():
            return False
        self._dirty = False
        if self._trim is None:
            self._trim = libc_malloc_trim() or self._UNAVAILABLE
        if self._trim is self._UNAVAILABLE:
            return False
        self._trim()
        self.trims += 1
        return True

    async def run(self) -> None:
        """Check a few times per idle period until cancelled (one wake-up every idle_s/2)."""
        while True:
            await asyncio.sleep(self.idle_s / 2)
            self.trim_now()
