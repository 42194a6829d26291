"""`python -m clasp -workers 2` with a keys file, no Redis: the group is one gateway. A key's rate
limit and budget hold once for the group, /costs and the per-key Prometheus series are the group's
totals whichever worker answers (and never go down), and SIGHUP to the parent reloads the keys file
in every worker without stopping the group."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

import promparse
from test_workers import counters, start_group, stop
from clasp.ops.pricing import PRICES

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"),
                                reason="needs SO_REUSEPORT and fork")

ALICE = "sk-alice-Gm36pRt8Xe"    # rate limited
BOB = "sk-bob-Lc92wQs4Hv"        # a daily budget
DAN = "sk-dan-Uf57kZn1Ay"        # no limits; removed from the file by the reload test
ERIN = "sk-erin-Ob48jTd6Wc"      # added to the file by the reload test
OPS = "sk-ops-Ez15hMv7Ri"        # reads /costs and /metrics
BURST = 5
MODEL = "gpt-4o-mini"
PROMPT, CACHED, OUTPUT = 100_000, 40_000, 20_000     # $0.024 a request on gpt-4o-mini
USAGE = {"prompt_tokens": PROMPT, "completion_tokens": OUTPUT, "total_tokens": PROMPT + OUTPUT,
         "prompt_tokens_details": {"cached_tokens": CACHED}}
COST = PRICES[MODEL].cost(PROMPT - CACHED, CACHED, OUTPUT)
BOB_BUDGET = 0.04                                     # two requests, then spent
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def entry(name: str, key: str, **limits) -> dict:
    return {"name": name, "key_sha256": sha(key), **limits}


BASE_KEYS = [entry("alice", ALICE, rate_limit=1, burst=BURST), entry("bob", BOB, daily_budget_usd=BOB_BUDGET),
             entry("dan", DAN), entry("ops", OPS)]


@pytest.fixture(scope="module")
def upstream():
    from harness import FakeUpstream, LoopThread, completion, json_reply
    lt = LoopThread()
    up = FakeUpstream(lt, lambda seen: json_reply(completion(usage=USAGE)))
    yield up
    up.close()
    lt.stop()


def call(port: int, method: str, path: str, key: str, body=None) -> tuple[int, dict, bytes]:
    """One request on a new connection (the kernel spreads new connections over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"content-type": "application/json", "x-api-key": key})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def post(port: int, key: str) -> int:
    return call(port, "POST", "/v1/messages", key, HELLO)[0]


def get_json(port: int, path: str) -> dict:
    status, _, raw = call(port, "GET", path, OPS)
    assert status == 200, raw
    return json.loads(raw)


def group(upstream, tmp_path, keys: list, *args: str):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    proc, port, stderr = start_group(upstream, "-model", MODEL, "-keys-file", str(path), *args)
    return proc, port, stderr, path


