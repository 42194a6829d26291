"""A minimal HTTP/1.1 server on asyncio streams.

It parses request heads and bodies (Content-Length or chunked), enforces size limits and
timeouts, keeps connections alive, and hands each request to one async handler together with
a Responder that writes either a whole response or a chunked stream. Protocol errors are
answered in the Anthropic error format; the server keeps serving. It accepts connections itself,
up to a limit that keeps the process below its open-file limit.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Awaitable, Callable

from clasp.translate.errors import error_body

log = logging.getLogger("clasp.server")

MAX_HEAD_BYTES = 64 * 1024
MAX_EMPTY_LINES = 8             # ignored before a request line (RFC 9112 2.2), CRLF or LF
_ACCEPT_BATCH = 32              # connections accepted per readiness event of a listening socket
_ACCEPT_RETRY_S = 0.5           # accepting pauses this long when the process is out of descriptors
_LOG_EVERY_S = 10.0             # a recurring warning (refused connections, accept errors) at most this often
# Out of resources for a new socket: retrying at once fails again.
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_OVERLOADED_BODY = (b'{"type":"error","error":{"type":"overloaded_error","message":'
                    b'"the proxy has too many open connections; try again shortly"}}')
# Sent, without reading the request, to a connection beyond the connection limit.
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nretry-after: 1\r\nx-should-retry: true\r\nconnection: close\r\n\r\n"
            % len(_OVERLOADED_BODY)) + _OVERLOADED_BODY
_LINGER_S = 2.0                 # after an error response: at most this long ...
_LINGER_BYTES = 64 * 1024 * 1024  # ... and this many discarded request bytes before closing
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus}
_STATUS_LINES[529] = b"HTTP/1.1 529 Site Overloaded\r\n"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CTL_RE = re.compile(r"[\x00-\x20\x7f]")            # not in a request target
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls except HTAB: not in a field value


def _read_now(reader: asyncio.StreamReader, separator: bytes) -> bytes | None:
    """``await reader.readuntil(separator)`` when the input already read holds the separator; None,
    with nothing consumed, when that would wait for more (so the caller can read differently)."""
    step = reader.readuntil(separator)
    try:
        step.send(None)  # readuntil returns without suspending when the buffer holds the separator
    except StopIteration as done:
        return done.value
    step.close()  # it was about to wait for data: abandoned before it consumed anything
    return None


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str
    http_version: str = "HTTP/1.1"


class HTTPError(Exception):
    """A request the server rejects before it reaches the handler."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def error_json(error_type: str, message: str) -> bytes:
    return json.dumps(error_body(error_type, message)).encode()


