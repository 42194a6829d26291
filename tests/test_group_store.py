"""The worker-group store: frames, GroupStore answered by a Hub over a real socketpair, metrics
merged by the hub, and the fallback when the parent goes away."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from clasp.ops.metrics import Metrics
from clasp.store.group import (HEADER, OP_CACHE_PUT, OP_METRICS, OP_TAKE, FrameDecoder, GroupLink,
                               GroupStore, GroupUnavailable, encode_frame)
from clasp.store.hub import Hub
from clasp.store.local import LocalStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_frames_round_trip_json_and_binary_parts_whatever_the_chunking():
    blob = bytes(range(256)) * 3
    frames = [(OP_TAKE, 7, ["ratelimit:k", 0.5, 10], b""), (OP_CACHE_PUT, 0, ["k", 60], blob),
              (0, 4294967295, None, b""), (0, 3, {"é": [1.5, None, True]}, b"")]
    data = b"".join(encode_frame(*f) for f in frames)
    assert FrameDecoder().feed(data) == frames
    for step in (1, 2, 5, 13, 14, 100):   # frames split anywhere arrive whole, in order
        decoder, got = FrameDecoder(), []
        for i in range(0, len(data), step):
            got += decoder.feed(data[i:i + step])
        assert got == frames


def test_a_frame_with_impossible_lengths_is_refused():
    with pytest.raises(ValueError):
        FrameDecoder().feed(HEADER.pack(5, 1, OP_TAKE, 9) + b"12345")   # JSON part longer than the body
    with pytest.raises(ValueError):
        FrameDecoder().feed(HEADER.pack(1 << 31, 1, OP_TAKE, 0))


# ------------------------------------------------------------------------------- store over a pair

async def group(n: int, clock=None, **hub_kw):
    """A hub with n workers' links, each over its own socketpair, all in this loop."""
    hub = Hub(LocalStore(clock=clock or Clock()), **hub_kw)
    links = []
    for pid in range(1, n + 1):
        parent_end, worker_end = socket.socketpair()
        await hub.add_worker(pid, parent_end)
        links.append(await GroupLink.connect(worker_end))
    return hub, links


def test_group_store_shares_one_bucket_counters_and_cache_between_workers():
    async def go():
        clock = Clock()
        hub, (a, b) = await group(2, clock)
        sa, sb = GroupStore(a, clock=clock), GroupStore(b, clock=clock)
        decisions = [await s.take("ratelimit:k", 1.0, 3) for s in (sa, sb, sa, sb)]
        assert [d.allowed for d in decisions] == [True, True, True, False]   # one bucket of 3, not two
        assert decisions[3].limit == 3 and decisions[3].remaining == 0 and decisions[3].retry_after_s > 0
        clock.t += 1.0
        assert (await sb.take("ratelimit:k", 1.0, 3)).allowed
        await sa.hincr("spend:k", {"usd": 0.5, "tokens": 10})
        await sb.hincr("spend:k", {"usd": 0.25}, ttl_s=60)
        assert await sb.hmget("spend:k", ["usd", "tokens", "none"]) == [0.75, 10, 0.0]
        assert await sa.hgetall("spend:k") == {"usd": 0.75, "tokens": 10}
        value = b"\x00\xff" + "é".encode() * 1000
        await sa.cache_put("c1", value, 30)
        assert await sb.cache_get("c1") == value
        assert await sb.cache_get("missing") is None
        clock.t += 31
        assert await sa.cache_get("c1") is None
        assert sa.health() == {"kind": "group", "status": "ok"}
        # many concurrent calls from both workers are all answered, each with its own reply
        got = await asyncio.gather(*(s.hmget("spend:k", ["usd"]) for s in (sa, sb) * 50))
        assert got == [[0.75]] * 100
        for link in (a, b):
            await link.close()
        await hub.close()
    run(go())


def test_a_bad_request_gets_an_error_and_the_hub_keeps_serving():
    async def go():
        hub, (a,) = await group(1)
        with pytest.raises(Exception):
            await a.call(OP_TAKE, ["only-a-bucket"])
        assert (await GroupStore(a).take("b", 1.0, 1)).allowed
        await a.close()
        await hub.close()
    run(go())


