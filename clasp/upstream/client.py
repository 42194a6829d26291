"""Pooled HTTP/1.1 client on asyncio streams (standard library only).

Supports http/https, per-origin keep-alive pooling, chunked and close-delimited bodies,
per-read timeouts, and HTTP(S)_PROXY / NO_PROXY (CONNECT tunnels for https).

Proxy selection notes (documented behaviour):
- https URLs use HTTPS_PROXY (https_proxy), http URLs use HTTP_PROXY (http_proxy); the
  lower-case spelling wins when both are set, as in curl and urllib.
- NO_PROXY (no_proxy) is a comma list of host suffixes ("example.com" and ".example.com" both
  match example.com and its subdomains), optionally with ":port"; "*" bypasses the proxy for
  everything. CIDR ranges are not supported. Loopback (localhost, 127.0.0.1) is NOT exempt
  implicitly: list it in NO_PROXY if a local provider must bypass the proxy.
- Only http:// proxies are supported (the tunnel itself is plain TCP; https targets are still
  end-to-end TLS through CONNECT).
"""
from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator, Callable, Mapping
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # ssl is imported on first https use: OpenSSL costs ~5 MiB of RSS
    import ssl

__all__ = [
    "UpstreamClient",
    "UpstreamResponse",
    "UpstreamError",
    "ConnectError",
    "UpstreamTimeout",
    "ProtocolError",
    "proxy_bypassed",
]

MAX_HEAD = 64 * 1024          # response head (and trailer) size limit
READ_SIZE = 64 * 1024         # largest single body read
MAX_BODY = 64 * 1024 * 1024   # default limit of read(): a whole (non-streamed) response body
MAX_INTERIM = 16              # 1xx responses tolerated before the final one
IDLE_TIMEOUT = 60.0           # idle pooled connections older than this are dropped
_TARGET_CACHE_MAX = 256

_HAS_STREAM_START_TLS = hasattr(asyncio.StreamWriter, "start_tls")  # 3.11+

# Headers the client owns: framing, hop-by-hop and Host are generated here, never forwarded.
_OWNED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "proxy-connection", "te", "upgrade", "trailer",
})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")  # str.isdigit() also accepts "²" etc., which int() rejects
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_TAIL = b"Connection: keep-alive\r\n\r\n"


class UpstreamError(Exception):
    """Any failure talking to the upstream (base class)."""


class ConnectError(UpstreamError):
    """TCP connect, DNS, TLS handshake or proxy CONNECT failed (nothing was sent upstream)."""


class UpstreamTimeout(UpstreamError):
    """A connect or a single read took longer than its timeout."""

    def __init__(self, message: str, phase: str) -> None:
        super().__init__(message)
        self.phase = phase  # "connect" | "read"


class ProtocolError(UpstreamError):
    """The upstream spoke malformed HTTP/1.1."""


# --------------------------------------------------------------------------- pure helpers

def proxy_bypassed(host: str, port: int, no_proxy: str) -> bool:
    """True if NO_PROXY (comma list) exempts host:port from proxying."""
    host = host.lower().strip("[]").rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.startswith("["):  # [v6]:port or [v6]
            end = entry.find("]")
            if end < 0:
                continue
            rest = entry[end + 1:]
            entry = entry[1:end]
            if rest.startswith(":") and _is_number(rest[1:]):
                entry_port = int(rest[1:])
        elif entry.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
            name, _, p = entry.partition(":")
            if not _is_number(p):
                continue
            entry, entry_port = name, int(p)
        entry = entry.lstrip(".").rstrip(".")
        if not entry or (entry_port is not None and entry_port != port):
            continue
        if host == entry or host.endswith("." + entry):
            return True
    return False


def _is_number(text: str) -> bool:
    """ASCII digits only, and few enough that int() is cheap and cannot hit its digit limit."""
    return 0 < len(text) <= 18 and set(text) <= _DIGITS