class Responder:
    """Writes the response of one request: whole (send) or streamed with chunked encoding."""

    __slots__ = ("_writer", "_head_only", "keep_alive", "started", "finished", "closed", "status", "_chunked",
                 "_http11", "_write_timeout", "interrupted", "on_interrupt")

    def __init__(self, writer: asyncio.StreamWriter, head_only: bool, keep_alive: bool,
                 http11: bool = True, write_timeout: float | None = None) -> None:
        self._writer = writer
        self._write_timeout = write_timeout
        self._http11 = http11
        self._head_only = head_only
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.closed = False
        self.status = 0
        self._chunked = False
        self.interrupted = False  # ended by interrupt() (the server stopped waiting for the handler)
        # A started stream's last words when interrupted: (error type, message) -> body bytes.
        self.on_interrupt: Callable[[str, str], bytes] | None = None

    def _head(self, status: int, headers: list[tuple[str, str]], extra: bytes) -> bytes:
        line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
        parts = [line]
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
        parts.append(extra)
        parts.append(b"connection: keep-alive\r\n\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        return b"".join(parts)

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write a complete response with Content-Length."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        head = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        if self.closed:
            return
        self._writer.write(head if self._head_only else head + body)
        self.finished = True
        await self.drain()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Begin a streamed response (chunked transfer encoding keeps the connection reusable)."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        self._chunked = not self._head_only and self._http11
        if not self._http11:  # HTTP/1.0 has no chunked encoding: the body ends at close
            self.keep_alive = False
        head = self._head(status, headers, b"transfer-encoding: chunked\r\n" if self._chunked else b"")
        if not self.closed:
            self._writer.write(head)

    def write(self, data: bytes) -> None:
        """Queue one piece of a streamed body; call drain() to apply backpressure."""
        if self.closed or not data or self._head_only:
            return
        self._writer.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    async def drain(self) -> None:
        """Wait until the client has taken what was written (bounded by the write timeout)."""
        if self.closed:
            return
        timer = None
        if self._write_timeout is not None:
            timer = asyncio.get_running_loop().call_later(self._write_timeout, self._stalled)
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError):
            self.closed = True
        finally:
            if timer is not None:
                timer.cancel()

    def _stalled(self) -> None:
        # The client stopped reading: drop the connection rather than buffer without bound or pin
        # the handler (and its upstream request) forever. The server's disconnect watcher then
        # cancels the handler.
        self.closed = True
        self.keep_alive = False
        self._writer.transport.abort()

    async def end(self) -> None:
        """Finish a streamed response."""
        if self.finished:
            return
        self.finished = True
        if self._chunked and not self.closed:
            self._writer.write(b"0\r\n\r\n")
        await self.drain()

    def abort(self) -> None:
        """End the stream without a clean terminator and close the connection."""
        self.finished = True
        self.keep_alive = False
        self._writer.close()

    def interrupt(self, status: int, error_type: str, message: str) -> None:
        """End the response now, while the handler is still at work (the server is stopping and
        the handler is cancelled next): a response not begun gets this error; a started stream
        gets the final bytes of its on_interrupt hook and a clean chunked end. Anything the handler
        writes afterwards is dropped; the connection closes."""
        if self.finished or self.closed:
            return
        self.interrupted = True
        self.keep_alive = False
        if not self.started:
            self.started = True
            self.status = status
            body = error_json(error_type, message)
            head = self._head(status, [("content-type", "application/json")], b"content-length: %d\r\n" % len(body))
            self._writer.write(head if self._head_only else head + body)
        elif self.on_interrupt is not None:
            self.write(self.on_interrupt(error_type, message))
            if self._chunked:
                self._writer.write(b"0\r\n\r\n")
        self.finished = True
        self.closed = True


Handler = Callable[[Request, Responder], Awaitable[None]]


@dataclass
class ServerLimits:
    max_body_bytes: int = 32 * 1024 * 1024
    header_timeout_s: float = 30.0   # the whole request head; also the whole request body
    idle_timeout_s: float = 75.0     # keep-alive: until the first byte of the next request
    write_timeout_s: float = 120.0   # one drain(): a client that stops reading is disconnected
    # Client connections held at once. At the limit a new connection replaces the longest idle one
    # (waiting for a request), or is refused with a 503 when all are busy. Keeps the process below
    # its open-file limit (each busy connection also holds an upstream socket).
    max_connections: int = 1024


class _Throttled:
    """A warning logged at most once per interval, with the number of occurrences held back."""

    def __init__(self, interval_s: float = _LOG_EVERY_S) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            msg += " (%d more since the last report)"
            args += (self._held,)
        self._held = 0
        self._next = now + self.interval_s
        log.warning(msg, *args)


