"""A tiny in-process Redis for tests: RESP2 on 127.0.0.1, the commands clasp's RedisStore sends.

The two Lua scripts of clasp.store.redis are emulated in Python (a real redis-server runs the real
Lua in tests/real/test_redis_store.py). ``stop()``/``start()`` simulate an outage on the same port,
``hang`` leaves commands unanswered, ``clock`` is the server's time (TIME and expiries)."""

from __future__ import annotations

import asyncio
import hashlib
import math

from clasp.store.redis import HINCR, TAKE
from clasp.store.resp import RedisError, RespParser


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _encode(value) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, RedisError):
        return b"-" + str(value).encode() + b"\r\n"
    if isinstance(value, str):
        return b"+" + value.encode() + b"\r\n"
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(_encode(v) for v in value)
    raise TypeError(type(value))


def _num(x: float) -> bytes:
    return repr(float(x)).encode() if x != int(x) else str(int(x)).encode()


class FakeRedis:
    def __init__(self, *, password: str = "", username: str = "", clock: FakeClock | None = None) -> None:
        self.password = password
        self.username = username
        self.clock = clock or FakeClock()
        self.dbs: dict[int, dict[bytes, object]] = {}
        self.expires: dict[tuple[int, bytes], float] = {}
        self.scripts: dict[str, str] = {}
        self.commands: list[list[bytes]] = []   # every command received (AUTH arguments included)
        self.connections = 0                     # connections accepted since the start
        self.hang = False
        self.refuse_writes: str | None = None    # an error reply to every script (they all write)
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- lifecycle

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """The server goes away: the listener closes and every connection is cut."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        await asyncio.sleep(0)

    async def drop_connections(self) -> None:
        """Close every client connection but keep listening (an idle timeout, a failover proxy)."""
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        await asyncio.sleep(0.01)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def names(self) -> list[bytes]:
        return [c[0].upper() for c in self.commands]

    # ---- protocol

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        parser = RespParser()
        state = {"db": 0, "authed": not self.password}
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                parser.feed(data)
                while True:
                    cmd = parser.get()
                    if cmd is RespParser.NEED_MORE:
                        break
                    self.commands.append(cmd)
                    if self.hang:
                        continue
                    try:
                        reply = self._run(cmd, state)
                    except RedisError as e:
                        reply = e
                    writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _db(self, state) -> dict:
        return self.dbs.setdefault(state["db"], {})

    def _get(self, state, key: bytes):
        db = self._db(state)
        deadline = self.expires.get((state["db"], key))
        if deadline is not None and self.clock() >= deadline:
            db.pop(key, None)
            del self.expires[(state["db"], key)]
        return db.get(key)

    def _run(self, cmd: list[bytes], state: dict):
        name = cmd[0].upper().decode()
        args = cmd[1:]
        if name == "AUTH":
            user, password = (args[0].decode(), args[1].decode()) if len(args) == 2 else ("default", args[0].decode())
            if password == self.password and user in ("default", self.username or "default"):
                state["authed"] = True
                return "OK"
            raise RedisError("WRONGPASS invalid username-password pair or user is disabled.")
        if not state["authed"]:
            raise RedisError("NOAUTH Authentication required.")
        if name == "PING":
            return "PONG"
        if name == "SELECT":
            state["db"] = int(args[0])
            return "OK"
        if name == "GET":
            value = self._get(state, args[0])
            if value is not None and not isinstance(value, bytes):
                raise RedisError("WRONGTYPE Operation against a key holding the wrong kind of value")
            return value
        if name == "SET":
            self._db(state)[args[0]] = args[1]
            self.expires.pop((state["db"], args[0]), None)
            if len(args) >= 4 and args[2].upper() == b"PX":
                self.expires[(state["db"], args[0])] = self.clock() + int(args[3]) / 1000
            return "OK"
        if name in ("HMGET", "HGETALL"):
            h = self._get(state, args[0]) or {}
            if name == "HMGET":
                return [h.get(f) for f in args[1:]]
            return [x for kv in h.items() for x in kv]
        if name == "TIME":
            t = self.clock()
            return [str(int(t)).encode(), str(int((t % 1) * 1e6)).encode()]
        if name == "EVALSHA":
            source = self.scripts.get(args[0].decode())
            if source is None:
                raise RedisError("NOSCRIPT No matching script. Please use EVAL.")
            return self._script(source, args[1:], state)
        if name == "EVAL":
            source = args[0].decode()
            self.scripts[hashlib.sha1(source.encode()).hexdigest()] = source
            return self._script(source, args[1:], state)
        if name == "FLUSHALL":
            self.dbs.clear()
            self.expires.clear()
            return "OK"
        raise RedisError(f"ERR unknown command '{name}'")

    def _script(self, source: str, rest: list[bytes], state: dict):
        if self.refuse_writes:  # e.g. OOM under maxmemory, READONLY on a replica: the scripts write
            raise RedisError(self.refuse_writes)
        nkeys = int(rest[0])
        keys, argv = rest[1:1 + nkeys], rest[1 + nkeys:]
        if source == TAKE.source:
            return self._take(state, keys[0], float(argv[0]), float(argv[1]))
        if source == HINCR.source:
            return self._hincr(state, keys[0], argv)
        raise RedisError("ERR unknown script")

    def _take(self, state, key: bytes, rate: float, burst: float):
        now = self.clock()
        h = self._get(state, key)
        if h is None:
            tokens = burst
        else:
            tokens = min(burst, float(h[b"tokens"]) + max(0.0, now - float(h[b"ts"])) * rate)
        allowed = 0
        if tokens + 1e-9 >= 1:
            tokens, allowed = max(0.0, tokens - 1), 1
        self._db(state)[key] = {b"tokens": repr(tokens).encode(), b"ts": repr(now).encode()}
        self.expires[(state["db"], key)] = now + (math.ceil((burst - tokens) / rate * 1000) + 1000) / 1000
        return [allowed, repr(tokens).encode()]

    def _hincr(self, state, key: bytes, argv: list[bytes]):
        h = self._get(state, key)
        if h is None:
            h = self._db(state)[key] = {}
        for i in range(1, len(argv), 2):
            h[argv[i]] = _num(float(h.get(argv[i], b"0")) + float(argv[i + 1]))
        ttl = int(argv[0])
        if ttl > 0:
            self.expires[(state["db"], key)] = self.clock() + ttl / 1000
        return 1
