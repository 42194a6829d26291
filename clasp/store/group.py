"""The worker's side of a ``-workers N`` group: one connection to the parent process.

The parent (clasp.store.hub) holds the group's state in one LocalStore and answers its workers over
a socketpair each, created before fork. Over the same connection the parent asks a worker for its
metrics snapshot when another worker is scraped, so ``/metrics`` shows the group's totals.

Frames (both directions): a 13-byte header ``!IIBI`` (body length, request id, op, length of the
JSON part), then the JSON part and an optional binary part (cached values travel as raw bytes).
Request id 0 means "no reply wanted" (hincr and cache_put are fire-and-forget: the parent handles
one connection's frames in order, so a later read from the same worker still sees the update).

Not thread-safe: meant to be called from the worker's single asyncio event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from typing import Any, Callable

from clasp.ops.ratelimit import RateDecision
from clasp.store.local import LocalStore

__all__ = ["GroupLink", "GroupStore", "GroupUnavailable", "encode_frame", "FrameDecoder", "HEADER",
           "OP_REPLY", "OP_ERROR", "OP_TAKE", "OP_HINCR", "OP_HMGET", "OP_HGETALL", "OP_CACHE_GET",
           "OP_CACHE_PUT", "OP_METRICS", "OP_SNAPSHOT", "MAX_FRAME"]

log = logging.getLogger("clasp")

HEADER = struct.Struct("!IIBI")
# The peers are this program's own processes: a frame beyond this means a bug, not a big value.
MAX_FRAME = 256 * 1024 * 1024

OP_REPLY = 0
OP_ERROR = 1          # a reply whose JSON part is the error message
OP_TAKE = 2           # [bucket, rate_per_s, burst] -> [allowed, limit, remaining, retry_after_s, reset_s]
OP_HINCR = 3          # [name, {field: value}, ttl_s | null]
OP_HMGET = 4          # [name, [field, ...]] -> [value, ...]
OP_HGETALL = 5        # name -> {field: value}
OP_CACHE_GET = 6      # key -> binary part (JSON part true when found)
OP_CACHE_PUT = 7      # [key, ttl_s] + binary part
OP_METRICS = 8        # worker -> parent: own snapshot -> merged snapshot of the group
OP_SNAPSHOT = 9       # parent -> worker: null -> this worker's snapshot

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads


def encode_frame(op: int, request_id: int, obj: Any = None, blob: bytes = b"") -> bytes:
    part = _dumps(obj).encode() if obj is not None else b""
    return HEADER.pack(len(part) + len(blob), request_id, op, len(part)) + part + blob


class FrameDecoder:
    """Bytes in, whole frames out: (op, request id, JSON part or None, binary part)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, Any, bytes]]:
        buf = self._buf
        buf += data
        frames = []
        pos, have, head = 0, len(buf), HEADER.size
        while have - pos >= head:
            size, request_id, op, json_len = HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME or json_len > size:
                raise ValueError(f"bad group frame: {size} bytes, JSON part {json_len}")
            end = pos + head + size
            if end > have:
                break
            start = pos + head
            obj = _loads(buf[start:start + json_len]) if json_len else None
            frames.append((op, request_id, obj, bytes(buf[start + json_len:end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames


class GroupUnavailable(Exception):
    """The parent cannot be reached (it went away, or the connection broke)."""


class GroupLink(asyncio.Protocol):
    """The connection to the parent: requests with ids, answered out of order; answers the
    parent's snapshot requests from ``snapshot_source``. (A Protocol, not streams: frames are
    decoded straight from data_received, with no task switch per frame.)"""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self.broken = False
        self.snapshot_source: Callable[[], dict] | None = None
        self._closed: asyncio.Future | None = None

    @classmethod
    async def connect(cls, sock: socket.socket) -> "GroupLink":
        _, link = await asyncio.get_running_loop().create_connection(cls, sock=sock)
        return link

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ValueError as e:
            self._fail(e)
            self._transport.close()
            return
        for op, request_id, obj, blob in frames:
            if op == OP_SNAPSHOT:
                snap = self.snapshot_source() if self.snapshot_source is not None else None
                self._transport.write(encode_frame(OP_REPLY, request_id, snap))
                continue
            future = self._pending.pop(request_id, None)
            if future is None or future.done():
                continue
            if op == OP_ERROR:
                future.set_exception(GroupUnavailable(f"the group's parent failed: {obj}"))
            else:
                future.set_result((obj, blob))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the parent closed the connection"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # requests

    def _write(self, frame: bytes) -> None:
        if self.broken or self._transport is None or self._transport.is_closing():
            raise GroupUnavailable("the group's parent process is unreachable")
        self._transport.write(frame)

    async def call(self, op: int, obj: Any = None, blob: bytes = b"") -> tuple[Any, bytes]:
        """Send a request and wait for its reply: (JSON part, binary part)."""
        self._next_id = request_id = (self._next_id % 0xFFFFFFFF) + 1
        self._write(encode_frame(op, request_id, obj, blob))
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return await future

    def send(self, op: int, obj: Any = None, blob: bytes = b"") -> None:
        """Send a request that wants no reply."""
        self._write(encode_frame(op, 0, obj, blob))

    def _fail(self, cause: BaseException | None) -> None:
        if not self.broken and cause is not None:
            log.warning("worker group: lost the connection to the parent process (%s): this worker "
                        "now keeps rate limits, counters and cache to itself", type(cause).__name__)
        self.broken = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(GroupUnavailable("the group's parent process is unreachable"))

    async def close(self) -> None:
        self.broken = True  # (a deliberate close is not worth a warning)
        if self._transport is not None:
            self._transport.close()
            if self._closed is not None:
                await self._closed


class GroupStore:
    """The Store of a worker in a group: every call is answered by the parent's one LocalStore, so
    the group enforces one rate limit and keeps one set of counters and one cache. Should the
    parent become unreachable, this worker carries on with a LocalStore of its own."""

    kind = "group"

    def __init__(self, link: GroupLink, *, clock: Callable[[], float] = time.monotonic,
                 cache_max_size: int = 1000) -> None:
        self.link = link
        self._clock = clock
        self._cache_max_size = cache_max_size
        self._fallback: LocalStore | None = None

    def _local(self) -> LocalStore:
        if self._fallback is None:
            self._fallback = LocalStore(clock=self._clock, cache_max_size=self._cache_max_size)
        return self._fallback

    async def take(self, bucket: str, rate_per_s: float, burst: int) -> RateDecision:
        if not self.link.broken:
            try:
                d, _ = await self.link.call(OP_TAKE, [bucket, rate_per_s, burst])
                return RateDecision(d[0], d[1], d[2], d[3], d[4])
            except GroupUnavailable:
                pass
        return self._local().take_now(bucket, rate_per_s, burst)

    async def hincr(self, name: str, fields: dict[str, float], ttl_s: float | None = None) -> None:
        if not self.link.broken:
            try:
                return self.link.send(OP_HINCR, [name, fields, ttl_s])
            except GroupUnavailable:
                pass
        self._local().hincr_now(name, fields, ttl_s)

    async def hmget(self, name: str, fields: list[str]) -> list[float]:
        if not self.link.broken:
            try:
                return (await self.link.call(OP_HMGET, [name, fields]))[0]
            except GroupUnavailable:
                pass
        return await self._local().hmget(name, fields)

    async def hgetall(self, name: str) -> dict[str, float]:
        if not self.link.broken:
            try:
                return (await self.link.call(OP_HGETALL, name))[0]
            except GroupUnavailable:
                pass
        return await self._local().hgetall(name)

    async def cache_get(self, key: str) -> bytes | None:
        if not self.link.broken:
            try:
                found, value = await self.link.call(OP_CACHE_GET, key)
                return value if found else None
            except GroupUnavailable:
                pass
        return await self._local().cache_get(key)

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.link.broken:
            try:
                return self.link.send(OP_CACHE_PUT, [key, ttl_s], value)
            except GroupUnavailable:
                pass
        await self._local().cache_put(key, value, ttl_s)

    def health(self) -> dict:
        if self.link.broken:
            return {"kind": self.kind, "status": "degraded",
                    "detail": "parent process unreachable: this worker's own state"}
        return {"kind": self.kind, "status": "ok"}

    async def close(self) -> None:
        pass  # the link belongs to the App: it also carries metrics