async def _listening_sockets(host: str | None, port: int, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of host (all interfaces when empty)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(infos):
            s = socket.create_server(address, family=family, backlog=1024, reuse_port=reuse_port)
            sockets.append(s)
            s.setblocking(False)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


class HTTPServer:
    """Accepts connections and runs the handler for each request."""

    def __init__(self, handler: Handler, limits: ServerLimits | None = None) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.base_events.Server] = []  # event loops without add_reader only
        self._connections: dict[asyncio.Task, bool] = {}  # task -> busy with a request
        # connection task -> (responder, handler task) of the request its handler is working on
        self._handlers: dict[asyncio.Task, tuple[Responder, asyncio.Task]] = {}
        self._opening: set[asyncio.Task] = set()           # accepted, transport not set up yet
        self._idle: dict[asyncio.Task, asyncio.StreamWriter] = {}  # waiting for a request, oldest first
        self._refused = _Throttled()
        self._accept_failed = _Throttled()
        self._stopping = False

    async def start(self, host: str, port: int, *, reuse_port: bool = False,
                    sock: socket.socket | None = None) -> list[tuple[str, int]]:
        if sock is not None:
            sock.setblocking(False)
            self._listeners = [sock]
        else:
            self._listeners = await _listening_sockets(host, port, reuse_port)
        # Our own accept loop (not asyncio.start_server's): it applies the connection limit before a
        # connection costs more than its socket, and it never retries an accept that failed for
        # lack of descriptors in a tight loop.
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            try:
                loop.add_reader(listener.fileno(), self._accept, listener)
            except NotImplementedError:  # e.g. the Windows proactor loop: asyncio accepts, no limit
                self._servers.append(await asyncio.start_server(self._on_connect, sock=listener,
                                                                limit=MAX_HEAD_BYTES))
        return [s.getsockname()[:2] for s in self._listeners]

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in _ACCEPT_EXHAUSTED:
                    # Out of descriptors (the connection limit is above what the process may open):
                    # the kernel keeps the connection queued; try again a little later.
                    self._pause_accepting(listener)
                self._accept_failed.warning("cannot accept connections: %s (%d open)", e, self.open_connections)
                return
            if self.open_connections >= self.limits.max_connections and not self._close_longest_idle():
                self._refuse(conn)
                continue
            task = asyncio.ensure_future(self._serve_accepted(conn))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    @property
    def open_connections(self) -> int:
        return len(self._connections) + len(self._opening)

    def _pause_accepting(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if not self._stopping and listener.fileno() >= 0:
                loop.add_reader(listener.fileno(), self._accept, listener)
        loop.call_later(_ACCEPT_RETRY_S, resume)

    def _close_longest_idle(self) -> bool:
        """Close the connection idle the longest to make room for a new one; False if none is idle."""
        for task, writer in self._idle.items():
            del self._idle[task]
            self._connections.pop(task, None)  # its socket is closing: no longer counted
            writer.close()                     # the task sees end of input and finishes
            return True
        return False

    def _refuse(self, conn: socket.socket) -> None:
        self._refused.warning("refusing connections: %d client connections are open, none of them idle "
                              "(limit %d)", self.open_connections, self.limits.max_connections)
        try:
            conn.setblocking(False)
            conn.send(_REFUSAL)
        except OSError:
            pass
        finally:
            conn.close()

    async def _serve_accepted(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEAD_BYTES)
        except Exception:  # the client left already
            conn.close()
            return
        finally:
            self._opening.discard(asyncio.current_task())  # counted in _connections from here on
        await self._on_connect(reader, writer)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close idle connections."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            if listener.fileno() >= 0:
                loop.remove_reader(listener.fileno())
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            listener.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        pending = [t for t in self._connections]
        if pending:
            done, still = await asyncio.wait(pending, timeout=timeout_s)
            for t in still:
                running = self._handlers.get(t)
                if running is None:
                    t.cancel()
                    continue
                # Time is up: the client gets an explicit overloaded_error (a stream its final
                # error event and a clean end) rather than a cut connection; the handler is
                # cancelled, which also cancels its upstream call.
                responder, handler_task = running
                responder.interrupt(529, "overloaded_error", "clasp is shutting down and could not finish "
                                    "this request in time; retry it")
                handler_task.cancel()
            if still:
                done, still = await asyncio.wait(still, timeout=1.0)
                for t in still:
                    t.cancel()
        for server in self._servers:
            await server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "unix"
        try:
            await self._serve(reader, writer, client, task)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     client: str, task: asyncio.Task) -> None:
        carry = b""  # bytes read by the disconnect watcher that belong to the next request
        first = True
        while not self._stopping:
            self._connections[task] = False
            try:
                head = await self._read_head(reader, writer, carry, first, task)
            except HTTPError as e:
                await self._reject(reader, writer, e)
                return
            if head is None:
                return
            carry = b""
            first = False
            self._connections[task] = True
            try:
                request, keep_alive, expect_continue = self._parse_head(head, client)
                # Framing is validated before "100 Continue": a body that would be refused
                # (too large, ambiguous framing) is refused before the client sends it.
                length = self._framing(request.headers, request.http_version)
                if expect_continue and length != 0 and request.http_version == "HTTP/1.1":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.body = await self._read_body(reader, length)
            except HTTPError as e:
                await self._reject(reader, writer, e)
                return
            if self._stopping:
                keep_alive = False
            responder = Responder(writer, request.method == "HEAD", keep_alive, request.http_version == "HTTP/1.1",
                                  self.limits.write_timeout_s)
            carry = await self._run_handler(request, responder, reader)
            if carry is None or not responder.keep_alive or responder.closed:
                return

    async def _read_head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, carry: bytes,
                         first: bool, task: asyncio.Task) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.header_timeout_s
        # Until the first byte of a request the connection is idle: a new one within the header
        # timeout, a kept-alive one within the idle timeout. A few empty lines (stray CRLFs after a
        # body, RFC 9112 2.2) do not begin a request. An idle connection may be closed to make room
        # for a new one.
        empty_lines = skipped = 0
        while not carry or carry in (b"\r", b"\n"):
            if carry:
                empty_lines += carry == b"\n"
                skipped += 1
                if empty_lines > MAX_EMPTY_LINES or skipped > 2 * MAX_EMPTY_LINES:
                    raise HTTPError(400, "invalid_request_error", "too many empty lines before the request line")
            self._idle[task] = writer
            try:
                carry = await asyncio.wait_for(
                    reader.read(1), max(0.0, deadline - loop.time()) if first else self.limits.idle_timeout_s)
            except asyncio.TimeoutError:
                if first:
                    raise HTTPError(408, "timeout_error", "timed out reading the request headers")
                return None
            finally:
                self._idle.pop(task, None)
            if not carry:
                return None
        # ... and then, as for a new connection, one timeout covers the whole head (however it trickles in).
        if not first:
            deadline = loop.time() + self.limits.header_timeout_s
        try:
            return await asyncio.wait_for(self._read_head_lines(reader, carry), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise HTTPError(408, "timeout_error", "timed out reading the request headers")
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "invalid_request_error", "request headers exceed 64 KiB")
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "invalid_request_error", "incomplete request head")

    @staticmethod
    async def _read_head_lines(reader: asyncio.StreamReader, first: bytes) -> bytes:
        """The request head that begins with the byte `first`, up to and including its empty line.

        Lines end in CRLF. A bare LF (which RFC 9112 2.2 lets a recipient accept) is refused: a
        parser in front of the proxy that reads it differently could see other headers (request
        smuggling). In a head that is all here already, _parse_head refuses it; a head still
        arriving is read line by line, so that a line ending in a bare LF (a client that ends its
        head with one waits for an answer) is refused at once instead of at the header timeout.
        """
        head = _read_now(reader, _HEAD_END)
        if head is not None:
            return first + head
        line = first + await reader.readuntil(b"\n")
        lines: list[bytes] = []
        size = 0
        while True:
            if line[-2:-1] != b"\r":
                raise HTTPError(400, "invalid_request_error", "lines of the request head must end with CRLF")
            lines.append(line)
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise HTTPError(431, "invalid_request_error", "request headers exceed 64 KiB")
            if line == _CRLF:
                return b"".join(lines)
            line = await reader.readuntil(b"\n")

    def _parse_head(self, head: bytes, client: str) -> tuple[Request, bool, bool]:
        text = head.decode("latin-1")  # latin-1 decodes every byte
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN_CHARS:
            raise HTTPError(400, "invalid_request_error", "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HTTPError(505 if version.startswith("HTTP/") else 400, "invalid_request_error",
                            f"unsupported protocol version {version[:16]!r}")
        if not target or _CTL_RE.search(target):
            raise HTTPError(400, "invalid_request_error", "malformed request target")
        if not target.startswith("/"):
            if target.startswith(("http://", "https://")):
                # absolute-form: keep only the path
                slash = target.find("/", target.find("//") + 2)
                target = target[slash:] if slash >= 0 else "/"
            elif method == "OPTIONS" and target == "*":
                target = "/"
            else:
                raise HTTPError(400, "invalid_request_error", "malformed request target")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            # RFC 9112 5: the name is a token (no whitespace before the colon, no obs-fold);
            # RFC 9110 5.5: CR, LF and NUL in a value are rejected (a bare LF would otherwise
            # hide a header from this parser that another one sees: request smuggling).
            if not sep or not name or not set(name) <= _TOKEN_CHARS or _BAD_VALUE_RE.search(value):
                raise HTTPError(400, "invalid_request_error", "malformed header line")
            name = name.lower()
            value = value.strip(" \t")
            if name in headers:
                if name in ("content-length", "host"):
                    if headers[name] != value:
                        raise HTTPError(400, "invalid_request_error", f"conflicting {name} headers")
                    continue
                headers[name] = headers[name] + ", " + value
            else:
                headers[name] = value
        conn = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in conn
        else:
            keep_alive = "keep-alive" in conn
        expect_continue = headers.get("expect", "").lower() == "100-continue"
        return Request(method, path, query, headers, b"", client, version), keep_alive, expect_continue

    def _framing(self, headers: dict[str, str], version: str) -> int:
        """Body length from the headers: bytes, or -1 for chunked. Rejects ambiguous framing."""
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            if cl is not None:
                raise HTTPError(400, "invalid_request_error",
                                "request has both Content-Length and Transfer-Encoding")
            if version != "HTTP/1.1":  # RFC 9112 6.1: framing of such a message is faulty
                raise HTTPError(400, "invalid_request_error", "Transfer-Encoding in an HTTP/1.0 request")
            if te.lower() != "chunked":
                raise HTTPError(400, "invalid_request_error", f"unsupported transfer-encoding {te[:32]!r}")
            return -1
        if cl is None:
            return 0
        # ASCII digits only (str.isdigit also accepts e.g. "²", which int() then rejects), and
        # a length check before int(), whose digit limit would raise on a few thousand digits.
        if not cl or not set(cl) <= _DIGITS:
            raise HTTPError(400, "invalid_request_error", "invalid Content-Length")
        digits = cl.lstrip("0") or "0"
        length = int(digits) if len(digits) <= 18 else -1
        if length < 0 or length > self.limits.max_body_bytes:
            raise HTTPError(413, "request_too_large",
                            f"request body exceeds the {self.limits.max_body_bytes} byte limit")
        return length

    async def _read_body(self, reader: asyncio.StreamReader, length: int) -> bytes:
        if length == 0:
            return b""
        # One deadline for the whole body (like the head): trickling bytes cannot extend it.
        deadline = asyncio.get_running_loop().time() + self.limits.header_timeout_s
        if length > 0:
            return await self._timed(reader.readexactly(length), deadline)
        return await self._read_chunked(reader, self.limits.max_body_bytes, deadline)

    async def _timed(self, coro: Awaitable[bytes], deadline: float) -> bytes:
        try:
            return await asyncio.wait_for(coro, max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            raise HTTPError(408, "timeout_error", "timed out reading the request body")
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "invalid_request_error", "request body ended early")
        except asyncio.LimitOverrunError:
            raise HTTPError(400, "invalid_request_error", "malformed chunked body")

    async def _read_chunked(self, reader: asyncio.StreamReader, limit: int, deadline: float) -> bytes:
        body = bytearray()  # not a list of parts: a million 1-byte chunks must not cost ~50 MB
        while True:
            line = await self._timed(reader.readuntil(_CRLF), deadline)
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            # Strictly hex digits: int(x, 16) would also take "0x1f", "+1f", "1_f" and " 1f",
            # which another HTTP parser in front of the proxy may read differently.
            if not size_text or not _HEX.issuperset(size_text):
                raise HTTPError(400, "invalid_request_error", "malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                trailers = 0
                while True:  # trailers (discarded), up to the empty line; bounded like the head
                    trailer = await self._timed(reader.readuntil(_CRLF), deadline)
                    if trailer == _CRLF:
                        return bytes(body)
                    trailers += len(trailer)
                    if trailers > MAX_HEAD_BYTES:
                        raise HTTPError(431, "invalid_request_error", "request trailers exceed 64 KiB")
            if len(body) + size > limit:
                raise HTTPError(413, "request_too_large", f"request body exceeds the {limit} byte limit")
            data = await self._timed(reader.readexactly(size + 2), deadline)
            if data[-2:] != _CRLF:
                raise HTTPError(400, "invalid_request_error", "malformed chunk")
            body += memoryview(data)[:-2]

    async def _run_handler(self, request: Request, responder: Responder,
                           reader: asyncio.StreamReader) -> bytes | None:
        """Run the handler; cancel it if the client disconnects meanwhile.

        Returns bytes read ahead from the next request (possibly b""), or None when the
        connection must close.
        """
        handler_task = asyncio.ensure_future(self._call_handler(request, responder))
        watcher = asyncio.ensure_future(reader.read(1))
        carry = b""
        connection = asyncio.current_task()
        self._handlers[connection] = (responder, handler_task)
        try:
            done, _ = await asyncio.wait((handler_task, watcher), return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                exc = watcher.exception()
                data = b"" if exc else watcher.result()
                if not data:  # client went away: stop the work (and its upstream request)
                    responder.closed = True
                    if not responder.finished:  # a finished response may still be tidying up
                        handler_task.cancel()
                    await asyncio.wait((handler_task,))
                    return None
                carry = data  # pipelined next request
                await handler_task
            else:
                watcher.cancel()
                # A read that completed in the same tick must not lose its byte.
                await asyncio.wait((watcher,))
                if not watcher.cancelled() and watcher.exception() is None:
                    carry = watcher.result()
                    if not carry:
                        return None
        except asyncio.CancelledError:
            handler_task.cancel()
            watcher.cancel()
            raise
        finally:
            self._handlers.pop(connection, None)
        if not responder.finished:
            return None
        return carry

    async def _call_handler(self, request: Request, responder: Responder) -> None:
        try:
            await self.handler(request, responder)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            if not responder.started:
                await responder.send(500, [("content-type", "application/json")],
                                     error_json("api_error", "internal proxy error"))
            else:
                responder.abort()
            return
        if not responder.started:
            await responder.send(500, [("content-type", "application/json")],
                                 error_json("api_error", "handler sent no response"))

    async def _reject(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, err: HTTPError) -> None:
        body = error_json(err.error_type, err.message)
        responder = Responder(writer, False, False, write_timeout=_LINGER_S)
        headers = [("content-type", "application/json"), ("x-should-retry", "false")]
        try:
            await responder.send(err.status, headers, body)
            if responder.closed or writer.transport.is_closing():
                return
            # Lingering close: closing with unread request bytes (a refused body) makes the kernel
            # send a reset, which can destroy the error response before the client reads it. So
            # half-close, then discard input for a short, bounded while.
            if writer.can_write_eof():
                writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _LINGER_S
            left = _LINGER_BYTES
            while left > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                data = await asyncio.wait_for(reader.read(min(left, 65536)), remaining)
                if not data:
                    break
                left -= len(data)
        except (ConnectionError, OSError, asyncio.TimeoutError, asyncio.LimitOverrunError):
            pass
