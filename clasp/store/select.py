"""Which store a process uses: Redis when -redis-url is set (every replica and worker shares it),
else a worker of a -workers N group asks its parent (GroupStore), else a lone process keeps its
own (LocalStore)."""

from __future__ import annotations

import time
from typing import Callable

from clasp.config import Config
from clasp.store import Store
from clasp.store.local import LocalStore

__all__ = ["open_store"]


def open_store(cfg: Config, *, clock: Callable[[], float] = time.monotonic, group=None) -> Store:
    """The store for this process (nothing connects until the first use). ``group``: this worker's
    GroupLink to its parent, None outside a ``-workers N`` group."""
    if cfg.redis_url:
        from clasp.store.redis import RedisStore
        return RedisStore(cfg.redis_url, prefix=cfg.redis_prefix, timeout=cfg.redis_timeout,
                          fail_closed=cfg.redis_fail_closed, clock=clock, cache_max_size=cfg.cache_max_size)
    if group is not None:
        from clasp.store.group import GroupStore
        return GroupStore(group, clock=clock, cache_max_size=cfg.cache_max_size)
    return LocalStore(clock=clock, cache_max_size=cfg.cache_max_size)
