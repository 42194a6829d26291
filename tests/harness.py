"""Test harness: a scripted fake OpenAI-compatible upstream and an in-process proxy, both on
127.0.0.1 in a background event loop, so tests can talk to them with plain blocking sockets."""

from __future__ import annotations

import asyncio
import copy
import http.client
import io
import json
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable


class LoopThread:
    """One asyncio loop in a daemon thread; run coroutines on it from sync test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()


@dataclass
class Reply:
    status: int = 200
    headers: list = field(default_factory=list)
    body: bytes = b""
    chunks: list | None = None      # SSE: dicts / raw strings, sent one by one
    delay: float = 0.0              # seconds between SSE chunks
    done: bool = True               # send data: [DONE]
    hang: float = 0.0               # sleep before answering
    drop: bool = False              # close the connection without answering
    drop_after: int | None = None   # close mid-stream after N chunks
    framing: str = "chunked"        # SSE body framing: "chunked", or "close" (Connection: close, EOF ends it)
    raw: Any = None                 # bytes pieces (any iterable) written verbatim as the whole reply, then close
    hold: float = 0.0               # leave the request unanswered this long; a client hang-up counts in .hangups


def json_reply(obj: Any, status: int = 200, headers: list | None = None) -> Reply:
    return Reply(status, [("content-type", "application/json"), *(headers or [])], json.dumps(obj).encode())


def sse_reply(chunks: list, **kw) -> Reply:
    return Reply(200, [("content-type", "text/event-stream")], chunks=chunks, **kw)


def completion(content: str | None = "Hello!", tool_calls: list | None = None, finish: str = "stop",
               usage: dict | None = None, **message_extra) -> dict:
    message: dict = {"role": "assistant", "content": content, **message_extra}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-test1", "object": "chat.completion", "model": "gpt-test",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}


def text_chunks(parts: list[str], finish: str = "stop", usage: dict | None = None) -> list[dict]:
    out = [{"id": "chatcmpl-s1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    out += [{"id": "chatcmpl-s1", "choices": [{"index": 0, "delta": {"content": p}}]} for p in parts]
    out.append({"id": "chatcmpl-s1", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    out.append({"id": "chatcmpl-s1", "choices": [],
                "usage": usage or {"prompt_tokens": 20, "completion_tokens": len(parts), "total_tokens": 0}})
    return out


@dataclass
class Seen:
    method: str
    target: str
    headers: dict
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class FakeUpstream:
    """An OpenAI-compatible server whose replies come from `script(seen) -> Reply`."""

    def __init__(self, lt: LoopThread, script: Callable[[Seen], Reply] | None = None, *,
                 ssl_context=None) -> None:
        self.lt = lt
        self.script = script or (lambda seen: json_reply(completion()))
        self.requests: list[Seen] = []
        # clasp asks a custom upstream once which server it is (GET /props, GET /version): kept
        # apart from the model requests; by default answered 404 like most OpenAI-compatible servers
        self.probes: list[Seen] = []
        self.probe_script: Callable[[Seen], Reply] = lambda seen: json_reply(
            {"error": {"message": "File Not Found", "type": "not_found_error"}}, 404)
        self.connections = 0
        self.server = lt.run(asyncio.start_server(self._conn, "127.0.0.1", 0, ssl=ssl_context))
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}/v1"
        self.cancelled = 0  # streams whose client went away mid-way
        self.hangups = 0    # requests held unanswered (Reply.hold) whose client hung up meanwhile

    def close(self) -> None:
        async def _close():
            self.server.close()
        self.lt.run(_close())

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                seen = Seen(method, target, headers, body)
                if method == "GET" and target.endswith(("/props", "/version")):
                    self.probes.append(seen)
                    reply = self.probe_script(seen)
                else:
                    self.requests.append(seen)
                    reply = self.script(seen)
                if reply.hang:
                    await asyncio.sleep(reply.hang)
                if reply.hold:
                    try:
                        if await asyncio.wait_for(reader.read(1), reply.hold) == b"":
                            self.hangups += 1
                            return
                    except asyncio.TimeoutError:
                        pass
                if reply.drop:
                    writer.close()
                    return
                if reply.raw is not None:
                    for piece in reply.raw:
                        writer.write(piece)
                        await writer.drain()
                    return
                if reply.chunks is None:
                    head_out = f"HTTP/1.1 {reply.status} X\r\ncontent-length: {len(reply.body)}\r\n"
                    head_out += "".join(f"{k}: {v}\r\n" for k, v in reply.headers)
                    writer.write(head_out.encode() + b"\r\n" + reply.body)
                    await writer.drain()
                    continue
                chunked = reply.framing == "chunked"
                head_out = f"HTTP/1.1 {reply.status} OK\r\n"
                head_out += "transfer-encoding: chunked\r\n" if chunked else "connection: close\r\n"
                head_out += "".join(f"{k}: {v}\r\n" for k, v in reply.headers)
                writer.write(head_out.encode() + b"\r\n")
                for i, chunk in enumerate(reply.chunks):
                    if reply.drop_after is not None and i >= reply.drop_after:
                        writer.close()
                        return
                    data = chunk if isinstance(chunk, str) else "data: " + json.dumps(chunk) + "\n\n"
                    raw = data.encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(raw), raw) if chunked else raw)
                    await writer.drain()
                    if reply.delay:
                        await asyncio.sleep(reply.delay)
                if reply.done:
                    raw = b"data: [DONE]\n\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(raw), raw) if chunked else raw)
                if not chunked:
                    await writer.drain()
                    return  # the body ends where the connection closes
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.cancelled += 1
        finally:
            writer.close()


class Proxy:
    """The real proxy (clasp.server.run.serve) on an ephemeral port in the background loop."""

    def __init__(self, lt: LoopThread, argv: list[str] | None = None, env: dict | None = None) -> None:
        from clasp.config import load_config
        from clasp.server import run
        self.lt = lt
        env = dict(env or {})
        env.setdefault("HOME", "/nonexistent-clasp-test-home")
        cfg, _ = load_config(["-port", "0", *(argv or [])], env)
        self.cfg = cfg
        self.log = io.StringIO()

        async def start():
            self.stop_event = asyncio.Event()
            ready = asyncio.get_running_loop().create_future()
            self.task = asyncio.ensure_future(run.serve(cfg, ready=ready, stop=self.stop_event,
                                                        log_stream=self.log))
            done, _ = await asyncio.wait([ready, self.task], return_when=asyncio.FIRST_COMPLETED)
            if self.task in done:
                self.task.result()
            return ready.result()

        self.port = lt.run(start())
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def _stop():
            self.stop_event.set()
            await asyncio.wait_for(self.task, 10)
        self.lt.run(_stop())

    # -- client helpers
    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None,
                timeout: float = 20) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        hdrs = dict(headers or {})
        if not any(k.lower() == "content-type" for k in hdrs):  # one field, whatever its case
            hdrs["content-type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        out = r.read()
        result = (r.status, {k.lower(): v for k, v in r.getheaders()}, out)
        conn.close()
        return result

    def metrics(self) -> dict:
        """GET /metrics (JSON), asserting it answers 200."""
        status, _, raw = self.request("GET", "/metrics")
        assert status == 200
        return json.loads(raw)

    def post(self, body: Any, path: str = "/v1/messages", **kw) -> tuple[int, dict, Any]:
        status, headers, raw = self.request("POST", path, body, **kw)
        ctype = headers.get("content-type", "")
        if "event-stream" in ctype:
            return status, headers, parse_sse(raw)
        return status, headers, json.loads(raw) if raw else None


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    """Anthropic SSE bytes -> [(event name, data)]; asserts the event name equals data.type."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name = data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        assert name is not None and data is not None, block
        assert data["type"] == name, block
        events.append((name, data))
    return events


