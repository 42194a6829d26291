"""Memory goes back to the OS once the proxy is idle after traffic, and /metrics shows the RSS."""

from __future__ import annotations

import sys
import time

import pytest

from clasp.ops.memory import IdleTrimmer, libc_malloc_trim, resident_bytes
from harness import Proxy
from promparse import parse, value

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_once_per_idle_period_after_traffic_never_during_a_request():
    clock, calls = Clock(), []
    t = IdleTrimmer(5.0, trim=lambda: calls.append(clock.now), clock=clock)
    assert not t.trim_now()                  # no traffic yet: nothing to give back
    t.started()
    clock.now += 60
    assert not t.trim_now()                  # a request (a long stream) is in flight
    t.finished()
    clock.now += 4.9
    assert not t.trim_now()                  # not idle long enough
    clock.now += 0.1
    assert t.trim_now() and calls == [165.0]
    clock.now += 60
    assert not t.trim_now()                  # still idle: already trimmed
    t.started()
    t.started()
    t.finished()
    clock.now += 10
    assert not t.trim_now()                  # one of two requests still running
    t.finished()
    clock.now += 5
    assert t.trim_now() and len(calls) == 2 and t.trims == 2


def test_no_trim_function_means_no_trims_counted():
    clock = Clock()
    t = IdleTrimmer(1.0, trim=IdleTrimmer._UNAVAILABLE, clock=clock)
    t.started()
    t.finished()
    clock.now += 2
    assert not t.trim_now() and t.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_malloc_trim_is_found_and_callable():
    trim = libc_malloc_trim()
    if trim is None:
        pytest.skip("this C library has no malloc_trim (musl)")
    assert trim() in (0, 1)
    assert resident_bytes() > 1024 * 1024


@pytest.mark.skipif(libc_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_idle_proxy_returns_memory_and_reports_it(lt, upstream, proxies):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-memory-trim-after", "0.2"],
              {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    assert p.post(HELLO)[0] == 200
    deadline = time.monotonic() + 10
    while True:   # poll slower than the idle period: each poll is itself traffic
        time.sleep(0.5)
        memory = p.metrics()["memory"]
        if memory["trims"] >= 1:
            break
        assert time.monotonic() < deadline, memory
    assert memory["rss_bytes"] > 1024 * 1024
    status, _, raw = p.request("GET", "/metrics/prometheus")
    families = parse(raw.decode())
    assert families["process_resident_memory_bytes"].type == "gauge"
    assert value(families, "process_resident_memory_bytes") > 1024 * 1024
    assert value(families, "clasp_memory_trims_total") >= 1


def test_trimming_can_be_turned_off(lt, upstream, proxies):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-memory-trim-after", "0"],
              {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    assert p.post(HELLO)[0] == 200
    time.sleep(0.3)
    assert p.metrics()["memory"]["trims"] == 0