def _redacted_netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Proxy:
    __slots__ = ("host", "port", "auth_header", "label")

    def __init__(self, url: str) -> None:
        if "://" not in url:
            url = "http://" + url  # "proxy:3128" is a common spelling
        parts = urlsplit(url)
        if parts.scheme.lower() != "http":
            # The label never includes userinfo (credentials stay out of messages).
            raise ConnectError(f"unsupported proxy scheme {parts.scheme!r} (only http:// proxies are supported)")
        try:
            port = parts.port or 80
        except ValueError:
            raise ConnectError("proxy URL has an invalid port") from None
        if not parts.hostname:
            raise ConnectError("proxy URL has no host")
        self.host = parts.hostname
        self.port = port
        self.label = "proxy " + _redacted_netloc(self.host, self.port)
        self.auth_header = b""
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(cred.encode("utf-8")).decode("ascii")
            self.auth_header = f"Proxy-Authorization: Basic {token}\r\n".encode("ascii")

    def __repr__(self) -> str:  # never show credentials
        return f"<_Proxy {self.label}>"


class _Target:
    """Everything about a URL that does not change between requests, pre-encoded."""

    __slots__ = ("scheme", "host", "port", "proxy", "key", "prefix", "label")

    def __init__(self, scheme: str, host: str, port: int, request_target: str,
                 proxy: _Proxy | None) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.proxy = proxy
        self.key = (scheme, host, port, proxy.label if proxy else None, proxy.auth_header if proxy else b"")
        self.label = _redacted_netloc(host, port)
        default = 443 if scheme == "https" else 80
        host_hdr = f"[{host}]" if ":" in host else host
        if port != default:
            host_hdr = f"{host_hdr}:{port}"
        if proxy is not None and scheme == "http":
            # Absolute-form request line for a forward proxy (RFC 9112 §3.2.2).
            request_target = f"http://{host_hdr}{request_target}"
        extra = proxy.auth_header if (proxy is not None and scheme == "http") else b""
        # " <target> HTTP/1.1\r\nHost: <host>\r\n[Proxy-Authorization]"; the method is prepended per request.
        self.prefix = f" {request_target} HTTP/1.1\r\nHost: {host_hdr}\r\n".encode("latin-1") + extra


