"""`python -m clasp -workers 2` as one server: metrics are the group's totals (monotonic across
scrapes), the rate limit holds for the group, and the group stops cleanly."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

import promparse
from harness import FakeUpstream, LoopThread, spawn_clasp

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"),
                                reason="needs SO_REUSEPORT and fork")

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream():
    lt = LoopThread()
    up = FakeUpstream(lt)
    yield up
    up.close()
    lt.stop()


def call(port: int, method: str, path: str, body=None) -> tuple[int, bytes]:
    """One request on a new connection (the kernel spreads new connections over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def start_group(upstream, *args: str):
    """The group, its port, and its stderr as it comes (read all along: access lines must never
    fill the pipe and block the workers)."""
    proc, port = spawn_clasp(["-provider", "custom", "-workers", "2", *args], {"CUSTOM_BASE_URL": upstream.url})
    stderr = bytearray()

    def drain():
        for line in proc.stderr:
            stderr.extend(line)

    proc.drain = threading.Thread(target=drain, daemon=True)
    proc.drain.start()
    # spawn_clasp returns once one worker accepts; traffic sent before the other listens would
    # all go to the first (each worker logs "listening on" once its socket is open)
    deadline = time.monotonic() + 30
    while stderr.count(b"listening on") < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert stderr.count(b"listening on") == 2, stderr.decode(errors="replace")
    return proc, port, stderr


def stop(proc) -> int:
    """SIGTERM to the parent; its exit code."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.drain.join(5)
        proc.stdout.close()
        proc.stderr.close()


def counters(text: str) -> dict[tuple, float]:
    out = {}
    for fam in promparse.parse(text).values():
        if fam.type in ("counter", "histogram"):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total_requests(port: int) -> float:
    fams = promparse.parse(call(port, "GET", "/metrics/prometheus")[1].decode())
    return sum(s.value for s in fams["clasp_requests_total"].samples)


def test_metrics_are_the_groups_totals_and_every_counter_only_grows(upstream):
    proc, port, stderr = start_group(upstream)
    try:
        senders, per_sender = 4, 25
        statuses: list[int] = []

        def send():
            for _ in range(per_sender):
                statuses.append(call(port, "POST", "/v1/messages", HELLO)[0])

        threads = [threading.Thread(target=send) for _ in range(senders)]
        for t in threads:
            t.start()
        previous: dict[tuple, float] = {}
        scrapes = 0
        while any(t.is_alive() for t in threads) or scrapes < 20:
            status, body = call(port, "GET", "/metrics/prometheus")
            assert status == 200
            scrapes += 1
            for key, value in counters(body.decode()).items():
                assert value >= previous.get(key, 0.0), (key, previous.get(key), value)
                previous[key] = value
        for t in threads:
            t.join(60)
        assert statuses == [200] * (senders * per_sender)
        # the last request may be answered a moment before its worker counts it
        for _ in range(100):
            if total_requests(port) == senders * per_sender:
                break
            time.sleep(0.05)
        assert total_requests(port) == senders * per_sender
        data = json.loads(call(port, "GET", "/metrics")[1])
        assert data["requests"]["total"] == data["requests"]["successful"] == senders * per_sender
        processes = data["worker"]["processes"]
        assert len(processes) == 2 and proc.pid not in {p["pid"] for p in processes}
        assert all(p["requests"] > 0 and p["running"] for p in processes)   # both workers served
        assert sum(p["requests"] for p in processes) == senders * per_sender
        assert data["worker"]["pid"] in {p["pid"] for p in processes}
    finally:
        assert stop(proc) == 0


def test_the_rate_limit_holds_for_the_group_not_per_worker(upstream):
    burst = 5   # and about no refill: 1 request per hour
    proc, port, stderr = start_group(upstream, "-rate-limit", "-rate-limit-burst", str(burst),
                             "-rate-limit-requests", "1", "-rate-limit-window", "3600")
    try:
        statuses = [call(port, "POST", "/v1/messages", HELLO)[0] for _ in range(40)]
        assert statuses.count(200) == burst and statuses.count(429) == 40 - burst
        status, _ = call(port, "POST", "/v1/messages/count_tokens", HELLO)   # the same bucket
        assert status == 429
        processes = json.loads(call(port, "GET", "/metrics")[1])["worker"]["processes"]
        assert all(p["requests"] > 0 for p in processes)   # both workers were asked
    finally:
        assert stop(proc) == 0


def test_a_killed_worker_leaves_the_group_serving_and_sigterm_stops_it_cleanly(upstream):
    proc, port, stderr = start_group(upstream)
    try:
        for _ in range(20):
            assert call(port, "POST", "/v1/messages", HELLO)[0] == 200
        for _ in range(100):   # until the parent has every worker's snapshot with all 20
            if total_requests(port) == 20:
                break
            time.sleep(0.05)
        processes = json.loads(call(port, "GET", "/metrics")[1])["worker"]["processes"]
        assert sum(p["requests"] for p in processes) == 20
        victim = max(processes, key=lambda p: p["requests"])["pid"]
        os.kill(victim, signal.SIGKILL)
        # the other worker serves every new connection, and the group still reports
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                data = json.loads(call(port, "GET", "/metrics")[1])
            except OSError:   # a connection the kernel handed to the victim as it died
                continue
            if {p["pid"]: p["running"] for p in data["worker"]["processes"]}[victim] is False:
                break
            time.sleep(0.05)
        assert data["worker"]["pid"] != victim
        before = data["requests"]["total"]
        assert before == 20   # the killed worker's last reported numbers still count
        for _ in range(10):
            assert call(port, "POST", "/v1/messages", HELLO)[0] == 200
        for _ in range(100):
            if total_requests(port) >= before + 10:
                break
            time.sleep(0.05)
        assert total_requests(port) == before + 10
    finally:
        assert stop(proc) == 0
    assert f"worker {victim} exited (signal 9); 1 still serving".encode() in stderr
