"""Robustness and security of the network edges: the HTTP server under hostile input, the
upstream client against a malicious upstream, secrets in logs and errors, key comparison."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import threading
import time

import pytest

from clasp.ops.auth import AuthPolicy
from clasp.redaction import redact
from clasp.server.http import HTTPServer, Request, Responder, ServerLimits
from clasp.upstream.client import ConnectError, ProtocolError, UpstreamClient, UpstreamTimeout, proxy_bypassed
from harness import Proxy, json_reply, recv_response

BODY_LIMIT = 1000
ANTHROPIC_ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                         "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error"}


class Recorder:
    """Echo handler that remembers what reached it (smuggled requests must never arrive)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.flood: dict = {}

    async def __call__(self, req: Request, resp: Responder) -> None:
        self.paths.append(req.path)
        if req.path == "/flood":
            await self._flood(resp)
            return
        body = json.dumps({"path": req.path, "headers": req.headers,
                           "body": req.body.decode("latin-1")}).encode()
        await resp.send(200, [("content-type", "application/json")], body)

    async def _flood(self, resp: Responder) -> None:
        """Stream far more than any buffer holds, to a client that never reads."""
        transport = resp._writer.transport
        st = self.flood
        st.update(written=0, max_buffered=0, outcome=None)
        piece = b"x" * 65536
        try:
            await resp.start(200, [("content-type", "text/event-stream")])
            for _ in range(4096):  # 256 MiB if nothing pushed back
                resp.write(piece)
                st["written"] += len(piece)
                st["max_buffered"] = max(st["max_buffered"], transport.get_write_buffer_size())
                await resp.drain()
                if resp.closed:
                    st["outcome"] = "closed"
                    return
            st["outcome"] = "finished"
        except asyncio.CancelledError:
            st["outcome"] = "cancelled"
            raise


def make_server(lt, **limits):
    rec = Recorder()
    kw = dict(max_body_bytes=BODY_LIMIT, header_timeout_s=0.5, idle_timeout_s=1.0, write_timeout_s=0.5)
    kw.update(limits)
    srv = HTTPServer(rec, ServerLimits(**kw))
    srv.port = lt.run(srv.start("127.0.0.1", 0))[0][1]
    srv.rec = rec
    return srv


