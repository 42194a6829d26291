"""Shared state on a real redis-server (Debian package `redis-server`; .ci/run installs it).

Each test starts its own redis-server on a free loopback port in a temporary directory, with a
password (and TLS on a second port), and clasp processes as a user runs them (spawn_clasp):

* the Store contract (tests/store_contract.py) with the real Lua scripts and the server's clock,
  over redis:// and rediss://;
* two clasp processes share one rate limit and one cache;
* Redis stopped mid-test: traffic continues (fail-open), /health says degraded, the store error
  metric grows, and all recovers when Redis is back; with -redis-fail-closed: 503s meanwhile;
* the Redis password appears nowhere: logs, metrics, /health, error bodies.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest

import promparse
import store_contract
from conftest import PASSWORD
from harness import completion, json_reply
from clasp.store.redis import RedisStore
from clasp.store.resp import RedisClient

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
DET = {**HELLO, "temperature": 0}


# ------------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("check", store_contract.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
def test_store_contract_on_real_redis(redis, check, tls):
    async def scenario():
        store = RedisStore(redis.tls_url if tls else redis.url, prefix=f"contract-{check.__name__}:")
        try:
            await check(store, asyncio.sleep)
            assert store.health()["status"] == "ok" and store.errors == 0
        finally:
            await store.close()
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_database_number_and_prefix(redis):
    async def scenario():
        store = RedisStore(redis.url.replace("/0", "/3"), prefix="team:")
        try:
            await store.hincr("spend", {"usd": 2.5}, ttl_s=60)
        finally:
            await store.close()
    asyncio.run(scenario())
    assert redis.command("EXISTS", "team:hash:spend") == 0                         # not in db 0

    async def in_db3():
        client = RedisClient(redis.url.replace("/0", "/3"))
        try:
            return (await client.execute("HGET", "team:hash:spend", "usd"),
                    await client.execute("TTL", "team:hash:spend"))
        finally:
            await client.close()
    value, ttl = asyncio.run(in_db3())
    assert float(value) == 2.5 and 0 < ttl <= 60


# ------------------------------------------------------------------------------ clasp processes

def _post(port: int, body: dict, path: str = "/v1/messages") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200, path
        return r.read()
    finally:
        conn.close()


def _wait(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _store_metrics(port: int) -> tuple[float, float]:
    prom = promparse.parse(_get(port, "/metrics/prometheus").decode())
    return (promparse.value(prom, "clasp_store_up", store="redis"),
            promparse.value(prom, "clasp_store_errors_total", store="redis"))


def test_two_clasp_processes_share_one_rate_limit_and_one_cache(redis, upstream, clasps):
    upstream.script = lambda seen: json_reply(completion())
    burst = 5
    limit = ["-rate-limit", "-rate-limit-burst", str(burst), "-rate-limit-requests", "1", "-rate-limit-window", "3600"]
    a = clasps.start(upstream, redis.url, *limit, "-cache")
    b = clasps.start(upstream, redis.url, *limit, "-cache")
    results = [(port, _post(port, HELLO)) for _ in range(6) for port in (a, b)]
    accepted = [port for port, (status, _, _) in results if status == 200]
    refused = [r for _, r in results if r[0] == 429]
    assert len(accepted) == burst and len(refused) == 2 * 6 - burst       # one bucket for both
    assert {a, b} <= set(accepted)
    status, headers, raw = refused[-1]
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    assert headers["anthropic-ratelimit-requests-limit"] == str(burst) and int(headers["retry-after"]) > 3000

    redis.command("FLUSHALL")                                              # fresh buckets
    status, headers, first = _post(a, DET)
    assert status == 200 and headers["x-clasp-cache"] == "MISS"
    calls = len(upstream.requests)
    status, headers, second = _post(b, DET)
    assert status == 200 and headers["x-clasp-cache"] == "HIT" and second == first
    assert len(upstream.requests) == calls
    keys = redis.command("KEYS", "*")
    assert keys and all(k.startswith(b"clasp:") for k in keys)              # the default prefix
    health = json.loads(_get(b, "/health"))
    assert health["status"] == "ok" and health["store"]["kind"] == "redis"
    assert PASSWORD not in clasps.stop()


def test_redis_stopped_mid_test_traffic_continues_then_recovers(redis, upstream, clasps):
    upstream.script = lambda seen: json_reply(completion())
    port = clasps.start(upstream, redis.url, "-rate-limit", "-rate-limit-burst", "100", "-cache",
                        "-redis-timeout", "0.5")
    assert _post(port, DET)[0] == 200
    assert _store_metrics(port) == (1, 0)
    redis.stop()
    statuses = [_post(port, HELLO)[0] for _ in range(5)]
    assert statuses == [200] * 5                                           # fail-open
    health = json.loads(_get(port, "/health"))
    assert health["status"] == "degraded" and health["store"]["status"] == "degraded"
    up, errors = _store_metrics(port)
    assert up == 0 and errors >= 5
    assert json.loads(_get(port, "/metrics"))["store"]["errors"] >= 5
    bodies = [_get(port, p).decode() for p in ("/health", "/metrics", "/metrics/prometheus")]

    redis.start()                                                          # same port, empty
    _wait(lambda: json.loads(_get(port, "/health"))["status"] == "ok", "the store to recover")
    assert _post(port, DET)[1]["x-clasp-cache"] == "MISS"                   # Redis is used again
    assert _post(port, DET)[1]["x-clasp-cache"] == "HIT"
    assert redis.command("EXISTS", "clasp:bucket:rate:127.0.0.1") == 1
    log = clasps.stop()
    assert log.count("Redis store unreachable") == 1 and "reachable again" in log
    for text in [log, *bodies]:
        assert PASSWORD not in text


def test_fail_closed_refuses_requests_while_redis_is_down(redis, upstream, clasps):
    upstream.script = lambda seen: json_reply(completion())
    port = clasps.start(upstream, redis.url, "-rate-limit", "-redis-fail-closed", "-redis-timeout", "0.5")
    assert _post(port, HELLO)[0] == 200
    redis.stop()
    calls = len(upstream.requests)
    for _ in range(3):
        status, headers, raw = _post(port, HELLO)
        err = json.loads(raw)
        assert status == 503 and err["type"] == "error" and "Redis" in err["error"]["message"]
        assert PASSWORD not in raw.decode()
    assert len(upstream.requests) == calls                                  # nothing went upstream
    redis.start()
    _wait(lambda: _post(port, HELLO)[0] == 200, "requests to be admitted again")
    assert PASSWORD not in clasps.stop()


def test_wrong_password_is_reported_without_the_password(redis, upstream, clasps):
    upstream.script = lambda seen: json_reply(completion())
    wrong = f"redis://:not-{PASSWORD}@127.0.0.1:{redis.port}/0"
    port = clasps.start(upstream, wrong, "-rate-limit")
    assert _post(port, HELLO)[0] == 200                                     # fail-open
    _wait(lambda: json.loads(_get(port, "/health"))["store"]["status"] == "degraded", "degraded")
    health = _get(port, "/health").decode()
    log = clasps.stop()
    assert "Redis store unreachable" in log and "AUTH failed" in log and "WRONGPASS" in log
    assert PASSWORD not in log + health
