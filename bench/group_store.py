"""Micro benchmark: what one Store.take() costs a worker of a ``-workers N`` group.

    python3 bench/group_store.py [--calls 20000]

The hub (the parent's side) runs in a forked process, as with ``-workers N``; the worker awaits
GroupStore.take() over the socketpair: one at a time (the latency a request pays), and 64 at once
(the cost per call when many requests are in flight). LocalStore.take() is the baseline a single
process pays. Standard library only; prints microseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clasp.store.group import GroupLink, GroupStore  # noqa: E402
from clasp.store.hub import Hub  # noqa: E402
from clasp.store.local import LocalStore  # noqa: E402


def run_hub(sock: socket.socket) -> None:
    async def main():
        hub = Hub(LocalStore())
        await hub.add_worker(os.getppid(), sock)
        while hub.connected:
            await asyncio.sleep(0.1)
    asyncio.run(main())


async def measure(calls: int) -> dict[str, float]:
    local = LocalStore()
    t = time.perf_counter()
    for _ in range(calls):
        await local.take("ratelimit:client", 1e9, 10)
    local_us = (time.perf_counter() - t) / calls * 1e6

    parent_end, worker_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        worker_end.close()
        try:
            run_hub(parent_end)
        finally:
            os._exit(0)
    parent_end.close()
    store = GroupStore(await GroupLink.connect(worker_end))
    for _ in range(1000):  # warm up
        await store.take("ratelimit:client", 1e9, 10)
    t = time.perf_counter()
    for _ in range(calls):
        await store.take("ratelimit:client", 1e9, 10)
    sequential_us = (time.perf_counter() - t) / calls * 1e6

    batch = 64
    rounds = max(1, calls // batch)
    t = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(store.take("ratelimit:client", 1e9, 10) for _ in range(batch)))
    concurrent_us = (time.perf_counter() - t) / (rounds * batch) * 1e6

    t = time.perf_counter()
    for _ in range(calls):
        await store.hincr("spend:client", {"usd": 0.001, "tokens": 12.0}, 86400)
    await store.hmget("spend:client", ["usd"])  # waits until the hub has applied them all
    hincr_us = (time.perf_counter() - t) / calls * 1e6

    await store.link.close()
    os.waitpid(pid, 0)
    return {"local_take_us": local_us, "group_take_us": sequential_us,
            "group_take_64_concurrent_us": concurrent_us, "group_hincr_us": hincr_us}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    for name, us in asyncio.run(measure(args.calls)).items():
        print(f"{name:32s} {us:8.1f} us")


if __name__ == "__main__":
    main()