def _parse_head(data: bytes) -> tuple[int, str, str, dict[str, str]]:
    """Parse a response head (status line + headers, ending in CRLFCRLF)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise ProtocolError("undecodable response head") from None
    lines = text[:-4].split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if (len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3
            or not _is_number(parts[1]) or parts[1][0] == "0"):
        raise ProtocolError(f"malformed status line: {status_line[:100]!r}")
    version = parts[0]
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # obsolete line folding: continuation of the previous value
            if not last:
                raise ProtocolError("malformed header line")
            headers[last] = f"{headers[last]} {line.strip()}"
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line: {line[:100]!r}")
        name = name.lower()
        value = value.strip()
        prev = headers.get(name)
        headers[name] = value if prev is None else f"{prev}, {value}"
        last = name
    return status, version, reason, headers


def _tokens(value: str | None) -> set[str]:
    if not value:
        return set()
    return {t.strip().lower() for t in value.split(",")}


# --------------------------------------------------------------------------- connections

class _Conn:
    __slots__ = ("reader", "writer", "key", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple) -> None:
        self.reader = reader
        self.writer = writer
        self.key = key
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.transport.is_closing() and not self.reader.at_eof() \
            and self.reader.exception() is None

    def abort(self) -> None:
        # Immediate close: the peer sees the connection drop (stops generating), nothing is pooled.
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3


class UpstreamResponse:
    """A response whose head has been read; the body is read on demand."""

    __slots__ = ("status", "reason", "headers", "_client", "_conn", "_mode", "_left",
                 "_need_crlf", "_reusable", "_done", "_body", "_label")

    def __init__(self, client: "UpstreamClient", conn: _Conn, status: int, reason: str,
                 headers: dict[str, str], mode: int, length: int, reusable: bool, label: str) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._client = client
        self._conn: _Conn | None = conn
        self._mode = mode
        self._left = length          # Content-Length bytes left, or bytes left in the current chunk
        self._need_crlf = False      # chunked: CRLF after the previous chunk's data not read yet
        self._reusable = reusable
        self._done = False
        self._body: bytes | None = None
        self._label = label
        if mode == _NO_BODY or (mode == _LENGTH and length == 0):
            self._finish()

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} from {self._label}>"

    async def read(self, max_bytes: int = MAX_BODY) -> bytes:
        """The whole (remaining) body; afterwards the connection returns to the pool.

        A body longer than ``max_bytes`` raises ProtocolError (and closes the connection): an
        upstream that sends without end must not exhaust the proxy's memory."""
        if self._body is not None:
            return self._body
        parts = []
        total = 0
        while True:
            data = await self._read_some()
            if not data:
                break
            total += len(data)
            if total > max_bytes:
                self.close()
                raise ProtocolError(f"response body from {self._label} exceeds {max_bytes} bytes")
            parts.append(data)
        self._body = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._body

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (de-chunked); the connection is pooled at the clean end."""
        return _ChunkIterator(self)

    def close(self) -> None:
        """Abandon the body: the connection is closed, never pooled."""
        if not self._done:
            self._done = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abort()

    def _finish(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._reusable:
            self._client._release(conn)
        else:
            conn.close()

    async def _read_some(self) -> bytes:
        if self._done:
            return b""
        conn = self._conn
        assert conn is not None
        timeout = self._client._read_timeout
        try:
            if self._mode == _LENGTH:
                data = await asyncio.wait_for(conn.reader.read(min(self._left, READ_SIZE)), timeout)
                if not data:
                    raise ProtocolError(
                        f"{self._label} closed the connection with {self._left} body bytes still expected")
                self._left -= len(data)
                if self._left == 0:
                    self._finish()
                return data
            if self._mode == _CHUNKED:
                # One wait_for per call: chunk header (if due) plus the first available data bytes.
                data = await _within(self._read_chunked(conn.reader), timeout)
                if not data:
                    self._finish()
                return data
            data = await asyncio.wait_for(conn.reader.read(READ_SIZE), timeout)
            if not data:
                self._finish()  # close-delimited: EOF is the end (connection not reusable)
            return data
        except asyncio.TimeoutError:
            self.close()
            raise UpstreamTimeout(
                f"no data from {self._label} for {timeout:g}s while reading the response body", "read") from None
        except UpstreamError:
            self.close()
            raise
        except asyncio.IncompleteReadError:
            self.close()
            raise ProtocolError(f"{self._label} closed the connection in the middle of a chunked body") from None
        except asyncio.LimitOverrunError:
            self.close()
            raise ProtocolError(f"{self._label} sent an oversized chunk header") from None
        except OSError as exc:
            self.close()
            raise UpstreamError(f"connection to {self._label} lost while reading the body: {_os_reason(exc)}") from exc
        except BaseException:  # cancellation: never pool a connection left mid-body
            self.close()
            raise

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        if self._left == 0:
            if self._need_crlf:
                if await reader.readexactly(2) != _CRLF:
                    raise ProtocolError(f"{self._label} sent chunk data longer than its declared size")
                self._need_crlf = False
            line = await reader.readuntil(_CRLF)
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 16 or not _HEX.issuperset(size_text):
                raise ProtocolError(f"bad chunk size line {line[:40]!r} from {self._label}")
            size = int(size_text, 16)
            if size == 0:
                await self._read_trailers(reader)
                return b""
            self._left = size
        data = await reader.read(min(self._left, READ_SIZE))
        if not data:
            raise ProtocolError(f"{self._label} closed the connection in the middle of a chunk")
        self._left -= len(data)
        if self._left == 0:
            self._need_crlf = True
        return data

    async def _read_trailers(self, reader: asyncio.StreamReader) -> None:
        total = 0
        while True:
            line = await reader.readuntil(_CRLF)
            if line == _CRLF:
                return
            total += len(line)
            if total > MAX_HEAD:
                raise ProtocolError(f"{self._label} sent trailers larger than 64 KiB")


async def _within(coro, timeout: float):
    """`await coro`, raising asyncio.TimeoutError after `timeout` seconds. The per-event read of a
    stream: one timer handle, where wait_for would also create and schedule a second task."""
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await coro
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        handle.cancel()


class _ChunkIterator:
    """Class-based (not an async generator) so abandoning it needs no finalizer to run."""

    __slots__ = ("_resp",)

    def __init__(self, resp: UpstreamResponse) -> None:
        self._resp = resp

    def __aiter__(self) -> "_ChunkIterator":
        return self

    async def __anext__(self) -> bytes:
        data = await self._resp._read_some()
        if not data:
            raise StopAsyncIteration
        return data


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _raise_if_tls_failure(exc: OSError, target: _Target) -> None:
    """Name TLS failures as such (only called once an https connection was tried, so ssl is loaded)."""
    import ssl
    if isinstance(exc, ssl.SSLCertVerificationError):
        raise ConnectError(
            f"TLS certificate verification failed for {target.label}: "
            f"{exc.verify_message or exc.reason or exc}. This is a certificate problem: if the server "
            f"uses a private or corporate CA, point SSL_CERT_FILE (or SSL_CERT_DIR) at a CA bundle "
            f"that includes it") from None
    if isinstance(exc, ssl.SSLError):
        raise ConnectError(f"TLS handshake with {target.label} failed: {exc.reason or exc}") from None


class _RetryOnFresh(Exception):
    """Internal: a reused connection turned out to be dead before any response byte arrived."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------- client