def test_a_worker_whose_parent_is_gone_falls_back_to_its_own_store(caplog):
    async def go():
        hub, (a,) = await group(1)
        store = GroupStore(a)
        assert (await store.take("k", 1.0, 1)).allowed
        await hub.close()                       # the parent's end closes
        for _ in range(100):
            if a.broken:
                break
            await asyncio.sleep(0.01)
        assert a.broken
        # requests keep being answered, from this worker's own state
        assert (await store.take("k", 1.0, 1)).allowed
        assert not (await store.take("k", 1.0, 1)).allowed
        await store.hincr("h", {"n": 1})
        assert await store.hgetall("h") == {"n": 1}
        await store.cache_put("c", b"v", 10)
        assert await store.cache_get("c") == b"v"
        assert store.health()["status"] == "degraded"
        await a.close()
    with caplog.at_level(logging.WARNING, logger="clasp"):
        run(go())
    assert sum("lost the connection to the parent" in r.getMessage() for r in caplog.records) == 1


# --------------------------------------------------------------------------------------- metrics

def test_hub_merges_every_workers_metrics_and_counters_never_go_down():
    async def go():
        hub, links = await group(3, snapshot_timeout=0.5)
        metrics = [Metrics(clock=Clock()) for _ in links]
        for link, m in zip(links, metrics):
            link.snapshot_source = m.snapshot
        for i, m in enumerate(metrics):
            for _ in range(i + 1):
                m.record_request("openai", "gpt-4o", 200, latency_s=0.2, input_tokens=10, output_tokens=5)
        metrics[2].record_request("openai", "gpt-4o", 500, error_type="api_error", error_message="boom")
        metrics[0].active_requests = 2
        merged, _ = await links[0].call(OP_METRICS, metrics[0].snapshot())
        c = merged["counters"]
        assert c["total"] == 7 and c["successful"] == 6 and c["errors"] == 1
        assert c["requests"]["openai"]["gpt-4o"] == {"200": 6, "500": 1}
        assert c["series"]["openai"]["gpt-4o"]["input_tokens"] == 60
        assert sum(c["series"]["openai"]["gpt-4o"]["dur_counts"]) == 7
        assert merged["active"]["requests"] == 2
        assert [e["message"] for e in merged["recent_errors"]] == ["boom"]
        assert sorted((w["pid"], w["requests"]) for w in merged["workers"]) == [(1, 1), (2, 2), (3, 4)]
        # worker 3 stops answering (its loop is busy, or it died): its last numbers still count
        links[2].snapshot_source = None
        await links[2].close()
        metrics[0].record_request("openai", "gpt-4o", 200)
        merged, _ = await links[1].call(OP_METRICS, metrics[1].snapshot())
        assert merged["counters"]["total"] == 8
        hub.worker_exited(3)
        merged, _ = await links[1].call(OP_METRICS, metrics[1].snapshot())
        assert merged["counters"]["total"] == 8
        assert {w["pid"]: w["running"] for w in merged["workers"]} == {1: True, 2: True, 3: False}
        for link in links[:2]:
            await link.close()
        await hub.close()
    run(go())


def test_a_worker_that_does_not_answer_in_time_counts_with_its_last_snapshot():
    async def go():
        hub, (a, b) = await group(2, snapshot_timeout=0.2)
        ma, mb = Metrics(clock=Clock()), Metrics(clock=Clock())
        a.snapshot_source = ma.snapshot
        b.snapshot_source = mb.snapshot
        mb.record_request("openai", "m", 200)
        merged, _ = await a.call(OP_METRICS, ma.snapshot())
        assert merged["counters"]["total"] == 1
        b._transport.pause_reading()   # b's loop is busy: the hub's request times out
        mb.record_request("openai", "m", 200)
        merged, _ = await a.call(OP_METRICS, ma.snapshot())
        assert merged["counters"]["total"] == 1
        for link in (a, b):
            await link.close()
        await hub.close()
    run(go())


def test_metrics_that_do_not_merge_get_an_error_not_a_hang():
    async def go():
        hub, (a, b) = await group(2, snapshot_timeout=0.5)
        b.snapshot_source = lambda: {"not": "a snapshot"}
        with pytest.raises(GroupUnavailable, match="parent failed"):
            await asyncio.wait_for(a.call(OP_METRICS, Metrics(clock=Clock()).snapshot()), 10)
        assert (await GroupStore(a).take("k", 1.0, 1)).allowed   # and the hub keeps serving
        for link in (a, b):
            await link.close()
        await hub.close()
    run(go())
