"""A small Redis (or Valkey) client for the standard library: RESP2 over asyncio streams.

* ``parse_url``: ``redis://[user:password@]host[:port][/db][?options]`` and ``rediss://`` (TLS).
  Options: ``ssl_ca_certs=PATH`` (CA bundle for rediss), ``ssl_cert_reqs=none`` (do not verify the
  server's certificate: testing only).
* ``RedisClient``: a bounded pool of connections; each command (or pipeline) borrows one. A
  connection that fails (timeout, reset, garbled reply) is closed, never reused; the next command
  opens a fresh one, so the client reconnects by itself. AUTH and SELECT run on connect.
* ``Script``: a Lua script run with EVALSHA, falling back to EVAL when the server does not know it
  yet (NOSCRIPT: after a restart or SCRIPT FLUSH).

The password never appears in an exception, a repr or a log line: errors name the server as
``host:port`` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisClient", "RedisURL", "RedisError", "RedisConnectionError", "Script", "parse_url",
           "encode_command", "RespParser", "ProtocolError"]

DEFAULT_PORT = 6379
_OPTIONS = frozenset({"db", "ssl_ca_certs", "ssl_cert_reqs"})
_MAX_BULK = 512 * 1024 * 1024  # Redis' own limit for one string


class RedisError(Exception):
    """An error reply of the server (``-ERR ...``, ``-NOSCRIPT ...``): the connection stays usable."""


class RedisConnectionError(Exception):
    """The server could not be reached or answered garbage: the connection is dropped."""


class ProtocolError(RedisConnectionError):
    """A reply that is not RESP."""


@dataclass(frozen=True)
class RedisURL:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    ca_certs: str = ""
    verify: bool = True

    @property
    def address(self) -> str:
        """host:port, for messages (never the credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisURL:
    """A RedisURL from ``redis://`` or ``rediss://``; ValueError (without the password) if malformed."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("malformed Redis URL (expected redis://[user:password@]host[:port][/db])") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"Redis URL must start with redis:// or rediss://, got {parts.scheme or 'no'} scheme")
    if not parts.hostname:
        raise ValueError("Redis URL has no host (expected redis://[user:password@]host[:port][/db])")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"Redis URL database must be a number, got {path!r}")
    db = int(path) if path else 0
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:  # named, never their values (one could be a password)
        raise ValueError(f"unknown Redis URL option {unknown[0]!r} (known: {', '.join(sorted(_OPTIONS))})")
    if "db" in options:  # redis-py accepts ?db=N as well
        if not options["db"].isdigit():
            raise ValueError("Redis URL db option must be a number")
        db = int(options["db"])
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("required", "none"):
        raise ValueError("Redis URL ssl_cert_reqs must be required or none")
    username = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if username and parts.password is None:
        # redis://secret@host: a lone userinfo is the password (as redis-py and redis-cli read it)
        username, password = "", username
    return RedisURL(parts.hostname, port or DEFAULT_PORT, db, username, password, parts.scheme == "rediss",
                    options.get("ssl_ca_certs", ""), reqs == "required")


# ----------------------------------------------------------------------------------- protocol

def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("bool is not a Redis argument")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def encode_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


class RespParser:
    """Incremental RESP2 parser: ``feed`` bytes, ``get`` a reply or the sentinel ``NEED_MORE``.

    Replies: simple string -> str, error -> RedisError (returned, not raised), integer -> int,
    bulk string -> bytes, nil -> None, array -> list (nil array -> None)."""

    NEED_MORE = object()

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def get(self) -> Any:
        try:
            value, pos = self._parse(self._pos)
        except _Incomplete:
            return self.NEED_MORE
        self._pos = pos
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            if len(self._buf) - pos > 64 * 1024:
                raise ProtocolError("Redis reply line too long")
            raise _Incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Any, int]:
        if pos >= len(self._buf):
            raise _Incomplete
        kind = self._buf[pos]
        line, pos = self._line(pos + 1)
        if kind == 43:  # +
            return line.decode("utf-8", "replace"), pos
        if kind == 45:  # -
            return RedisError(line.decode("utf-8", "replace")), pos
        if kind == 58:  # :
            return _int(line), pos
        if kind == 36:  # $
            n = _int(line)
            if n < 0:
                return None, pos
            if n > _MAX_BULK:
                raise ProtocolError("Redis bulk reply too large")
            if len(self._buf) < pos + n + 2:
                raise _Incomplete
            if self._buf[pos + n:pos + n + 2] != b"\r\n":
                raise ProtocolError("Redis bulk reply not terminated by CRLF")
            return bytes(self._buf[pos:pos + n]), pos + n + 2
        if kind == 42:  # *
            n = _int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise ProtocolError(f"unexpected Redis reply type byte {kind!r}")


class _Incomplete(Exception):
    pass


class _Closed(RedisConnectionError):
    """The server closed the connection (EOF)."""


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError("malformed integer in Redis reply") from None


# --------------------------------------------------------------------------------- connection

class Connection:
    """One connection: commands are written whole, replies read in order (pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = RespParser()
        self.received = False  # a reply byte for the current commands: a stale connection fails before one

    async def roundtrip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send the commands in one write and read one reply each (errors returned as RedisError)."""
        self.received = False
        self.writer.write(b"".join(encode_command(c) for c in commands))
        await self.writer.drain()
        replies: list[Any] = []
        parser = self.parser
        while len(replies) < len(commands):
            value = parser.get()
            if value is RespParser.NEED_MORE:
                data = await self.reader.read(65536)
                if not data:
                    raise _Closed("Redis closed the connection")
                self.received = True
                parser.feed(data)
                continue
            replies.append(value)
        return replies

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Script:
    """A Lua script known by its SHA1 (EVALSHA), its source sent only when the server lacks it."""
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())


class RedisClient:
    def __init__(self, url: str | RedisURL, *, timeout: float = 1.0, pool_size: int = 16) -> None:
        self.url = parse_url(url) if isinstance(url, str) else url
        self.timeout = timeout
        self.pool_size = pool_size
        self._idle: list[Connection] = []
        self._slots: asyncio.Semaphore | None = None  # made inside the loop (3.9 binds at creation)
        self._ssl = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisClient({self.url.address})"

    # ---- public

    async def execute(self, *args: Any) -> Any:
        """One command's reply; a server error reply is raised as RedisError."""
        reply = (await self.pipeline([args]))[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands in one round trip; error replies are returned in place as RedisError
        (use MULTI ... EXEC inside for atomicity)."""
        if self._closed:
            raise RedisConnectionError("Redis client is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.pool_size)
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = await self._connect()
                try:
                    replies = await self._roundtrip(conn, commands)
                except (OSError, EOFError, _Closed):
                    if not reused or conn.received:
                        raise
                    # A pooled connection the server had closed (idle timeout, restart, failover):
                    # nothing of it was answered, so nothing ran. Once more on a fresh connection.
                    conn.close()
                    self.drop_idle()
                    conn = None
                    conn = await self._connect()
                    replies = await self._roundtrip(conn, commands)
            except BaseException as e:
                if conn is not None:
                    conn.close()  # half-read or broken: never reused
                where = self.url.address
                if isinstance(e, (OSError, EOFError)):
                    raise RedisConnectionError(f"{where}: {_describe(e)}") from None
                if isinstance(e, RedisConnectionError) and where not in str(e):
                    raise type(e)(f"{where}: {e}") from None
                raise
            if len(self._idle) < self.pool_size and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
            return replies

    def _roundtrip(self, conn: Connection, commands: Sequence[Sequence[Any]]):
        return _within(conn.roundtrip(commands), self.timeout,
                       f"no reply from {self.url.address} within {self.timeout:g}s")

    async def eval(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA, or EVAL when the server does not have the script cached."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    def drop_idle(self) -> None:
        """Close the pooled idle connections (after a failure they are probably dead too)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        self.drop_idle()

    # ---- connecting

    def _ssl_context(self):
        if self._ssl is None:
            import ssl  # only for rediss://
            ctx = ssl.create_default_context(cafile=self.url.ca_certs or None)
            if not self.url.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    async def _connect(self) -> Connection:
        url = self.url
        where = url.address
        try:
            ssl_ctx = self._ssl_context() if url.tls else None
        except OSError as e:  # an unreadable ssl_ca_certs file
            raise RedisConnectionError(f"{where}: cannot load the TLS CA file: {_describe(e)}") from None
        try:
            reader, writer = await _within(
                asyncio.open_connection(url.host, url.port, ssl=ssl_ctx,
                                        server_hostname=url.host if ssl_ctx else None, limit=2 ** 20),
                self.timeout, f"cannot connect to {where} within {self.timeout:g}s")
        except (OSError, EOFError) as e:
            raise RedisConnectionError(f"cannot connect to {where}: {_describe(e)}") from None
        conn = Connection(reader, writer)
        setup: list[tuple] = []
        if url.password:
            setup.append(("AUTH", url.username, url.password) if url.username else ("AUTH", url.password))
        if url.db:
            setup.append(("SELECT", url.db))
        if setup:
            try:
                replies = await _within(conn.roundtrip(setup), self.timeout,
                                        f"no reply from {where} within {self.timeout:g}s")
            except BaseException as e:
                conn.close()
                if isinstance(e, (OSError, EOFError)):
                    raise RedisConnectionError(f"{where}: {_describe(e)}") from None
                raise
            for command, reply in zip(setup, replies):
                if isinstance(reply, RedisError):
                    conn.close()
                    # The server's message (WRONGPASS ..., NOAUTH ...) never echoes the password.
                    raise RedisConnectionError(f"{where}: {command[0]} failed: {reply}")
        return conn


if sys.version_info >= (3, 11):
    async def _within(work, seconds: float, message: str):
        """`await work`, a RedisConnectionError after `seconds` (one timer, no extra task)."""
        timeout = asyncio.timeout(seconds)
        try:
            async with timeout:
                return await work
        except TimeoutError:
            if timeout.expired():
                raise RedisConnectionError(message) from None
            raise
else:  # 3.10: no asyncio.timeout
    async def _within(work, seconds: float, message: str):
        """`await work`, a RedisConnectionError after `seconds`."""
        try:
            return await asyncio.wait_for(work, seconds)
        except asyncio.TimeoutError:
            raise RedisConnectionError(message) from None


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed mid-reply"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text


def pairs(reply: Iterable[Any]) -> dict[bytes, bytes]:
    """A flat [k1, v1, k2, v2, ...] reply (HGETALL) as a dict."""
    items = list(reply or ())
    return dict(zip(items[0::2], items[1::2]))
