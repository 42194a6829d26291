from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import sys
from typing import Awaitable, Callable

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fakeproxy import FakeProxy  # noqa: E402

from clasp.upstream.client import (  # noqa: E402
    ConnectError,
    ProtocolError,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    proxy_bypassed,
)

from harness import free_port  # noqa: E402

CERTS = os.path.join(os.path.dirname(__file__), "certs")
CA = os.path.join(CERTS, "ca.pem")


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 10)
    asyncio.run(bounded())


async def read_request(reader: asyncio.StreamReader):
    """(request line, lower-case headers, body) or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """In-process server on 127.0.0.1; counts connections, records requests."""

    def __init__(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_ctx = ssl_ctx
        self.connections = 0
        self.requests: list[tuple[str, dict, bytes]] = []
        self.closed_by_peer: list[int] = []  # connection numbers that saw EOF from the client
        self.alpn: list[str | None] = []
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "Server":
        self.server = await asyncio.start_server(self._cb, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def url(self, path: str = "/", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _cb(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is not None:
            self.alpn.append(sslobj.selected_alpn_protocol())
        # The handler runs in its own task so teardown can cancel it while this callback task
        # still ends normally (3.11's start_server logs an error for cancelled callback tasks).
        task = asyncio.ensure_future(self.handler(reader, writer, n))
        self.tasks.add(task)
        try:
            await task
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    async def serve_requests(self, reader, writer, respond: Callable[[tuple], bytes], n: int) -> None:
        """Keep-alive loop: respond to each request; record client EOF."""
        while True:
            req = await read_request(reader)
            if req is None:
                self.closed_by_peer.append(n)
                return
            self.requests.append(req)
            writer.write(respond(req))
            await writer.drain()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def keepalive(respond: Callable[[tuple], bytes] = lambda req: ok()):
    def make(srv_ref: list):
        async def handler(reader, writer, n):
            await srv_ref[0].serve_requests(reader, writer, respond, n)
        return handler
    return make


def server(respond: Callable[[tuple], bytes] = lambda req: ok(), ssl_ctx=None) -> Server:
    ref: list = []
    srv = Server(keepalive(respond)(ref), ssl_ctx)
    ref.append(srv)
    return srv


def server_ssl_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# --------------------------------------------------------------------------- basic responses

def test_content_length_request_and_response():
    async def main():
        async with server(lambda req: ok(b"response-body", b"X-Dup: a\r\nx-dup: b\r\n")) as srv:
            client = UpstreamClient(env={})
            resp = await client.request("POST", srv.url("/v1/chat/completions?beta=true&x=1"),
                                        [("Content-Type", "application/json"), ("Authorization", "Bearer k")],
                                        b'{"a":1}')
            assert resp.status == 200
            assert resp.headers["x-dup"] == "a, b"
            assert await resp.read() == b"response-body"
            line, headers, body = srv.requests[0]
            assert line == "POST /v1/chat/completions?beta=true&x=1 HTTP/1.1"
            assert headers["host"] == f"127.0.0.1:{srv.port}"
            assert headers["content-length"] == "7"
            assert headers["connection"] == "keep-alive"
            assert headers["content-type"] == "application/json"
            assert body == b'{"a":1}'
            await client.close()
    run(main())


def test_chunked_odd_boundaries_extensions_and_trailers_then_reuse():
    payload = b"".join(b"line %d\n" % i for i in range(50))

    async def handler(reader, writer, n):
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            wire = b"7;ext=1\r\n" + payload[:7] + b"\r\n" + b"%x\r\n" % (len(payload) - 7) + payload[7:] \
                + b"\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n"
            # Deliver the wire bytes split at odd places (mid size line, mid CRLF, mid data).
            for i in range(0, len(wire), 13):
                writer.write(wire[i:i + 13])
                await writer.drain()
                await asyncio.sleep(0)

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={})
            for _ in range(2):
                resp = await client.request("GET", srv.url(), [], b"")
                assert await resp.read() == payload
            assert srv.connections == 1  # the connection was pooled after the trailers
            await client.close()
    run(main())


def test_keepalive_reuse_one_connection_for_several_requests():
    async def main():
        async with server(lambda req: ok(req[0].encode())) as srv:
            client = UpstreamClient(env={})
            for i in range(4):
                resp = await client.request("GET", srv.url(f"/r{i}"), [], b"")
                assert await resp.read() == f"GET /r{i} HTTP/1.1".encode()
            assert srv.connections == 1
            await client.close()
    run(main())


def test_head_204_304_have_no_body_and_reuse():
    def respond(req):
        line = req[0]
        if line.startswith("HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        if "/204" in line:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"

    async def main():
        async with server(respond) as srv:
            client = UpstreamClient(env={}, read_timeout=1)
            for method, path, status in (("HEAD", "/", 200), ("GET", "/204", 204), ("GET", "/304", 304)):
                resp = await client.request(method, srv.url(path), [], b"")
                assert resp.status == status
                assert await resp.read() == b""
            assert srv.connections == 1
            await client.close()
    run(main())


def test_100_continue_is_skipped():
    async def main():
        async with server(lambda req: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")) as srv:
            client = UpstreamClient(env={})
            resp = await client.request("POST", srv.url(), [], b"x")
            assert resp.status == 200
            assert await resp.read() == b"final"
            await client.close()
    run(main())


def test_close_delimited_body_not_pooled():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-")
        await writer.drain()
        writer.write(b"close")

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={})
            for _ in range(2):
                resp = await client.request("GET", srv.url(), [], b"")
                assert await resp.read() == b"until-close"
            assert srv.connections == 2
            await client.close()
    run(main())


def test_connection_close_response_not_pooled():
    async def main():
        async with server(lambda req: ok(b"x", b"Connection: close\r\n")) as srv:
            client = UpstreamClient(env={})
            for _ in range(3):
                resp = await client.request("GET", srv.url(), [], b"")
                assert await resp.read() == b"x"
            assert srv.connections == 3
            await client.close()
    run(main())


# --------------------------------------------------------------------------- pool behaviour

def test_server_closing_idle_connection_uses_new_connection():
    async def handler(reader, writer, n):
        req = await read_request(reader)
        writer.write(ok(b"conn%d" % n))  # keep-alive advertised, but the server closes right after
        await writer.drain()

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={})
            assert await (await client.request("GET", srv.url(), [], b"")).read() == b"conn1"
            await asyncio.sleep(0.05)  # let the client see the FIN
            assert await (await client.request("GET", srv.url(), [], b"")).read() == b"conn2"
            await client.close()
    run(main())


def test_request_on_reused_connection_closed_meanwhile_is_retried_once():
    async def handler(reader, writer, n):
        if n == 1:
            await read_request(reader)
            writer.write(ok(b"first"))
            await writer.drain()
            await read_request(reader)  # the second request arrives ... and the server drops it
            return
        await read_request(reader)
        writer.write(ok(b"second"))
        await writer.drain()

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={})
            assert await (await client.request("POST", srv.url(), [], b"a")).read() == b"first"
            assert await (await client.request("POST", srv.url(), [], b"b")).read() == b"second"
            assert srv.connections == 2
            await client.close()
    run(main())


def test_fresh_connection_closed_without_response_is_not_retried():
    async def handler(reader, writer, n):
        await read_request(reader)  # and close without answering

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={})
            with pytest.raises(UpstreamError, match="without sending a response"):
                await client.request("POST", srv.url(), [], b"x")
            assert srv.connections == 1
            await client.close()
    run(main())


def test_idle_connections_older_than_60s_are_dropped():
    now = [1000.0]

    async def main():
        async with server() as srv:
            client = UpstreamClient(env={}, clock=lambda: now[0])
            await (await client.request("GET", srv.url(), [], b"")).read()
            now[0] += 30
            await (await client.request("GET", srv.url(), [], b"")).read()
            assert srv.connections == 1
            now[0] += 61
            await (await client.request("GET", srv.url(), [], b"")).read()
            assert srv.connections == 2
            await asyncio.sleep(0.05)
            assert 1 in srv.closed_by_peer  # the expired connection was really closed
            await client.close()
    run(main())


def test_pool_keeps_at_most_pool_size_idle_connections():
    async def main():
        gate = asyncio.Event()
        srv_ref: list = []

        async def handler(reader, writer, n):
            srv = srv_ref[0]
            req = await read_request(reader)
            if srv.connections >= 2:
                gate.set()
            await gate.wait()  # answer only once two connections are open at the same time
            writer.write(ok(b"c%d" % n))
            await writer.drain()
            await srv.serve_requests(reader, writer, lambda r: ok(b"c%d" % n), n)

        async with Server(handler) as srv:
            srv_ref.append(srv)
            client = UpstreamClient(env={}, pool_size=1)

            async def one():
                return await (await client.request("GET", srv.url(), [], b"")).read()

            assert sorted(await asyncio.gather(one(), one())) == [b"c1", b"c2"]
            await asyncio.sleep(0.05)
            assert len(srv.closed_by_peer) == 1  # one of the two was closed, not kept
            kept = 3 - srv.closed_by_peer[0]
            assert await one() == b"c%d" % kept
            assert srv.connections == 2
            await client.close()
    run(main())


# --------------------------------------------------------------------------- timeouts and errors

def test_per_read_timeout_allows_slow_steady_stream():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for i in range(8):  # 8 x 0.05 s = 0.4 s total, longer than read_timeout
            await asyncio.sleep(0.05)
            writer.write(b"%d" % i)
            await writer.drain()

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={}, read_timeout=0.2)
            resp = await client.request("GET", srv.url(), [], b"")
            assert await resp.read() == b"01234567"
            await client.close()
    run(main())


def test_stalled_body_raises_read_timeout_and_closes_connection():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nab")
        await writer.drain()
        if await reader.read(1) == b"":  # stalls until the client hangs up
            srv_ref[0].closed_by_peer.append(n)

    srv_ref: list = []

    async def main():
        async with Server(handler) as srv:
            srv_ref.append(srv)
            client = UpstreamClient(env={}, read_timeout=0.2)
            resp = await client.request("GET", srv.url(), [], b"")
            with pytest.raises(UpstreamTimeout) as info:
                await resp.read()
            assert info.value.phase == "read"
            await asyncio.sleep(0.05)
            assert srv.closed_by_peer == [1]
            await client.close()
    run(main())


def test_stalled_response_head_raises_read_timeout_and_closes_connection():
    async def handler(reader, writer, n):
        await read_request(reader)
        if await reader.read(1) == b"":  # never answers; waits for the client to hang up
            srv_ref[0].closed_by_peer.append(n)

    srv_ref: list = []

    async def main():
        async with Server(handler) as srv:
            srv_ref.append(srv)
            client = UpstreamClient(env={}, read_timeout=0.1)
            with pytest.raises(UpstreamTimeout) as info:
                await client.request("GET", srv.url(), [], b"")
            assert info.value.phase == "read"
            await asyncio.sleep(0.05)
            assert srv.closed_by_peer == [1]
            await client.close()
    run(main())


def test_connect_refused_raises_connect_error():
    async def main():
        client = UpstreamClient(env={})
        with pytest.raises(ConnectError, match="cannot connect to 127.0.0.1"):
            await client.request("GET", f"http://127.0.0.1:{free_port()}/", [], b"")
        await client.close()
    run(main())


@pytest.mark.parametrize("response,match", [
    (b"HTTP/1.1 OK\r\n\r\n", "malformed status line"),
    (b"SMTP 220 hi\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", "exceeds 64 KiB"),
])
def test_malformed_heads_raise_protocol_error(response, match):
    async def main():
        async with server(lambda req: response) as srv:
            client = UpstreamClient(env={})
            with pytest.raises(ProtocolError, match=match):
                await client.request("GET", srv.url(), [], b"")
            await client.close()
    run(main())


@pytest.mark.parametrize("wire,match", [
    (b"zz\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
    (b"2\r\nabc\r\n0\r\n\r\n", "longer than its declared size"),
    (b"5\r\nab", "middle of a chunk"),
])
def test_bad_chunked_bodies_raise_protocol_error(wire, match):
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
        await writer.drain()

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={}, read_timeout=1)
            resp = await client.request("GET", srv.url(), [], b"")
            with pytest.raises(ProtocolError, match=match):
                await resp.read()
            await client.close()
    run(main())


def test_truncated_content_length_body_raises_protocol_error():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async def main():
        async with Server(handler) as srv:
            client = UpstreamClient(env={})
            resp = await client.request("GET", srv.url(), [], b"")
            with pytest.raises(ProtocolError, match="7 body bytes still expected"):
                await resp.read()
            await client.close()
    run(main())


def test_header_injection_is_rejected():
    async def main():
        client = UpstreamClient(env={})
        with pytest.raises(ValueError):
            await client.request("GET", "http://127.0.0.1:1/", [("X-A", "v\r\nEvil: 1")], b"")
        await client.close()
    run(main())


# --------------------------------------------------------------------------- TLS

def test_tls_with_test_ca_from_ssl_cert_file():
    async def main():
        async with server(lambda req: ok(b"secure"), ssl_ctx=server_ssl_context()) as srv:
            client = UpstreamClient(env={"SSL_CERT_FILE": CA})
            for host in ("127.0.0.1", "localhost"):
                resp = await client.request("GET", srv.url("/", "https", host), [], b"")
                assert await resp.read() == b"secure"
            assert srv.alpn[0] == "http/1.1"
            await client.close()
    run(main())


def test_tls_without_ca_fails_with_certificate_error():
    async def main():
        # The test server logs the handshake the client (rightly) aborts; keep the output clean.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
        async with server(ssl_ctx=server_ssl_context()) as srv:
            client = UpstreamClient(env={})
            with pytest.raises(ConnectError) as info:
                await client.request("GET", srv.url("/", "https"), [], b"")
            message = str(info.value)
            assert "certificate" in message and "SSL_CERT_FILE" in message
            await client.close()
    run(main())


def test_unreadable_ssl_cert_file_is_a_clear_connect_error():
    async def main():
        client = UpstreamClient(env={"SSL_CERT_FILE": os.path.join(CERTS, "missing.pem")})
        with pytest.raises(ConnectError, match="SSL_CERT_FILE"):
            await client.request("GET", "https://127.0.0.1:1/", [], b"")
        await client.close()
    run(main())


# --------------------------------------------------------------------------- proxies

def test_https_through_connect_proxy_with_credentials():
    async def main():
        async with server(lambda req: ok(b"tunneled"), ssl_ctx=server_ssl_context()) as srv, FakeProxy() as proxy:
            env = {"SSL_CERT_FILE": CA, "HTTPS_PROXY": proxy.url("us%40er:p%3Ass")}
            client = UpstreamClient(env=env)
            for _ in range(2):
                resp = await client.request("GET", srv.url("/q?x=1", "https"), [], b"")
                assert await resp.read() == b"tunneled"
            assert len(proxy.heads) == 1  # the tunnel was pooled and reused
            line, headers = proxy.heads[0]
            assert line == f"CONNECT 127.0.0.1:{srv.port} HTTP/1.1"
            assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
            assert srv.requests[0][0] == "GET /q?x=1 HTTP/1.1"
            await client.close()
    run(main())


def test_http_through_proxy_uses_absolute_form():
    async def main():
        async with server(lambda req: ok(b"via-proxy")) as srv, FakeProxy() as proxy:
            client = UpstreamClient(env={"http_proxy": proxy.url("u:p")})
            resp = await client.request("GET", srv.url("/a?b=c"), [], b"")
            assert await resp.read() == b"via-proxy"
            line, headers = proxy.heads[0]
            assert line == f"GET http://127.0.0.1:{srv.port}/a?b=c HTTP/1.1"
            assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
            await client.close()
    run(main())


def test_no_proxy_bypasses_proxy():
    async def main():
        async with server(lambda req: ok(b"direct")) as srv, FakeProxy() as proxy:
            client = UpstreamClient(env={"HTTP_PROXY": proxy.url(), "NO_PROXY": "example.com, 127.0.0.1"})
            resp = await client.request("GET", srv.url(), [], b"")
            assert await resp.read() == b"direct"
            assert proxy.connections == 0
            await client.close()
    run(main())


def test_loopback_is_proxied_unless_listed():
    async def main():
        async with server(lambda req: ok(b"x")) as srv, FakeProxy() as proxy:
            client = UpstreamClient(env={"HTTP_PROXY": proxy.url(), "NO_PROXY": "example.com"})
            await (await client.request("GET", srv.url(), [], b"")).read()
            assert proxy.connections == 1
            await client.close()
    run(main())


@pytest.mark.parametrize("host,port,no_proxy,expected", [
    ("api.example.com", 443, "example.com", True),
    ("example.com", 443, ".example.com", True),
    ("badexample.com", 443, "example.com", False),
    ("api.example.com", 443, "example.com:443", True),
    ("api.example.com", 8443, "example.com:443", False),
    ("anything.org", 80, "*", True),
    ("127.0.0.1", 80, "", False),
    ("localhost", 80, "example.com", False),
    ("localhost", 80, " localhost ,example.com", True),
    ("::1", 80, "[::1]:80", True),
    ("::1", 80, "::1", True),
    ("API.Example.COM", 80, "example.com", True),
])
def test_proxy_bypass_rules(host, port, no_proxy, expected):
    assert proxy_bypassed(host, port, no_proxy) is expected


def test_proxy_credentials_never_in_error_messages():
    async def main():
        port = free_port()
        client = UpstreamClient(env={"HTTPS_PROXY": f"http://alice:s3cretpw@127.0.0.1:{port}"})
        with pytest.raises(ConnectError) as info:
            await client.request("GET", "https://example.invalid/", [], b"")
        assert "s3cretpw" not in str(info.value) and "alice" not in str(info.value)
        assert f"127.0.0.1:{port}" in str(info.value)
        async with FakeProxy(connect_status=407) as proxy:
            client2 = UpstreamClient(env={"HTTPS_PROXY": proxy.url("alice:s3cretpw")})
            with pytest.raises(ConnectError, match="407") as info:
                await client2.request("GET", "https://example.invalid/", [], b"")
            assert "s3cretpw" not in str(info.value) and "alice" not in str(info.value)
            assert "s3cretpw" not in repr(info.value)
        await client.close()
        await client2.close()
    run(main())


def test_proxy_connect_stall_is_a_connect_timeout():
    async def silent(reader, writer, n):
        await asyncio.sleep(0.5)  # accept TCP, never answer CONNECT

    async def main():
        async with Server(silent) as fake:
            client = UpstreamClient(env={"HTTPS_PROXY": f"http://127.0.0.1:{fake.port}"}, connect_timeout=0.1)
            with pytest.raises(UpstreamTimeout) as info:
                await client.request("GET", "https://example.invalid/", [], b"")
            assert info.value.phase == "connect"
            await client.close()
    run(main())


# --------------------------------------------------------------------------- streaming and cancellation

def test_iter_chunks_streams_before_response_finishes():
    async def main():
        release = asyncio.Event()

        async def handler(reader, writer, n):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await release.wait()  # the rest only comes after the client has seen "first"
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await writer.drain()

        async with Server(handler) as srv:
            client = UpstreamClient(env={}, read_timeout=2)
            resp = await client.request("POST", srv.url(), [], b"{}")
            seen = []
            async for chunk in resp.iter_chunks():
                seen.append(chunk)
                release.set()
            assert seen == [b"first", b"second"]
            await client.close()
    run(main())


def test_cancel_mid_body_closes_connection():
    async def main():
        got_first = asyncio.Event()

        async def handler(reader, writer, n):
            srv = srv_ref[0]
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            if await reader.read(1) == b"":
                srv.closed_by_peer.append(n)
            # a keep-alive server would answer further requests here; this one cannot
            # because the client must never reuse a connection abandoned mid-body.

        srv_ref: list = []
        async with Server(handler) as srv:
            srv_ref.append(srv)
            client = UpstreamClient(env={}, read_timeout=2)

            held = []  # keep the response alive: closing must not depend on garbage collection

            async def consume():
                resp = await client.request("GET", srv.url(), [], b"")
                held.append(resp)
                async for _chunk in resp.iter_chunks():
                    got_first.set()

            task = asyncio.ensure_future(consume())
            await got_first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            assert srv.closed_by_peer == [1]
            resp = await client.request("GET", srv.url(), [], b"")
            assert resp.status == 200
            assert srv.connections == 2
            resp.close()
            await client.close()
    run(main())


def test_close_mid_body_abandons_connection():
    async def main():
        async def handler(reader, writer, n):
            await srv_ref[0].serve_requests(
                reader, writer, lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", n)

        srv_ref: list = []
        async with Server(handler) as srv:
            srv_ref.append(srv)
            client = UpstreamClient(env={})
            resp = await client.request("GET", srv.url(), [], b"")
            assert await resp.iter_chunks().__anext__() == b"abc"
            resp.close()
            await asyncio.sleep(0.05)
            assert srv.closed_by_peer == [1]
            resp2 = await client.request("GET", srv.url(), [], b"")
            assert srv.connections == 2
            resp2.close()
            await client.close()
    run(main())