def wait_until(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def served_by_each_worker(port: int) -> dict[int, int]:
    return {p["pid"]: p["requests"] for p in get_json(port, "/metrics")["worker"]["processes"]}


def test_a_keys_rate_limit_and_budget_hold_once_for_the_group(upstream, tmp_path):
    proc, port, stderr, _ = group(upstream, tmp_path, BASE_KEYS)
    try:
        statuses = [post(port, ALICE) for _ in range(30)]
        assert statuses.count(200) == BURST and statuses.count(429) == 30 - BURST
        assert [post(port, DAN) for _ in range(10)] == [200] * 10     # another key: its own (no) limit
        assert all(n > 0 for n in served_by_each_worker(port).values())  # both workers were asked
        # bob: each request is booked before the next one is sent (as the budget's doc says, a
        # request in flight when the budget runs out may overshoot it)
        accepted = 0
        for _ in range(8):
            status, headers, raw = call(port, "POST", "/v1/messages", BOB, HELLO)
            if status == 200:
                accepted += 1
                wait_until(lambda: get_json(port, "/costs")["today"]["bob"]["requests"] == accepted, "the spend")
                continue
            assert status == 402 and headers["x-should-retry"] == "false", raw
            assert json.loads(raw)["error"]["type"] == "billing_error"
        assert accepted == 2       # $0.024 each: the group's budget of $0.04 is spent after two
    finally:
        assert stop(proc) == 0


def test_costs_and_per_key_prometheus_are_the_groups_totals_and_only_grow(upstream, tmp_path):
    proc, port, stderr, _ = group(upstream, tmp_path, BASE_KEYS)
    try:
        senders, per_sender = 3, 10
        statuses: list[int] = []

        def send():
            for _ in range(per_sender):
                statuses.append(post(port, DAN))

        threads = [threading.Thread(target=send) for _ in range(senders)]
        for t in threads:
            t.start()
        previous: dict[tuple, float] = {}
        scrapes = 0
        while any(t.is_alive() for t in threads) or scrapes < 20:
            status, _, body = call(port, "GET", "/metrics/prometheus", OPS)
            assert status == 200
            scrapes += 1
            for key, value in counters(body.decode()).items():
                assert value >= previous.get(key, 0.0), (key, previous.get(key), value)
                previous[key] = value
        for t in threads:
            t.join(60)
        n = senders * per_sender
        assert statuses == [200] * n

        def per_key(text: str) -> tuple[float, float, float]:
            fams = promparse.parse(text)
            tokens = {s.labels["kind"]: s.value for s in fams["clasp_tokens_total"].samples
                      if s.labels.get("key") == "dan" and s.labels.get("model") == MODEL}
            (cost,) = [s.value for s in fams["clasp_cost_usd_total"].samples
                       if s.labels == {"key": "dan", "model": MODEL}] or [0.0]
            return tokens.get("output", 0.0), tokens.get("cached_input", 0.0), cost

        want = (n * OUTPUT, n * CACHED, pytest.approx(n * COST, abs=1e-9))
        wait_until(lambda: per_key(call(port, "GET", "/metrics/prometheus", OPS)[2].decode()) == want,
                   "the group's totals in Prometheus")
        pids = set()
        for _ in range(12):   # whichever worker answers: the same totals
            assert per_key(call(port, "GET", "/metrics/prometheus", OPS)[2].decode()) == want
            dan = get_json(port, "/costs")["today"]["dan"]
            assert (dan["requests"], dan["output_tokens"], dan["cached_input_tokens"]) == (n, n * OUTPUT, n * CACHED)
            assert dan["cost_usd"] == pytest.approx(n * COST, abs=1e-6)
            pids.add(get_json(port, "/metrics")["worker"]["pid"])
        assert len(pids) == 2, "one worker answered every scrape: the test proves nothing"
    finally:
        assert stop(proc) == 0


def test_sighup_to_the_parent_reloads_the_keys_in_every_worker(upstream, tmp_path):
    # no reload by mtime during the test: only the signal may change the keys
    proc, port, stderr, path = group(upstream, tmp_path, BASE_KEYS, "-keys-check-interval", "3600")
    try:
        assert [post(port, DAN) for _ in range(6)] == [200] * 6
        assert post(port, ERIN) == 401
        path.write_text(json.dumps({"keys": [k for k in BASE_KEYS if k["name"] != "dan"]
                                    + [entry("erin", ERIN)]}))
        before = served_by_each_worker(port)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: stderr.count(b"reloaded: 4 keys") == 2, "both workers to reload")
        assert [post(port, ERIN) for _ in range(12)] == [200] * 12
        assert [post(port, DAN) for _ in range(12)] == [401] * 12
        after = served_by_each_worker(port)
        assert set(after) == set(before) and all(after[pid] > before[pid] for pid in before), (before, after)
        assert proc.poll() is None                                  # the group is still running
    finally:
        assert stop(proc) == 0
