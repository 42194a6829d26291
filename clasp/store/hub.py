"""The parent's side of a ``-workers N`` group: one LocalStore answering every worker.

Each worker talks to the parent over its own socketpair (clasp.store.group has the frames). Store
calls are answered at once from the one LocalStore, in the order each worker sent them, so the group
enforces one rate limit and keeps one set of counters and one cache, without Redis.

Metrics: a worker being scraped sends its own snapshot and gets the group's back. The parent asks
every other running worker for its snapshot, keeps the last one each sent (frames of one worker
arrive in the order they were made, so the last received is the newest) and merges them all: a
worker that is slow to answer, or has exited, counts with its last snapshot, so no counter goes
down between two scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Callable

from clasp.ops.metrics import merge_snapshots
from clasp.store.group import (OP_CACHE_GET, OP_CACHE_PUT, OP_ERROR, OP_HGETALL, OP_HINCR, OP_HMGET,
                               OP_METRICS, OP_REPLY, OP_SNAPSHOT, OP_TAKE, FrameDecoder, encode_frame)
from clasp.store.local import LocalStore

__all__ = ["Hub"]

log = logging.getLogger("clasp")


def _now(coro):
    """The result of a LocalStore coroutine, which never suspends, without an event-loop step."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a LocalStore call suspended")


class _Worker(asyncio.Protocol):
    """The parent's end of one worker's socketpair."""

    def __init__(self, hub: "Hub", pid: int) -> None:
        self.hub = hub
        self.pid = pid
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.snapshot: dict | None = None  # the last one it sent
        self.connected = False
        self.exited = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connected = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ValueError:
            log.warning("worker group: worker %d sent a bad frame; closing its connection", self.pid)
            self.transport.close()
            return
        store, write = self.hub.store, self.transport.write
        for op, request_id, obj, blob in frames:
            if op == OP_REPLY or op == OP_ERROR:  # to a snapshot request
                future = self.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(obj if op == OP_REPLY else None)
                continue
            try:
                if op == OP_TAKE:
                    d = store.take_now(obj[0], obj[1], obj[2])
                    out: Any = [d.allowed, d.limit, d.remaining, d.retry_after_s, d.reset_s]
                elif op == OP_HINCR:
                    store.hincr_now(obj[0], obj[1], obj[2])
                    out = None
                elif op == OP_HMGET:
                    out = _now(store.hmget(obj[0], obj[1]))
                elif op == OP_HGETALL:
                    out = _now(store.hgetall(obj))
                elif op == OP_CACHE_GET:
                    value = _now(store.cache_get(obj))
                    if request_id:
                        write(encode_frame(OP_REPLY, request_id, value is not None, value or b""))
                    continue
                elif op == OP_CACHE_PUT:
                    _now(store.cache_put(obj[0], blob, obj[1]))
                    out = None
                elif op == OP_METRICS:
                    self.snapshot = obj
                    self.hub._spawn(self.hub._answer_metrics(self, request_id))
                    continue
                else:
                    raise ValueError(f"unknown op {op}")
            except Exception as e:  # a bad request: answer it, keep serving
                if request_id:
                    write(encode_frame(OP_ERROR, request_id, f"{type(e).__name__}: {e}"))
                continue
            if request_id:
                write(encode_frame(OP_REPLY, request_id, out))


class Hub:
    def __init__(self, store: LocalStore, *, clock: Callable[[], float] = time.monotonic,
                 snapshot_timeout: float = 2.0) -> None:
        self.store = store
        self._clock = clock
        self._start = clock()
        self.snapshot_timeout = snapshot_timeout
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Future] = set()

    async def add_worker(self, pid: int, sock: socket.socket) -> None:
        """Serve the worker ``pid`` on ``sock``."""
        w = self._workers[pid] = _Worker(self, pid)
        await asyncio.get_running_loop().create_connection(lambda: w, sock=sock)

    def worker_exited(self, pid: int) -> None:
        w = self._workers.get(pid)
        if w is not None:
            w.exited = True

    @property
    def connected(self) -> int:
        """Workers whose connection is open."""
        return sum(w.connected for w in self._workers.values())

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask_snapshot(self, w: _Worker) -> None:
        if not w.connected or w.exited:
            return
        w.next_id = request_id = (w.next_id % 0xFFFFFFFF) + 1
        future = asyncio.get_running_loop().create_future()
        w.pending[request_id] = future
        try:
            w.transport.write(encode_frame(OP_SNAPSHOT, request_id))
            snap = await asyncio.wait_for(future, self.snapshot_timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            snap = None  # slow or gone: its last snapshot stands in
        finally:
            w.pending.pop(request_id, None)
        if snap is not None:
            w.snapshot = snap

    async def group_snapshot(self) -> dict:
        """Ask every running worker for its snapshot; the group's merged one."""
        await asyncio.gather(*(self._ask_snapshot(w) for w in self._workers.values()))
        return self.merged()

    def merged(self) -> dict:
        """The merge of the last snapshot of every worker, with a ``workers`` list (pid, requests,
        whether it is still running)."""
        running = {id(w.snapshot) for w in self._workers.values() if w.snapshot is not None and not w.exited}
        snaps = [w.snapshot for w in self._workers.values() if w.snapshot is not None]
        merged = merge_snapshots(snaps, uptime_s=max(0.0, self._clock() - self._start),
                                 live=lambda s: id(s) in running)
        merged["workers"] = [{"pid": w.pid, "running": not w.exited,
                              "requests": w.snapshot["counters"]["total"] if w.snapshot else 0}
                             for w in self._workers.values()]
        return merged

    async def _answer_metrics(self, asking: _Worker, request_id: int) -> None:
        others = [w for w in self._workers.values() if w is not asking]
        await asyncio.gather(*(self._ask_snapshot(w) for w in others))
        try:
            frame = encode_frame(OP_REPLY, request_id, self.merged())
        except Exception as e:  # a snapshot that does not merge: the worker shows its own numbers
            log.warning("worker group: cannot merge the workers' metrics: %s: %s", type(e).__name__, e)
            frame = encode_frame(OP_ERROR, request_id, "cannot merge the workers' metrics")
        if asking.connected and request_id:
            asking.transport.write(frame)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._workers.values():
            if w.transport is not None:
                w.transport.close()
        await asyncio.sleep(0)  # let the transports finish closing