class UpstreamClient:
    """HTTP/1.1 client with a bounded per-origin keep-alive pool."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0, pool_size: int = 32,
                 ssl_context: ssl.SSLContext | None = None, env: Mapping[str, str] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_size = max(0, pool_size)
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._ssl_context = ssl_context
        self._ssl_error: str | None = None
        env = os.environ if env is None else env
        self._cafile = env.get("SSL_CERT_FILE") or None
        self._capath = env.get("SSL_CERT_DIR") or None
        self._proxy_urls = {
            "https": env.get("https_proxy") or env.get("HTTPS_PROXY") or "",
            "http": env.get("http_proxy") or env.get("HTTP_PROXY") or "",
        }
        self._proxies: dict[str, _Proxy | ConnectError | None] = {}
        self._no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
        self._pool: dict[tuple, deque[_Conn]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    # ---- configuration (lazy so that a bad setting only affects requests that need it)

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            if self._ssl_error is not None:
                raise ConnectError(self._ssl_error)
            from asyncio import sslproto
            if getattr(sslproto, "ssl", True) is None:
                # clasp.cli imported asyncio without ssl because no configured upstream uses https
                raise ConnectError("TLS is not loaded in this process (clasp started without it because "
                                   "no configured upstream uses https): restart clasp")
            import ssl
            try:
                ctx = ssl.create_default_context(cafile=self._cafile, capath=self._capath)
            except (OSError, ssl.SSLError) as exc:
                self._ssl_error = (f"cannot load CA certificates (SSL_CERT_FILE={self._cafile!r}, "
                                   f"SSL_CERT_DIR={self._capath!r}): {_os_reason(exc)}")
                raise ConnectError(self._ssl_error) from None
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl_context = ctx
        return self._ssl_context

    def _proxy(self, scheme: str) -> _Proxy | None:
        try:
            proxy = self._proxies[scheme]
        except KeyError:
            url = self._proxy_urls[scheme]
            try:
                proxy = _Proxy(url) if url else None
            except ConnectError as exc:
                proxy = exc
            self._proxies[scheme] = proxy
        if isinstance(proxy, ConnectError):
            raise ConnectError(str(proxy))
        return proxy

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is not None:
            return target
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        host = parts.hostname
        if not host:
            raise ValueError("URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError("URL has an invalid port") from None
        request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in request_target for c in " \r\n"):
            raise ValueError("URL path contains whitespace or control characters")
        proxy = None
        if not proxy_bypassed(host, port, self._no_proxy):
            proxy = self._proxy(scheme)
        target = _Target(scheme, host, port, request_target, proxy)
        if len(self._targets) >= _TARGET_CACHE_MAX:
            self._targets.clear()
        self._targets[url] = target
        return target

    # ---- pool

    def _acquire(self, key: tuple) -> _Conn | None:
        idle = self._pool.get(key)
        if not idle:
            return None
        now = self._clock()
        limit = self._idle_timeout
        while idle and now - idle[0].idle_since > limit:  # oldest first: drop expired ones
            idle.popleft().close()
        while idle:
            conn = idle.pop()  # most recently used: least likely to have been closed by the server
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        if self._closed or not conn.usable():
            conn.close()
            return
        idle = self._pool.get(conn.key)
        if idle is None:
            idle = self._pool[conn.key] = deque()
        if len(idle) >= self._pool_size:
            conn.close()
            return
        conn.idle_since = self._clock()
        idle.append(conn)

    async def close(self) -> None:
        """Close all idle connections; connections of in-flight responses close when they finish."""
        self._closed = True
        conns = [c for idle in self._pool.values() for c in idle]
        self._pool.clear()
        for conn in conns:
            conn.close()
        if conns:
            waits = [c.writer.wait_closed() for c in conns]
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 1.0)
            except asyncio.TimeoutError:
                for conn in conns:
                    conn.abort()

    # ---- connecting

    async def _connect(self, target: _Target) -> _Conn:
        ctx = self._ssl() if target.scheme == "https" else None
        try:
            return await asyncio.wait_for(self._open(target, ctx), self._connect_timeout)
        except asyncio.TimeoutError:
            where = target.proxy.label + f" (for {target.label})" if target.proxy else target.label
            raise UpstreamTimeout(
                f"connecting to {where} timed out after {self._connect_timeout:g}s", "connect") from None
        except UpstreamError:
            raise
        except asyncio.IncompleteReadError:
            raise ConnectError(f"{target.proxy.label if target.proxy else target.label} closed the connection "
                               f"during setup for {target.label}") from None
        except asyncio.LimitOverrunError:
            raise ConnectError(f"oversized CONNECT response from {target.proxy.label if target.proxy else ''}") \
                from None
        except OSError as exc:
            if ctx is not None:
                _raise_if_tls_failure(exc, target)
            where = f"{target.proxy.label} (for {target.label})" if target.proxy else target.label
            raise ConnectError(f"cannot connect to {where}: {_os_reason(exc)}") from None

    async def _open(self, target: _Target, ctx: ssl.SSLContext | None) -> _Conn:
        proxy = target.proxy
        if proxy is None:
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=ctx, server_hostname=target.host if ctx else None, limit=MAX_HEAD)
            return _Conn(reader, writer, target.key)
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port, limit=MAX_HEAD)
        try:
            if ctx is not None:
                writer = await self._tunnel(reader, writer, target, ctx)
        except BaseException:
            writer.transport.abort()
            raise
        return _Conn(reader, writer, target.key)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: _Target,
                      ctx: ssl.SSLContext) -> asyncio.StreamWriter:
        proxy = target.proxy
        assert proxy is not None
        authority = _redacted_netloc(target.host, target.port)
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")
                     + proxy.auth_header + _CRLF)
        head = await reader.readuntil(_HEAD_END)
        try:
            status, _, reason, _ = _parse_head(head)
        except ProtocolError:
            raise ConnectError(f"{proxy.label} sent a malformed reply to CONNECT {authority}") from None
        if not 200 <= status < 300:
            raise ConnectError(f"{proxy.label} refused CONNECT {authority}: {status} {reason}".rstrip())
        if _HAS_STREAM_START_TLS:
            await writer.start_tls(ctx, server_hostname=target.host)
            return writer
        # Python 3.10: StreamWriter.start_tls does not exist; upgrade the transport with
        # loop.start_tls and wrap the new transport in a fresh StreamWriter on the same protocol.
        loop = asyncio.get_running_loop()
        transport = writer.transport
        protocol = transport.get_protocol()
        new_transport = await loop.start_tls(transport, protocol, ctx, server_hostname=target.host)
        # Tell the stream protocol it now runs over TLS (what 3.11's _replace_writer does); this only
        # silences SSLProtocol's "eof_received() has no effect" warning at EOF.
        protocol._over_ssl = True  # type: ignore[attr-defined]
        return asyncio.StreamWriter(new_transport, protocol, reader, loop)

    # ---- requests

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> UpstreamResponse:
        """Send one request and read the response head (the body is read from the response)."""
        if self._closed:
            raise UpstreamError("client is closed")
        target = self._target(url)
        head = self._encode_head(method, target, headers, body)
        conn = self._acquire(target.key)
        if conn is not None:
            try:
                return await self._exchange(conn, target, method, head, body, True)
            except _RetryOnFresh:
                pass  # the server closed the idle connection meanwhile: retry once on a fresh one
        conn = await self._connect(target)
        return await self._exchange(conn, target, method, head, body, False)

    def _encode_head(self, method: str, target: _Target, headers: list[tuple[str, str]], body: bytes) -> bytes:
        if not method.isalpha():
            raise ValueError("invalid HTTP method")
        parts = [method.upper().encode("ascii"), target.prefix]
        for name, value in headers:
            lname = name.lower()
            if lname in _OWNED_HEADERS:
                continue
            if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
                raise ValueError(f"invalid header {name!r}")  # header injection guard
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body or method.upper() in _BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(_TAIL)
        return b"".join(parts)

    async def _exchange(self, conn: _Conn, target: _Target, method: str, head: bytes, body: bytes,
                        reused: bool) -> UpstreamResponse:
        reader, writer = conn.reader, conn.writer
        timeout = self._read_timeout
        label = target.label
        try:
            if body:
                writer.writelines((head, body))
            else:
                writer.write(head)
            try:
                # A write stalled by a peer that stopped reading counts against read_timeout too.
                await asyncio.wait_for(writer.drain(), timeout)
                interim = 0
                while True:
                    raw = await asyncio.wait_for(reader.readuntil(_HEAD_END), timeout)
                    status, version, reason, resp_headers = _parse_head(raw)
                    if status >= 200:
                        break
                    if status == 101:
                        raise ProtocolError(f"{label} switched protocols unexpectedly")
                    reused = False  # bytes of a response arrived: never retry from here on
                    interim += 1
                    if interim > MAX_INTERIM:  # each one resets the read timeout: bound them
                        raise ProtocolError(f"{label} sent more than {MAX_INTERIM} interim (1xx) responses")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ProtocolError(f"{label} closed the connection in the middle of the response head") \
                        from None
                err = UpstreamError(f"{label} closed the connection without sending a response")
                if reused:
                    raise _RetryOnFresh(err) from None
                raise err from None
            except asyncio.TimeoutError:
                raise UpstreamTimeout(f"no response from {label} within {timeout:g}s", "read") from None
            except asyncio.LimitOverrunError:
                raise ProtocolError(f"response head from {label} exceeds 64 KiB") from None
            except (ConnectionError, OSError) as exc:
                err = UpstreamError(f"connection to {label} lost: {_os_reason(exc)}")
                if reused:
                    raise _RetryOnFresh(err) from None
                raise err from None
        except BaseException:  # any failure (or cancellation) before the response object exists
            conn.abort()
            raise
        try:
            mode, length, reusable = self._framing(method, status, version, resp_headers, label)
        except BaseException:
            conn.abort()
            raise
        return UpstreamResponse(self, conn, status, reason, resp_headers, mode, length, reusable, label)

    @staticmethod
    def _framing(method: str, status: int, version: str, headers: dict[str, str],
                 label: str) -> tuple[int, int, bool]:
        """Body framing per RFC 9112 §6.3: (mode, content length, connection reusable)."""
        conn_tokens = _tokens(headers.get("connection"))
        if version == "HTTP/1.0":
            reusable = "keep-alive" in conn_tokens
        else:
            reusable = "close" not in conn_tokens
        if method.upper() == "HEAD" or status in (204, 304):
            return _NO_BODY, 0, reusable
        te = headers.get("transfer-encoding")
        if te is not None:
            codings = [t.strip().lower() for t in te.split(",")]
            if codings[-1] == "chunked":
                # Content-Length alongside Transfer-Encoding is a smuggling smell: do not reuse.
                return _CHUNKED, 0, reusable and "content-length" not in headers
            return _UNTIL_CLOSE, 0, False
        cl = headers.get("content-length")
        if cl is not None:
            values = {v.strip() for v in cl.split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not _is_number(value):
                raise ProtocolError(f"invalid Content-Length {cl[:40]!r} from {label}")
            return _LENGTH, int(value), reusable
        return _UNTIL_CLOSE, 0, False
