#!/usr/bin/env python3
"""A fast fake OpenAI-compatible upstream for the clasp benchmarks (standard library only).

Runs as its own process (bench/run.py pins it to a different core than the proxy) and answers
POST .../chat/completions from pre-encoded bytes, so its own cost stays small and constant:

- non-streaming requests get a fixed chat.completion JSON body (Content-Length);
- requests whose body contains "stream":true get a chunked text/event-stream reply.

The shape of a streamed reply is chosen by a marker anywhere in the request body (the bench
puts it in the last user message): ``[[bench chunks=N delay_ms=D]]``. Without a marker a
stream has 20 chunks and no delay. Each chunk is written separately (and the loop yields in
between), so the proxy sees events arrive one by one as from a real provider.

    python3 bench/fake_upstream.py --port 0      # prints "LISTENING <port>" on stdout
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

_MARKER = re.compile(rb"\[\[bench chunks=(\d+) delay_ms=(\d+)\]\]")
_STREAM = re.compile(rb'"stream"\s*:\s*true')

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-test",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello! How can I help you with this repository today?"}}],
    "usage": {"prompt_tokens": 12000, "completion_tokens": 14, "total_tokens": 12014},
}, separators=(",", ":")).encode()

WHOLE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
         b"connection: keep-alive\r\n\r\n" % len(COMPLETION)) + COMPLETION
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return _chunk(b"data: " + data.encode() + b"\n\n")


FIRST = _sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-test",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
# A typical token-sized text delta; one pre-encoded chunk reused for every event.
TOKEN = _sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-test",
              "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}]})
TAIL = (_sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-test",
              "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + _sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [],
                "usage": {"prompt_tokens": 12000, "completion_tokens": 20, "total_tokens": 12020}})
        + _sse("[DONE]") + b"0\r\n\r\n")


class _Conn(asyncio.Protocol):
    """HTTP/1.1 keep-alive connection; requests are answered in order, one at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.writable: asyncio.Event | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.writable is not None:
            self.writable.set()

    def pause_writing(self) -> None:
        self.writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set()
            self.writable = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"content-length:")
        length = 0
        if i >= 0:
            j = head.find(b"\r\n", i)
            length = int(head[i + 15:j if j >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        body = bytes(buf[end + 4:total])
        del buf[:total]
        if _STREAM.search(body) is None:
            self.transport.write(WHOLE)
            if buf:
                self._next()
            return
        m = _MARKER.search(body)
        chunks, delay = (int(m.group(1)), int(m.group(2)) / 1000) if m else (20, 0.0)
        self.busy = True
        asyncio.ensure_future(self._stream(chunks, delay))

    async def _stream(self, chunks: int, delay: float) -> None:
        t = self.transport
        if t is None:
            return
        t.write(SSE_HEAD + FIRST)
        for _ in range(chunks):
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # one event per write, as a real provider sends them
            if self.writable is not None:
                await self.writable.wait()
            if self.transport is None:
                return
            t.write(TOKEN)
        t.write(TAIL)
        self.busy = False
        if self.buf:
            self._next()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, host, port, backlog=2048)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