@pytest.fixture(scope="module")
def server(lt):
    srv = make_server(lt)
    yield srv
    lt.run(srv.shutdown(1))


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if the server (or asyncio) logged an error or a traceback meanwhile."""
    caplog.set_level(logging.WARNING)
    yield caplog

    bad = [r for r in caplog.records
           if r.exc_info or (r.levelno >= logging.ERROR and r.name.startswith(("clasp", "asyncio")))
           or (r.name == "asyncio" and r.levelno >= logging.WARNING)]
    assert not bad, "\n".join(f"{r.name}: {r.getMessage()}" for r in bad)


def connect(port: int, data: bytes = b"", timeout: float = 5) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        s.sendall(data)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        out += chunk
    return out


def split_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Content-Length responses back to back (what the server answers to anything non-streamed)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response head {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status == 100:
            data = rest
            continue
        n = int(headers["content-length"])
        assert len(rest) >= n, "truncated response body"
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def assert_anthropic_error(status: int, headers: dict, body: bytes, expected_status: int | None = None) -> None:
    if expected_status is not None:
        assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["type"] == "error"
    assert data["error"]["type"] in ANTHROPIC_ERROR_TYPES
    assert data["error"]["message"]
    assert headers["connection"] == "close"


def assert_still_serving(port: int) -> None:
    s = connect(port, b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["path"] == "/alive"
    s.close()


# ------------------------------------------------------------------------------ fuzz

VALID = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
TOKENS = [b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\xff", b"\xc3\xa9", b"0", b"-1", b"ffffffffffffffffffff",
          b"Content-Length: ", b"Transfer-Encoding: chunked", b"Expect: 100-continue", b"HTTP/1.1", b"\r\n\r\n",
          b";ext", b"0x10", b"9" * 30]


def mutations(rng: random.Random, n: int):
    for i in range(n):
        kind = i % 5
        base = rng.choice(VALID)
        if kind == 0:  # random garbage
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        elif kind == 1:  # truncated valid request
            yield base[:rng.randrange(1, len(base))]
        elif kind == 2:  # byte flips
            b = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)
        elif kind == 3:  # splice in hostile tokens
            b = base
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(b))
                b = b[:at] + rng.choice(TOKENS) + b[at:]
            yield b
        else:  # a valid request followed by a mangled one (pipelining)
            yield base + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))


def test_seeded_fuzz_gets_json_errors_or_clean_closes_and_no_tracebacks(server, no_tracebacks):
    rng = random.Random(20240601)
    statuses: set[int] = set()
    for data in mutations(rng, 250):
        s = connect(server.port, data)
        s.shutdown(socket.SHUT_WR)  # EOF ends the input: no case waits for a timeout
        raw = read_all(s)
        s.close()
        try:
            responses = split_responses(raw)
        except (AssertionError, ValueError, KeyError) as e:
            raise AssertionError(f"unparseable answer {raw[:300]!r} to {data!r}") from e
        for status, headers, body in responses:
            statuses.add(status)
            if status >= 400:
                assert_anthropic_error(status, headers, body)
            else:
                assert status == 200, (data, raw)
    assert {200, 400} <= statuses  # the corpus exercised both paths
    assert_still_serving(server.port)


# ------------------------------------------------------------------------------ framing table

def chunked(body: bytes, extra_headers: bytes = b"") -> bytes:
    return b"POST /c HTTP/1.1\r\nHost: x\r\n" + extra_headers + b"\r\n" + body


BAD = {
    # chunk sizes: strictly hex digits (int(x, 16) alone would take the first four)
    "chunk 0x prefix": (chunked(b"0x5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk plus sign": (chunked(b"+5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk underscore": (chunked(b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk negative": (chunked(b"-5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk empty size": (chunked(b";ext\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk size not hex": (chunked(b"zz\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk size huge hex": (chunked(b"f" * 4000 + b"\r\nx\r\n", b"Transfer-Encoding: chunked\r\n"), 413),
    "chunk size line > 64 KiB": (chunked(b"1;" + b"e" * 70000 + b"\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "chunk longer than declared": (chunked(b"2\r\nabc\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 400),
    "trailers > 64 KiB": (chunked(b"1\r\na\r\n0\r\n" + b"T: " + b"t" * 1000 + b"\r\n" * 1 +
                                  (b"T: " + b"t" * 1000 + b"\r\n") * 70 + b"\r\n",
                                  b"Transfer-Encoding: chunked\r\n"), 431),
    # Content-Length
    "CL negative": (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    "CL plus sign": (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", 400),
    "CL list": (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "CL superscript digit": (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nab", 400),
    "CL 5000 digits": (b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
    "CL overflowing int64": (b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551617\r\n\r\n", 413),
    "CL duplicate differing": (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "CL empty": (b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", 400),
    # smuggling: CL+TE, TE variants, HTTP/1.0 TE
    "CL and TE": (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE then CL": (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    "TE chunked, identity": (chunked(b"0\r\n\r\n", b"Transfer-Encoding: chunked, identity\r\n"), 400),
    "TE identity": (b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    "TE twice": (chunked(b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400),
    "TE space before colon": (chunked(b"0\r\n\r\n", b"Transfer-Encoding : chunked\r\n"), 400),
    "TE obs-fold": (chunked(b"0\r\n\r\n", b"Transfer-Encoding:\r\n chunked\r\n"), 400),
    "TE in HTTP/1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE behind bare LF": (b"POST / HTTP/1.1\r\nX: a\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab", 400),
    "bare CR in value": (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
    # bytes that are not allowed where they appear
    "NUL in header value": (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    "NUL in header name": (b"GET / HTTP/1.1\r\nX\x00Y: a\r\n\r\n", 400),
    "non-ASCII header name": (b"GET / HTTP/1.1\r\nX-\xe9: a\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n", 400),
    "NUL in target": (b"GET /a\x00b HTTP/1.1\r\n\r\n", 400),
    "control in target": (b"GET /a\x7fb HTTP/1.1\r\n\r\n", 400),
    "HTTP/2 request line": (b"GET / HTTP/2.0\r\n\r\n", 505),
    "huge header": (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    "many small headers": (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(9000)) + b"\r\n", 431),
    "body too large": (b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", 413),
    "chunked body too large": (chunked(b"3e9\r\n" + b"x" * 1001 + b"\r\n0\r\n\r\n",
                                       b"Transfer-Encoding: chunked\r\n"), 413),
    "truncated head": (b"GET / HTTP/1.1\r\nHost", 400),
    "truncated body": (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),
    "truncated chunk": (chunked(b"5\r\nab", b"Transfer-Encoding: chunked\r\n"), 400),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_the_right_anthropic_error(server, no_tracebacks, name):
    data, expected = BAD[name]
    before = len(server.rec.paths)
    s = connect(server.port, data)
    s.shutdown(socket.SHUT_WR)
    responses = split_responses(read_all(s))
    s.close()
    assert len(responses) == 1, responses
    assert_anthropic_error(*responses[0], expected_status=expected)
    assert len(server.rec.paths) == before  # nothing reached the handler
    assert_still_serving(server.port)


@pytest.mark.parametrize("data, body, header", [
    (chunked(b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding:  chunked \r\n"), "hello", None),  # OWS trimmed
    (chunked(b"5 ;a=b\r\nhello\r\n0\r\nT: x\r\n\r\n", b"Transfer-Encoding: CHUNKED\r\n"), "hello", None),
    (b"POST /d HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi", "hi", None),  # identical duplicates
    (b"POST /d HTTP/1.1\r\nContent-Length: 0002\r\n\r\nhi", "hi", None),                    # leading zeros
    (b"GET /n HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n", "", ("x-name", "caf\xe9")),          # obs-text value
    (b"GET /n HTTP/1.1\r\nX-Tab: a\tb\r\n\r\n", "", ("x-tab", "a\tb")),
])
def test_tolerated_variants_are_served(server, no_tracebacks, data, body, header):
    s = connect(server.port, data)
    status, _, raw = recv_response(s)
    s.close()
    assert status == 200
    got = json.loads(raw)
    assert got["body"] == body
    if header:
        assert got["headers"][header[0]] == header[1]


def test_smuggled_request_in_a_rejected_body_never_runs(server, no_tracebacks):
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    for te in (b"chunked", b" chunked, identity", b"identity, chunked"):
        body = b"0\r\n\r\n" + smuggled
        s = connect(server.port, b"POST /front HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                                 b"Transfer-Encoding: %s\r\n\r\n%s" % (len(body), te, body))
        s.shutdown(socket.SHUT_WR)
        responses = split_responses(read_all(s))
        s.close()
        assert [r[0] for r in responses] == [400]
    assert "/smuggled" not in server.rec.paths and "/front" not in server.rec.paths


def test_pipelining_with_a_bad_second_request(server, no_tracebacks):
    s = connect(server.port, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nX: a\x00\r\n\r\n"
                             b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
    responses = split_responses(read_all(s))
    s.close()
    assert [r[0] for r in responses] == [200, 400]
    assert json.loads(responses[0][2])["path"] == "/one"
    assert_anthropic_error(*responses[1], expected_status=400)
    assert "/three" not in server.rec.paths  # the connection closed after the bad request


# ------------------------------------------------------------------------------ Expect / 413

def test_expect_100_continue_refuses_an_oversized_body_before_it_is_sent(server, no_tracebacks):
    s = connect(server.port, b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                             b"Expect: 100-continue\r\n\r\n" % (BODY_LIMIT + 1))
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 413 "), first  # not "100 Continue"
    status, headers, body = split_responses(first + read_all(s))[0]
    assert_anthropic_error(status, headers, body, 413)
    assert json.loads(body)["error"]["type"] == "request_too_large"


def test_expect_100_continue_refuses_conflicting_framing_before_the_body(server, no_tracebacks):
    s = connect(server.port, b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                             b"Expect: 100-continue\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 400 ")


def test_expect_100_continue_is_not_sent_to_http10_clients(server, no_tracebacks):
    s = connect(server.port, b"POST /old HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok")
    data = read_all(s)
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert b"100 Continue" not in data


def test_expect_100_continue_with_chunked_body(server, no_tracebacks):
    s = connect(server.port, b"POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(b"2\r\nok\r\n0\r\n\r\n")
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["body"] == "ok"


def test_client_sending_an_oversized_body_reads_the_413(server, no_tracebacks):
    """Without lingering, the proxy closed with the body unread: the kernel reset the connection
    and the client got a broken pipe instead of the error response."""
    s = connect(server.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n")
    time.sleep(0.1)  # the server has answered and stopped reading the body
    s.sendall(b"x" * 3_000_000)
    status, headers, body = recv_response(s)
    assert_anthropic_error(status, headers, body, 413)


# ------------------------------------------------------------------------------ timeouts

def trickle(s: socket.socket, data: bytes, gap: float) -> int:
    """Send one byte at a time until the server answers; returns how many bytes went out."""
    s.setblocking(False)
    try:
        for i in range(len(data)):
            try:
                if s.recv(1, socket.MSG_PEEK):
                    return i
            except BlockingIOError:
                pass
            except OSError:
                return i
            try:
                s.send(data[i:i + 1])
            except OSError:
                return i
            time.sleep(gap)
        return len(data)
    finally:
        s.setblocking(True)


SLOW_HEAD = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 400 + b"\r\n\r\n"


def test_slowloris_head_hits_the_header_timeout(server, no_tracebacks):
    s = connect(server.port)
    sent = trickle(s, SLOW_HEAD, 0.02)  # ~9 s to send it all; each byte is far within any per-read timeout
    assert sent < len(SLOW_HEAD)
    status, headers, body = recv_response(s)
    assert_anthropic_error(status, headers, body, 408)
    assert "/slow" not in server.rec.paths


def test_slowloris_on_a_keep_alive_connection_hits_the_header_timeout(lt, no_tracebacks):
    """The idle timeout only runs until the next request begins; its head gets the header timeout."""
    srv = make_server(lt, idle_timeout_s=30.0)
    try:
        s = connect(srv.port, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_response(s)[0] == 200
        sent = trickle(s, SLOW_HEAD, 0.02)
        assert sent < len(SLOW_HEAD)
        status, headers, body = recv_response(s)
        assert_anthropic_error(status, headers, body, 408)
        assert "/slow" not in srv.rec.paths
    finally:
        lt.run(srv.shutdown(1))


def test_slow_chunked_body_hits_one_body_deadline(server, no_tracebacks):
    s = connect(server.port, b"POST /trickle HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = trickle(s, b"1\r\nx\r\n" * 100 + b"0\r\n\r\n", 0.02)  # each chunk well within a per-read timeout
    assert sent < 600
    status, headers, body = recv_response(s)
    assert_anthropic_error(status, headers, body, 408)


def test_idle_keep_alive_connection_closes_without_a_response(server, no_tracebacks):
    s = connect(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(s)[0] == 200
    assert read_all(s) == b""  # idle timeout (1 s): a clean close, no 408 for a request never started


def test_stray_crlf_after_a_request_does_not_start_a_new_one(server, no_tracebacks):
    s = connect(server.port, b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nok\r\n")
    assert recv_response(s)[0] == 200
    assert read_all(s) == b""  # idle close, not a 408 for a "request" that is only a blank line
    s = connect(server.port, b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nok\r\nGET /next HTTP/1.1\r\n\r\n")
    assert recv_response(s)[0] == 200
    status, _, body = recv_response(s)
    assert status == 200 and json.loads(body)["path"] == "/next"


def test_many_connections(server, no_tracebacks):
    socks = [connect(server.port) for _ in range(150)]
    idle = [connect(server.port) for _ in range(50)]  # never send anything
    for i, s in enumerate(socks):
        s.sendall(b"GET /m%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    for i, s in enumerate(socks):
        status, _, body = recv_response(s)
        assert status == 200 and json.loads(body)["path"] == f"/m{i}"
    for s in socks + idle:
        s.close()
    assert_still_serving(server.port)


# ------------------------------------------------------------------------------ backpressure

def test_client_that_never_reads_cannot_make_the_server_buffer_without_bound(server, no_tracebacks):
    s = connect(server.port, b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
    st = server.rec.flood
    deadline = time.monotonic() + 10
    while (not st or st.get("outcome") is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    # drain() pushed back (the transport never held more than ~the high-water mark plus one
    # write), and the write timeout then dropped the stalled client instead of pinning the handler
    assert st.get("outcome") in ("closed", "cancelled"), st
    assert st["max_buffered"] <= 1024 * 1024, st
    assert st["written"] < 4096 * 65536
    s.close()
    assert_still_serving(server.port)


# ------------------------------------------------------------------------------ upstream client

class Evil:
    """A raw upstream that answers each connection with `script(reader, writer)`."""

    def __init__(self, script) -> None:
        self.script = script

    async def __aenter__(self) -> "Evil":
        self.tasks: set = set()
        self.server = await asyncio.start_server(self._cb, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _cb(self, reader, writer) -> None:
        task = asyncio.ensure_future(self._run(reader, writer))
        self.tasks.add(task)
        try:
            await task
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _run(self, reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await self.script(reader, writer)


def run(coro) -> None:
    async def bounded():
        await asyncio.wait_for(coro, 15)
    asyncio.run(bounded())


def sends(*parts: bytes, forever: bytes | None = None, times: int = 10_000, then_close: bool = False):
    """`parts`, then `forever` repeated `times` times (far past any limit, yet finite so that a
    regression fails the test instead of hanging it or eating the machine's memory)."""
    async def script(reader, writer):
        for p in parts:
            writer.write(p)
            await writer.drain()
        if forever is not None:
            for _ in range(times):
                writer.write(forever)
                await writer.drain()
                await asyncio.sleep(0)  # drain() does not yield unless paused: let timeouts fire
        if then_close:
            writer.close()
            return
        await asyncio.sleep(30)
    return script


def upstream_case(script, *, read_timeout: float = 1.0, max_bytes: int | None = None):
    """Run one request against a scripted upstream; returns the exception raised (or None)."""
    box: list = []

    async def main():
        async with Evil(script) as evil:
            client = UpstreamClient(env={}, read_timeout=read_timeout)
            try:
                resp = await client.request("POST", evil.url, [], b"{}")
                if max_bytes is None:
                    await resp.read()
                else:
                    await resp.read(max_bytes=max_bytes)
                box.append(None)
            except Exception as e:  # noqa: BLE001 - the type is what the test checks
                box.append(e)
            finally:
                await client.close()
    run(main())
    return box[0]


HEAD_OK = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("script, exc, match", [
    (sends(HEAD_OK, forever=b"X-Endless: " + b"a" * 4096), ProtocolError, "exceeds 64 KiB"),
    (sends(HEAD_OK, forever=b"X-Many: a\r\n"), ProtocolError, "exceeds 64 KiB"),
    (sends(HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n", forever=b"1111", times=50_000), ProtocolError, "oversized chunk"),
    (sends(HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n1;", forever=b"e" * 4096), ProtocolError, "oversized chunk"),
    (sends(HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n"), ProtocolError, "longer than"),
    (sends(HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"), ProtocolError, "bad chunk size"),
    (sends(HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n", forever=b"T: t\r\n", times=50_000), ProtocolError,
     "trailers"),
    (sends(HEAD_OK + b"Content-Length: 99999999999999\r\n\r\nshort"), UpstreamTimeout, "no data"),
    (sends(HEAD_OK + b"Content-Length: 99999999999999\r\n\r\nshort", then_close=True), ProtocolError,
     "still expected"),
    (sends(HEAD_OK + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n"), ProtocolError, "invalid Content-Length"),
    (sends(HEAD_OK + b"Content-Length: \xb2\r\n\r\nab"), ProtocolError, "invalid Content-Length"),
    (sends(b"HTTP/1.1 \xb2\xb3\xb9 OK\r\n\r\n"), ProtocolError, "malformed status line"),
    (sends(b"HTTP/1.1 099 Odd\r\n\r\n"), ProtocolError, "malformed status line"),
    (sends(forever=b"HTTP/1.1 100 Continue\r\n\r\n", times=200), ProtocolError, "interim"),
])
def test_malicious_upstream_gets_a_clean_bounded_error(script, exc, match):
    err = upstream_case(script, read_timeout=0.5)
    assert isinstance(err, exc), repr(err)
    assert match in str(err)


@pytest.mark.parametrize("script", [
    sends(HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n", forever=b"10000\r\n" + b"z" * 65536 + b"\r\n",
          times=64, then_close=True),
    sends(HEAD_OK + b"Connection: close\r\n\r\n", forever=b"z" * 65536, times=64, then_close=True),
    sends(HEAD_OK + b"Content-Length: 4194304\r\n\r\n", forever=b"z" * 65536, times=64),
])
def test_endless_upstream_body_is_cut_at_the_read_limit(script):
    err = upstream_case(script, read_timeout=0.5, max_bytes=1024 * 1024)
    assert isinstance(err, ProtocolError), repr(err)
    assert "exceeds 1048576 bytes" in str(err)


def test_read_has_a_default_body_limit(monkeypatch):
    import clasp.upstream.client as client_mod
    monkeypatch.setattr(client_mod.UpstreamResponse.read, "__defaults__", (200_000,))
    err = upstream_case(sends(HEAD_OK + b"Connection: close\r\n\r\n", forever=b"z" * 65536, times=16,
                              then_close=True))
    assert isinstance(err, ProtocolError) and "exceeds 200000 bytes" in str(err)


def test_tls_verification_is_on_by_default():
    ctx = UpstreamClient(env={})._ssl()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_no_proxy_with_odd_port_digits_is_not_a_crash():
    assert proxy_bypassed("example.com", 443, "example.com:\xb2, other.org") is False
    assert proxy_bypassed("example.com", 443, "[::1]:\xb2\xb3,example.com") is True


@pytest.mark.parametrize("proxy_url", [
    "socks5://alice:s3cr3t-pw@proxy.local:1080",
    "http://alice:s3cr3t-pw@proxy.local:notaport",
    "http://alice:s3cr3t-pw@127.0.0.1:1",          # refused
])
def test_proxy_credentials_never_in_connect_errors(proxy_url):
    async def main():
        client = UpstreamClient(env={"HTTPS_PROXY": proxy_url}, connect_timeout=2)
        with pytest.raises(ConnectError) as info:
            await client.request("POST", "https://api.example.com/v1/chat/completions", [], b"{}")
        text = str(info.value) + repr(info.value) + repr(client._proxies)
        assert "s3cr3t-pw" not in text and "alice" not in text
        await client.close()
    run(main())


# ------------------------------------------------------------------------------ secrets

def test_upstream_url_credentials_never_reach_logs_or_errors(lt, caplog):
    """A base URL with userinfo (user:password@ or a bare token@) and a dead upstream: the error
    the client gets, the access/debug log and the Python log mention neither."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    caplog.set_level(logging.DEBUG)
    for userinfo in ("bob:pa55w0rd-xyz", "tok_pa55w0rd-xyz"):
        p = Proxy(lt, ["-provider", "custom", "-model", "m", "-debug", "-max-retries", "0"],
                  {"CUSTOM_BASE_URL": f"http://{userinfo}@127.0.0.1:{port}/v1", "CUSTOM_API_KEY": "sk-unit-test-key-123456"})
        try:
            status, _, body = p.post({"model": "claude-sonnet-4-5", "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "hi"}]})
            assert status == 502
            time.sleep(0.05)
            everything = json.dumps(body) + p.log.getvalue() + caplog.text
            assert "[clasp debug]" in p.log.getvalue()  # the debug dump did run
            assert "pa55w0rd" not in everything
            assert "sk-unit-test-key-123456" not in everything
        finally:
            p.stop()


def test_redact_covers_token_userinfo_and_signature_params():
    assert redact("POST https://ghp_abcdef0123@gw.example/v1") == "POST https://[REDACTED]@gw.example/v1"
    assert redact("https://x.blob/c?sv=1&sig=AbC%2Bdef") == "https://x.blob/c?sv=1&sig=[REDACTED]"
    assert redact("write to a@b.com please") == "write to a@b.com please"


def test_proxy_auth_key_never_logged_and_wrong_keys_rejected(lt, caplog):
    key = "proxy-key-Zq9-unit"
    caplog.set_level(logging.DEBUG)
    p = Proxy(lt, ["-provider", "custom", "-model", "m", "-auth", "-auth-api-key", key, "-debug"],
              {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})
    try:
        for bad in ("", key[:-1], key + "x", key.upper(), "Bearer " + key):
            status, _, body = p.post({"model": "x", "messages": []}, headers={"x-api-key": bad})
            assert status == 401, bad
        status, _, body = p.post({"model": "x"}, path="/v1/messages/count_tokens",
                                 headers={"authorization": f"Bearer {key}"})
        assert status == 400  # authenticated; then the body is invalid
        time.sleep(0.05)
        assert key not in p.log.getvalue() + caplog.text
    finally:
        p.stop()


# ------------------------------------------------------------------------------ auth

def test_key_comparison_is_over_fixed_length_digests():
    """compare_digest on raw strings returns early on a length mismatch (leaking the key's length);
    comparing SHA-256 digests makes every comparison the same length."""
    import clasp.ops.auth as auth_mod
    seen: list[tuple[int, int]] = []
    real = auth_mod.hmac.compare_digest

    class Spy:
        @staticmethod
        def compare_digest(a, b):
            seen.append((len(a), len(b)))
            return real(a, b)

    policy = AuthPolicy(True, "k" * 40)
    orig = auth_mod.hmac
    auth_mod.hmac = Spy
    try:
        assert policy.check({"x-api-key": "short"}) is None
        assert policy.check({"x-api-key": "k" * 400}) is None
        assert policy.check({"x-api-key": "k" * 40}) is not None
    finally:
        auth_mod.hmac = orig
    assert seen and all(pair == (32, 32) for pair in seen)


def test_non_ascii_key_matches_as_sent_on_the_wire():
    policy = AuthPolicy(True, "clé-ß-секрет")
    wire = "clé-ß-секрет".encode("utf-8").decode("latin-1")  # what the server's header parser yields
    assert policy.check({"x-api-key": wire}) is not None
    assert policy.check({"x-api-key": "clé-ß-секрет"}) is not None
    assert policy.check({"x-api-key": "cle-ss"}) is None
    assert "секрет" not in repr(policy) and "clé" not in repr(policy)
