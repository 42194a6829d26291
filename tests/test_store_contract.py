"""The Store contract (tests/store_contract.py) against LocalStore and RedisStore.

RedisStore talks to tests/fakeredis.py here; tests/real/test_redis_store.py runs the same checks
against a real redis-server (the real Lua scripts, the real clock)."""

from __future__ import annotations

import asyncio

import pytest

import store_contract
from fakeredis import FakeRedis
from clasp.store.local import LocalStore
from clasp.store.redis import RedisStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _local(check) -> None:
    clock = Clock()

    async def advance(seconds: float) -> None:
        clock.t += seconds

    await check(LocalStore(clock=clock), advance)


async def _redis(check) -> None:
    server = FakeRedis()
    await server.start()

    async def advance(seconds: float) -> None:
        server.clock.t += seconds

    store = RedisStore(server.url, prefix="contract:")
    try:
        await check(store, advance)
        assert store.health()["status"] == "ok" and store.errors == 0   # nothing fell back to local state
    finally:
        await store.close()
        await server.stop()


@pytest.mark.parametrize("check", store_contract.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("backend", [_local, _redis], ids=["local", "redis"])
def test_store_contract(backend, check):
    asyncio.run(asyncio.wait_for(backend(check), 20))
