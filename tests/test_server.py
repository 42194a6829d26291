"""The HTTP/1.1 server on raw sockets: framing, limits, keep-alive, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from clasp.server.http import HTTPServer, Request, Responder, ServerLimits
from harness import LoopThread, recv_response


class Echo:
    def __init__(self):
        self.cancelled = 0

    async def __call__(self, req: Request, resp: Responder) -> None:
        if req.path == "/stream":
            await resp.start(200, [("content-type", "text/event-stream")])
            for i in range(3):
                resp.write(f"event: n\ndata: {i}\n\n".encode())
                await resp.drain()
            await resp.end()
            return
        if req.path == "/slow":
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if req.path == "/boom":
            raise RuntimeError("bug")
        body = json.dumps({"method": req.method, "path": req.path, "query": req.query,
                           "headers": req.headers, "body": req.body.decode("latin-1")}).encode()
        await resp.send(200, [("content-type", "application/json")], body)


@pytest.fixture(scope="module")
def server(lt):
    echo = Echo()
    srv = HTTPServer(echo, ServerLimits(max_body_bytes=1000, header_timeout_s=0.5, idle_timeout_s=1.0))
    addrs = lt.run(srv.start("127.0.0.1", 0))
    srv.port = addrs[0][1]
    srv.echo = echo
    yield srv
    lt.run(srv.shutdown(1))


def send(port: int, data: bytes):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    return s


def test_query_string_and_case_insensitive_headers(server):
    s = send(server.port, b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nX-Api-KEY: k\r\n"
                          b"Content-Length: 2\r\n\r\n{}")
    status, headers, body = recv_response(s)
    data = json.loads(body)
    assert status == 200
    assert data["path"] == "/v1/messages" and data["query"] == "beta=true"
    assert data["headers"]["x-api-key"] == "k"
    assert data["body"] == "{}"


def test_keep_alive_serves_several_requests_on_one_connection(server):
    s = send(server.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(s)[0] == 200
    s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = recv_response(s)
    assert status == 200 and json.loads(body)["path"] == "/b"
    assert headers["connection"] == "keep-alive"


def test_pipelined_requests_are_answered_in_order(server):
    s = send(server.port, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads(recv_response(s)[2])["path"] == "/one"
    assert json.loads(recv_response(s)[2])["path"] == "/two"


def test_connection_close_is_honoured(server):
    s = send(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = recv_response(s)
    assert status == 200 and headers["connection"] == "close"
    assert s.recv(10) == b""


def test_chunked_request_body(server):
    s = send(server.port, b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n")
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["body"] == "Wikipedia"


def test_expect_100_continue(server):
    s = send(server.port, b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"abc")
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["body"] == "abc"


@pytest.mark.parametrize("raw, status, etype", [
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400, "invalid_request_error"),
    (b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413, "request_too_large"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n",
     413, "request_too_large"),
    (b"GARBAGE\r\n\r\n", 400, "invalid_request_error"),
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, "invalid_request_error"),
    (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "invalid_request_error"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "invalid_request_error"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, "invalid_request_error"),
])
def test_bad_requests_get_anthropic_errors(server, raw, status, etype):
    s = send(server.port, raw)
    got, headers, body = recv_response(s)
    assert got == status
    data = json.loads(body)
    assert data["type"] == "error" and data["error"]["type"] == etype and data["error"]["message"]
    assert headers["connection"] == "close"
    # and the server keeps serving
    s2 = send(server.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(s2)[0] == 200


def test_header_timeout_answers_408(server):
    s = send(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    status, _, body = recv_response(s)
    assert status == 408 and json.loads(body)["error"]["type"] == "timeout_error"


@pytest.mark.parametrize("raw", [
    b"GET /x HTTP/1.1\nHost: x\n\n",              # all bare LF
    b"GET /x HTTP/1.1\n\n",
    b"GET /x HTTP/1.1\r\nHost: x\n\n",            # a header line with a bare LF
    b"GET /x HTTP/1.1\r\nHost: x\r\nAccept: y\n\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\n\n",          # the empty line
])
def test_bare_lf_line_endings_get_400_at_once(server, raw):
    # The client has sent its whole head and waits: answered now, not at the header timeout (408).
    s = send(server.port, raw)
    status, headers, body = recv_response(s)
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert headers["connection"] == "close"


def test_a_head_arriving_in_pieces_is_read_whole(server):
    s = send(server.port, b"POST /p")
    for piece in (b"ieces HTTP/1.1\r", b"\nHost: x\r\nX-A: ", b"1\r\nContent-Length: 2\r\n", b"\r", b"\nok"):
        time.sleep(0.02)
        s.sendall(piece)
    status, _, body = recv_response(s)
    data = json.loads(body)
    assert status == 200 and data["path"] == "/pieces" and data["headers"]["x-a"] == "1" and data["body"] == "ok"


@pytest.mark.parametrize("empty", [b"\r\n", b"\n", b"\r\n\r\n", b"\n\n\n", b"\r\n" * 8, b"\n" * 8])
def test_a_few_empty_lines_before_the_request_line_are_ignored(server, empty):
    s = send(server.port, empty + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["path"] == "/after"
    s.sendall(empty + b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")   # and between requests
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["path"] == "/again"


def test_many_empty_lines_before_the_request_line_get_400(server):
    s = send(server.port, b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(s)[0] == 400


def test_idle_keep_alive_connection_is_closed(server):
    s = send(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    recv_response(s)
    s.settimeout(5)
    start = time.monotonic()
    assert s.recv(10) == b""  # closed by the idle timeout (1 s)
    assert time.monotonic() - start < 4


def test_streamed_response_uses_chunked_encoding(server):
    s = send(server.port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert b"data: 0" in body and b"data: 2" in body


def test_head_request_has_no_body(server):
    s = send(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
        data += s.recv(65536)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length:" in first
    assert rest.startswith(b"HTTP/1.1 200")  # no body bytes between the two responses


def test_handler_exception_gives_500_and_server_keeps_serving(server):
    s = send(server.port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = recv_response(s)
    assert status == 500 and json.loads(body)["error"]["type"] == "api_error"
    s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(s)[0] == 200


def test_client_disconnect_cancels_the_handler(server):
    before = server.echo.cancelled
    s = send(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    s.close()
    deadline = time.monotonic() + 3
    while server.echo.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.echo.cancelled == before + 1


def test_http10_stream_is_close_delimited(server):
    s = send(server.port, b"GET /stream HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert body == b"".join(f"event: n\ndata: {i}\n\n".encode() for i in range(3))
