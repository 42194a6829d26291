"""Which store a process uses: a worker of a group asks its parent (GroupStore), a lone process
keeps its own (LocalStore). (Redis, when configured, comes first: added with the Redis store.)"""

from __future__ import annotations

import time
from typing import Callable

from clasp.config import Config
from clasp.store import Store
from clasp.store.local import LocalStore

__all__ = ["open_store"]


def open_store(cfg: Config, *, clock: Callable[[], float] = time.monotonic, group=None) -> Store:
    """``group``: this worker's GroupLink to its parent, None outside a ``-workers N`` group."""
    if group is not None:
        from clasp.store.group import GroupStore
        return GroupStore(group, clock=clock, cache_max_size=cfg.cache_max_size)
    return LocalStore(clock=clock, cache_max_size=cfg.cache_max_size)
