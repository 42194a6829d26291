#!/usr/bin/env python3
"""Provider outage under load: does `-queue -circuit-breaker` lose any request?

Everything runs in one process on 127.0.0.1: a fake OpenAI-compatible upstream, the real
proxy (clasp.server.run.serve) and N concurrent clients that send requests back to back (half of
them streaming). Timeline:

    warm-up (healthy) -> outage -> recovery -> tail (healthy) -> clients stop

During the outage the upstream refuses connections (first half) and then answers 503
(second half); ``--fault refuse`` or ``--fault 503`` keeps one kind for the whole outage.
The outage begins between requests: idle keep-alive connections are closed at once, busy
ones after their current response (a stream cut in the middle cannot be retried by design
and would count as an "other" error, which is not what this scenario measures).

Every request ends in exactly one bucket:

    completed    200 with a whole message (JSON, or SSE ending in message_stop)
    overloaded   an explicit overloaded_error (HTTP 529/503, or an SSE error event)
    other        any other complete HTTP response (status and error type are listed)
    lost         no complete response: connection closed/reset, malformed, or no answer
                 within the client timeout

The script exits 0 only if lost == 0 and other == 0. ``--json`` prints the counts as one
JSON object on the last line (for tests).

    python3 bench/outage.py                       # 20 clients, 20 s outage
    python3 bench/outage.py --outage-seconds 2    # quick run
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clasp.server import run as proxy_run  # noqa: E402
from clasp.config import load_config  # noqa: E402

REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 64,
           "messages": [{"role": "user", "content": "Say hello."}]}
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}).encode()
STREAM_CHUNKS = [
    {"id": "chatcmpl-bench", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "chatcmpl-bench", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
    {"id": "chatcmpl-bench", "choices": [{"index": 0, "delta": {"content": "lo!"}}]},
    {"id": "chatcmpl-bench", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "chatcmpl-bench", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
]
STREAM_BODY = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in STREAM_CHUNKS) + b"data: [DONE]\n\n"
UNAVAILABLE = json.dumps({"error": {"message": "service unavailable (bench outage)"}}).encode()


# ------------------------------------------------------------------------------------------ upstream


class FlakyUpstream:
    """OpenAI-compatible upstream whose health the bench switches: ok | refuse | 503."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.mode = "ok"
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.idle: set[asyncio.StreamWriter] = set()
        self.served = Counter()   # answers by kind: ok, stream, 503

    async def listen(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: str) -> None:
        if mode == "refuse" and self.server is not None:
            self.mode = mode            # busy connections end after their current answer
            self.server.close()
            for w in list(self.idle):   # pooled keep-alive connections die with the provider
                w.close()
            # (on 3.12+ wait_closed also waits for open connections, so close them first)
            await self.server.wait_closed()
            self.server = None
        self.mode = mode
        if mode != "refuse" and self.server is None:
            await self.listen()         # same port: the provider is back

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.idle):
            w.close()
        if self.server is not None:
            await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while self.mode != "refuse":
                self.idle.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                finally:
                    self.idle.discard(writer)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if self.mode == "refuse":
                    return      # went down while the request arrived: close unanswered
                await asyncio.sleep(self.latency_s)
                if self.mode == "503":
                    self.served["503"] += 1
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(UNAVAILABLE), UNAVAILABLE))
                elif b'"stream":true' in body.replace(b" ", b""):
                    self.served["stream"] += 1
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(STREAM_BODY), STREAM_BODY))
                else:
                    self.served["ok"] += 1
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(COMPLETION), COMPLETION))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# ------------------------------------------------------------------------------------------ clients


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes, bool]:
    """(status, headers, body, complete). Incomplete = the connection ended early."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        try:
            return status, headers, await reader.readexactly(int(headers["content-length"])), True
        except asyncio.IncompleteReadError as e:
            return status, headers, e.partial, False
    body = bytearray()
    try:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, bytes(body), True
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    except (asyncio.IncompleteReadError, ValueError):
        return status, headers, bytes(body), False


def sse_events(body: bytes) -> list[dict]:
    events = []
    for block in body.decode("utf-8", "replace").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                try:
                    events.append(json.loads(line[6:]))
                except ValueError:
                    pass
    return events


def classify(status: int, headers: dict, body: bytes, complete: bool) -> tuple[str, str]:
    """(bucket, detail) for one finished exchange."""
    if "event-stream" in headers.get("content-type", ""):
        events = sse_events(body)
        last = events[-1] if events else {}
        if status == 200 and last.get("type") == "message_stop":
            return "completed", ""
        if last.get("type") == "error":   # the proxy closes the connection after an error event
            etype = last.get("error", {}).get("type", "?")
            return ("overloaded", "") if etype == "overloaded_error" else ("other", f"stream error {etype}")
        return "lost", f"stream ended without message_stop or error (HTTP {status})"
    if not complete:
        return "lost", f"truncated body (HTTP {status})"
    try:
        data = json.loads(body)
    except ValueError:
        return "lost", f"non-JSON body (HTTP {status})"
    if status == 200 and isinstance(data, dict) and data.get("type") == "message":
        return "completed", ""
    etype = data.get("error", {}).get("type", "?") if isinstance(data, dict) else "?"
    if status in (503, 529) and etype == "overloaded_error":
        return "overloaded", ""
    return "other", f"HTTP {status} {etype}"


class Tally:
    def __init__(self) -> None:
        self.buckets = Counter()
        self.details = Counter()
        self.completed_after_outage_wait = 0
        self.max_latency_s = 0.0


async def one_request(port: int, stream: bool, timeout_s: float) -> tuple[str, str]:
    body = json.dumps({**REQUEST, "stream": stream}).encode()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        status, headers, raw, complete = await asyncio.wait_for(read_response(reader), timeout_s)
        return classify(status, headers, raw, complete)
    except asyncio.TimeoutError:
        return "lost", f"no answer within {timeout_s:g}s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
        return "lost", f"{type(e).__name__}"
    finally:
        if writer is not None:
            writer.close()


async def client(n: int, port: int, tally: Tally, stop_at: float, outage: tuple[float, float],
                 timeout_s: float, pause_s: float) -> None:
    stream = n % 2 == 1
    while time.monotonic() < stop_at:
        sent = time.monotonic()
        bucket, detail = await one_request(port, stream, timeout_s)
        done = time.monotonic()
        tally.buckets[bucket] += 1
        if detail:
            tally.details[f"{bucket}: {detail}"] += 1
        tally.max_latency_s = max(tally.max_latency_s, done - sent)
        if bucket == "completed" and outage[0] <= sent < outage[1] and done >= outage[1]:
            tally.completed_after_outage_wait += 1
        await asyncio.sleep(pause_s)


# ------------------------------------------------------------------------------------------ scenario


async def run(args: argparse.Namespace) -> dict:
    outage_s = args.outage_seconds
    upstream = FlakyUpstream(args.upstream_latency_ms / 1000)
    await upstream.listen()
    # Queue settings sized to the outage: a request may wait the whole outage plus a margin,
    # re-trying every queue_retry_delay (an open breaker answers those re-tries locally).
    max_wait = outage_s + args.margin_seconds
    retry_delay_ms = 250
    queue_retries = math.ceil(max_wait * 1000 / retry_delay_ms) + 10
    cb_timeout = min(2.0, max(0.2, outage_s / 10))
    queue_size = args.queue_max_size or max(100, 2 * args.clients)
    argv = ["-port", "0", "-provider", "custom", "-model", "bench-model",
            "-queue", "-queue-max-size", str(queue_size), "-queue-max-wait", f"{max_wait:g}",
            "-queue-retry-delay", str(retry_delay_ms), "-queue-max-retries", str(queue_retries),
            "-circuit-breaker", "-cb-threshold", "5", "-cb-recovery", "2", "-cb-timeout", f"{cb_timeout:g}",
            "-max-retries", "2", "-retry-base-delay-ms", "100", "-connect-timeout", "2", "-read-timeout", "10"]
    env = {"CUSTOM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1", "HOME": "/nonexistent-clasp-bench",
           "CLASP_ACCESS_LOG": "false"}
    cfg, _ = load_config(argv, env)
    stop_proxy = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    proxy_task = asyncio.ensure_future(proxy_run.serve(cfg, ready=ready, stop=stop_proxy, log_stream=io.StringIO()))
    done, _ = await asyncio.wait([ready, proxy_task], return_when=asyncio.FIRST_COMPLETED)
    if proxy_task in done:
        proxy_task.result()
    port = ready.result()

    t0 = time.monotonic()
    outage = (t0 + args.warmup_seconds, t0 + args.warmup_seconds + outage_s)
    stop_at = outage[1] + args.tail_seconds
    timeout_s = max_wait + 15    # longer than any queue wait: no answer by then means lost
    tally = Tally()
    clients = [asyncio.ensure_future(client(i, port, tally, stop_at, outage, timeout_s, args.pause_ms / 1000))
               for i in range(args.clients)]
    try:
        await asyncio.sleep(args.warmup_seconds)
        first = "503" if args.fault == "503" else "refuse"
        await upstream.set_mode(first)
        log(args, f"outage started ({first})")
        if args.fault == "mixed":
            await asyncio.sleep(outage_s / 2)
            await upstream.set_mode("503")
            log(args, "outage continues (503)")
            await asyncio.sleep(outage_s / 2)
        else:
            await asyncio.sleep(outage_s)
        await upstream.set_mode("ok")
        log(args, "upstream recovered")
        # clients stop issuing after the tail; each in-flight request is bounded by timeout_s
        await asyncio.wait_for(asyncio.gather(*clients), args.tail_seconds + timeout_s + 5)
    finally:
        for c in clients:
            c.cancel()
        stop_proxy.set()
        await asyncio.wait_for(proxy_task, 15)
        await upstream.close()
    total = sum(tally.buckets.values())
    return {
        "clients": args.clients,
        "outage_seconds": outage_s,
        "fault": args.fault,
        "queue_max_size": cfg.queue_max_size,
        "total": total,
        "completed": tally.buckets["completed"],
        "overloaded": tally.buckets["overloaded"],
        "other_errors": tally.buckets["other"],
        "lost": tally.buckets["lost"],
        "completed_after_outage_wait": tally.completed_after_outage_wait,
        "max_latency_s": round(tally.max_latency_s, 2),
        "upstream_answers": dict(upstream.served),
        "details": dict(tally.details),
        "elapsed_s": round(time.monotonic() - t0, 2),
    }


def log(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(f"  {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    ap.add_argument("--outage-seconds", type=float, default=20.0, help="length of the outage (default 20)")
    ap.add_argument("--fault", choices=("mixed", "refuse", "503"), default="mixed",
                    help="refused connections, 503s, or the first then the second (default)")
    ap.add_argument("--warmup-seconds", type=float, default=0.5)
    ap.add_argument("--tail-seconds", type=float, default=1.0, help="healthy load after recovery")
    ap.add_argument("--margin-seconds", type=float, default=10.0,
                    help="queue max wait = outage + margin")
    ap.add_argument("--queue-max-size", type=int, default=0,
                    help="default: room for every client; smaller shows queue-full 529s")
    ap.add_argument("--pause-ms", type=float, default=50.0, help="client think time between requests")
    ap.add_argument("--upstream-latency-ms", type=float, default=20.0)
    ap.add_argument("--json", action="store_true", help="print the counts as JSON on the last line")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.outage_seconds < 0 or args.queue_max_size < 0:
        ap.error("--clients must be >= 1, --outage-seconds and --queue-max-size >= 0")
    if not args.json:
        print(f"clasp outage bench: {args.clients} clients, {args.outage_seconds:g} s outage ({args.fault}), "
              f"-queue -circuit-breaker", flush=True)

    result = asyncio.run(run(args))
    ok = result["lost"] == 0 and result["other_errors"] == 0
    if args.json:
        print(json.dumps(result))
    else:
        print(f"requests:    {result['total']} in {result['elapsed_s']} s")
        print(f"completed:   {result['completed']} ({result['completed_after_outage_wait']} sent during the "
              f"outage, completed after recovery)")
        print(f"overloaded:  {result['overloaded']}")
        print(f"other:       {result['other_errors']}")
        print(f"lost:        {result['lost']}")
        print(f"max latency: {result['max_latency_s']} s")
        print(f"upstream:    {result['upstream_answers']}")
        for detail, n in sorted(result["details"].items()):
            print(f"  {n:5d}  {detail}")
        print("OK: no request lost" if ok else "FAIL: requests lost or unexpected errors")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