def raw_socket(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


_LEFTOVER: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def recv_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """Read one Content-Length response from a raw socket (keeps bytes of the next one)."""
    buf = _LEFTOVER.pop(s, b"")
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    _LEFTOVER[s] = rest[length:]
    return status, headers, rest[:length]


# ------------------------------------------------------------------------------ clasp as a process

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn_clasp(args: list[str], env: dict, timeout: float = 15, preexec_fn=None):
    """`python -m clasp ARGS -port P` as a user runs it, once GET /health answers: (Popen, P).
    stdout and stderr are pipes; the caller stops the process and closes them. `preexec_fn` runs
    in the child before clasp starts (e.g. to set resource limits)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    port = free_port()
    base = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "clasp", *args, "-port", str(port)], env={**base, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"clasp exited: {proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("clasp did not start")
            time.sleep(0.05)


# ------------------------------------------------------------------------------ Anthropic streams

def accumulate(events: list[dict]) -> dict:
    """Rebuild the final message the way the SDK's messages.stream() does."""
    msg = copy.deepcopy(events[0]["message"])
    raw: dict[int, str] = {}
    for ev in events[1:]:
        et = ev["type"]
        if et == "content_block_start":
            block = dict(ev["content_block"])
            msg["content"].append(block)
            if block["type"] in ("tool_use", "server_tool_use"):
                raw[ev["index"]] = ""
        elif et == "content_block_delta":
            block = msg["content"][ev["index"]]
            d = ev["delta"]
            if d["type"] == "text_delta":
                block["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                block["thinking"] += d["thinking"]
            elif d["type"] == "signature_delta":
                block["signature"] = d["signature"]
            elif d["type"] == "citations_delta":
                block["citations"] = [*block.get("citations", []), d["citation"]]
            else:
                raw[ev["index"]] += d["partial_json"]
        elif et == "content_block_stop":
            if ev["index"] in raw:
                s = raw[ev["index"]]
                msg["content"][ev["index"]]["input"] = json.loads(s) if s else {}
        elif et == "message_delta":
            msg["stop_reason"] = ev["delta"]["stop_reason"]
            msg["stop_sequence"] = ev["delta"]["stop_sequence"]
            for k, v in ev["usage"].items():
                if k == "output_tokens" or v:
                    msg["usage"][k] = v
    return msg
