"""The Redis client (clasp/store/resp.py) and RedisStore (clasp/store/redis.py) against the
in-process tests/fakeredis.py: the protocol, connecting (AUTH, SELECT, pool, timeouts), scripts,
degraded mode (fail-open and fail-closed) and two proxies sharing one rate limit and one cache.
A real redis-server runs in tests/real/test_redis_store.py."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import promparse
from fakeredis import FakeRedis
from harness import Proxy, completion, json_reply
from clasp.store import redis as redis_store
from clasp.store.redis import HINCR, TAKE, RedisStore, StoreUnavailable
from clasp.store.resp import (ProtocolError, RedisClient, RedisConnectionError, RedisError, RespParser, Script,
                              encode_command, parse_url)

PASSWORD = "s3cret-Redis-Pw9"


def run(coro, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ------------------------------------------------------------------------------------- protocol

def test_commands_are_arrays_of_bulk_strings():
    assert encode_command(["SET", "k", b"\x00\r\n", 5, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\x00\r\n\r\n$1\r\n5\r\n$3\r\n1.5\r\n")
    assert encode_command(["GET", "ké"]) == b"*2\r\n$3\r\nGET\r\n$3\r\nk\xc3\xa9\r\n"
    with pytest.raises(TypeError):
        encode_command(["SET", "k", None])


def test_parser_reads_every_reply_type_fed_one_byte_at_a_time():
    wire = (b"+OK\r\n-ERR wrong\r\n:42\r\n:-7\r\n$5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
            b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n")
    p = RespParser()
    replies = []
    for i in range(len(wire)):
        p.feed(wire[i:i + 1])
        while (r := p.get()) is not RespParser.NEED_MORE:
            replies.append(r)
    err = replies[1]
    assert isinstance(err, RedisError) and str(err) == "ERR wrong"
    assert replies[:1] + replies[2:] == ["OK", 42, -7, b"he\r\no", b"", None, None, [], [1, [b"a", None], "x"]]


@pytest.mark.parametrize("garbage", [b"?what\r\n", b":12x\r\n", b"$3\r\nabcd\r\n", b"$x\r\n"])
def test_parser_rejects_garbage(garbage):
    p = RespParser()
    p.feed(garbage)
    with pytest.raises(ProtocolError):
        p.get()


def test_parser_refuses_an_endless_line():
    p = RespParser()
    p.feed(b"+" + b"x" * 70000)
    with pytest.raises(ProtocolError):
        p.get()


# ------------------------------------------------------------------------------------------ URLs

def test_url_forms():
    u = parse_url("redis://localhost")
    assert (u.host, u.port, u.db, u.username, u.password, u.tls) == ("localhost", 6379, 0, "", "", False)
    u = parse_url("rediss://alice:p%40ss@cache.internal:6380/3?ssl_ca_certs=/etc/ca.pem")
    assert (u.host, u.port, u.db, u.username, u.password, u.tls, u.ca_certs, u.verify) == (
        "cache.internal", 6380, 3, "alice", "p@ss", True, "/etc/ca.pem", True)
    assert parse_url("redis://:pw@h/1").password == "pw" and parse_url("redis://:pw@h/1").username == ""
    assert parse_url("redis://tokenonly@h").password == "tokenonly"      # as redis-cli reads it
    assert parse_url("redis://h?db=5").db == 5
    assert parse_url("rediss://h?ssl_cert_reqs=none").verify is False
    assert parse_url("redis://[::1]:7000").address == "redis://[::1]:7000/0"


@pytest.mark.parametrize("url", ["http://:pw-XYZ123@h", "redis://:pw-XYZ123@h/abc", "redis://:pw-XYZ123@/0",
                                 "redis://:pw-XYZ123@h:99999", "rediss://:pw-XYZ123@h?ssl_cert_reqs=maybe",
                                 "redis://h?password=pw-XYZ123"])
def test_bad_urls_are_refused_without_showing_the_password(url):
    with pytest.raises(ValueError) as e:
        parse_url(url)
    assert "pw-XYZ123" not in str(e.value)


def test_the_password_is_in_no_repr():
    u = parse_url(f"redis://bob:{PASSWORD}@h:1/2")
    store = RedisStore(f"redis://bob:{PASSWORD}@h:1/2")
    for text in (repr(u), repr(store), repr(store.client), u.address, json.dumps(store.health())):
        assert PASSWORD not in text


def test_config_hides_the_redis_password():
    from clasp.config import load_config
    from clasp.redaction import redact_variants, secret_variants
    url = f"redis://app:{PASSWORD}@redis.internal:6379/0"
    cfg, _ = load_config(["-redis-url", url], {"HOME": "/nonexistent-clasp-test-home"})
    assert cfg.redis_url == url and PASSWORD not in repr(cfg)
    assert PASSWORD in cfg.secrets()      # the password alone is redacted too, wherever it shows up
    assert PASSWORD not in redact_variants(f"auth failed for {PASSWORD}", secret_variants(cfg.secrets()))


def test_config_refuses_a_bad_redis_url_without_the_password():
    from clasp.config import ConfigError, load_config
    with pytest.raises(ConfigError) as e:
        load_config(["-redis-url", f"redis://:{PASSWORD}@host/notadb"], {"HOME": "/nonexistent-clasp-test-home"})
    assert "CLASP_REDIS_URL" in str(e.value) and PASSWORD not in str(e.value)


# ---------------------------------------------------------------------------------------- client

def test_auth_with_username_and_select_on_connect_and_pooled_reuse():
    async def scenario():
        server = FakeRedis(password=PASSWORD, username="app")
        await server.start()
        client = RedisClient(f"redis://app:{PASSWORD}@127.0.0.1:{server.port}/4")
        try:
            assert await client.execute("SET", "k", "v") == "OK"
            assert await client.execute("GET", "k") == b"v"
            assert server.commands[0] == [b"AUTH", b"app", PASSWORD.encode()]
            assert server.commands[1] == [b"SELECT", b"4"]
            assert server.connections == 1                          # one connection, reused
            assert server.dbs[4] == {b"k": b"v"}
            with pytest.raises(RedisError, match="unknown command"):
                await client.execute("NOPE")
            assert await client.execute("PING") == "PONG"           # an error reply keeps the connection
            assert server.connections == 1
        finally:
            await client.close()
            await server.stop()
    run(scenario())


def test_password_only_auth_and_a_wrong_password():
    async def scenario():
        server = FakeRedis(password=PASSWORD)
        await server.start()
        good = RedisClient(f"redis://:{PASSWORD}@127.0.0.1:{server.port}")
        bad = RedisClient(f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}")
        try:
            assert await good.execute("PING") == "PONG"
            assert server.commands[0] == [b"AUTH", PASSWORD.encode()]
            with pytest.raises(RedisConnectionError) as e:
                await bad.execute("PING")
            assert "AUTH failed" in str(e.value) and "WRONGPASS" in str(e.value) and PASSWORD not in str(e.value)
        finally:
            await good.close()
            await bad.close()
            await server.stop()
    run(scenario())


def test_unreachable_server_and_read_timeout_are_connection_errors():
    async def scenario():
        server = FakeRedis()
        port = await server.start()
        await server.stop()
        client = RedisClient(f"redis://:{PASSWORD}@127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(RedisConnectionError) as e:
            await client.execute("PING")
        assert f"127.0.0.1:{port}" in str(e.value) and PASSWORD not in str(e.value)
        server = FakeRedis()
        await server.start()
        server.hang = True
        client = RedisClient(server.url, timeout=0.2)
        try:
            with pytest.raises(RedisConnectionError, match="no reply"):
                await client.execute("PING")
            server.hang = False
            assert await client.execute("PING") == "PONG"           # reconnected on a fresh connection
            assert server.connections == 2
        finally:
            await client.close()
            await server.stop()
    run(scenario())


def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error():
    async def scenario():
        server = FakeRedis()
        await server.start()
        store = RedisStore(server.url)
        try:
            assert (await store.take("b", 1.0, 5)).remaining == 4
            await server.drop_connections()              # e.g. the server's idle timeout
            assert (await store.take("b", 1.0, 5)).remaining == 3    # Redis' bucket, not a local one
            assert store.health()["status"] == "ok" and store.errors == 0
            assert server.connections == 2
            takes = [c for c in server.commands if c[0] in (b"EVALSHA", b"EVAL")]
            assert len(takes) == 3                       # EVALSHA (NOSCRIPT), EVAL, then one EVALSHA: none twice
        finally:
            await store.close()
            await server.stop()
    run(scenario())


def test_scripts_run_by_sha_and_are_sent_once_the_server_lacks_them():
    async def scenario():
        server = FakeRedis()
        await server.start()
        client = RedisClient(server.url)
        try:
            assert await client.eval(HINCR, ["h"], [0, "f", "1.5"]) == 1
            assert server.names() == [b"EVALSHA", b"EVAL"]          # NOSCRIPT, then the source
            assert await client.eval(HINCR, ["h"], [0, "f", "1"]) == 1
            assert server.names()[-1] == b"EVALSHA"
            assert server.commands[-1][1] == HINCR.sha.encode()
            assert Script("return 1").sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        finally:
            await client.close()
            await server.stop()
    run(scenario())


def test_pool_bounds_connections_under_concurrency():
    async def scenario():
        server = FakeRedis()
        await server.start()
        client = RedisClient(server.url, pool_size=3)
        try:
            replies = await asyncio.gather(*(client.execute("PING") for _ in range(50)))
            assert replies == ["PONG"] * 50 and server.connections <= 3
        finally:
            await client.close()
            await server.stop()
    run(scenario())


# ------------------------------------------------------------------------------------ the store

def test_keys_are_namespaced_by_the_prefix():
    async def scenario():
        server = FakeRedis()
        await server.start()
        a = RedisStore(server.url, prefix="team-a:")
        b = RedisStore(server.url, prefix="team-b:")
        try:
            await a.take("rate:x", 1.0, 1)
            await a.hincr("spend", {"usd": 1})
            await a.cache_put("k", b"v", 60)
            assert set(server.dbs[0]) == {b"team-a:bucket:rate:x", b"team-a:hash:spend", b"team-a:cache:k"}
            assert (await b.take("rate:x", 1.0, 1)).allowed                  # another namespace
            assert await b.hgetall("spend") == {} and await b.cache_get("k") is None
        finally:
            await a.close()
            await b.close()
            await server.stop()
    run(scenario())


def test_outage_falls_back_to_process_state_then_recovers_and_keeps_the_counters(caplog, monkeypatch):
    monkeypatch.setattr(redis_store, "BACKOFF_START_S", 0.05)
    monkeypatch.setattr(redis_store, "BACKOFF_MAX_S", 0.1)

    async def scenario():
        server = FakeRedis(password=PASSWORD)
        port = await server.start()
        store = RedisStore(f"redis://:{PASSWORD}@127.0.0.1:{port}", timeout=0.5)
        try:
            await store.hincr("spend", {"usd": 1.0})
            await server.stop()                                      # Redis goes away
            assert (await store.take("b", 1.0, 2)).allowed            # per-process bucket
            assert (await store.take("b", 1.0, 2)).allowed
            assert not (await store.take("b", 1.0, 2)).allowed
            await store.hincr("spend", {"usd": 0.5, "tokens": 10})
            await store.hincr("spend", {"usd": 0.25})
            assert await store.hmget("spend", ["usd"]) == [0.75]       # what this process booked meanwhile
            assert await store.cache_get("k") is None                  # the cache misses
            await store.cache_put("k", b"v", 60)
            h = store.health()
            assert h["status"] == "degraded" and h["errors"] >= 7 and "127.0.0.1" in store.last_error
            connections = server.connections
            for _ in range(20):                                        # no reconnect attempt per operation
                await store.take("c", 1.0, 100)
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
            server.port = port
            await server.start()                                       # Redis is back
            for _ in range(100):
                if store.health()["status"] == "ok":
                    break
                await asyncio.sleep(0.02)
            assert store.health()["status"] == "ok"
            assert any("reachable again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
            # the increments booked during the outage were added to Redis
            assert await store.hmget("spend", ["usd", "tokens"]) == [1.75, 10.0]
            assert (await store.take("b", 1.0, 2)).allowed             # Redis' bucket again
            assert server.connections > connections
            text = caplog.text + json.dumps(store.health())
            assert PASSWORD not in text
        finally:
            await store.close()
            await server.stop()

    with caplog.at_level(logging.INFO, logger="clasp"):
        run(scenario())


def test_fail_closed_refuses_decisions_while_redis_is_down():
    async def scenario():
        server = FakeRedis()
        port = await server.start()
        await server.stop()
        store = RedisStore(f"redis://127.0.0.1:{port}", fail_closed=True, timeout=0.5)
        try:
            for call in (store.take("b", 1.0, 1), store.hmget("h", ["a"]), store.hgetall("h")):
                with pytest.raises(StoreUnavailable) as e:
                    await call
                assert e.value.status == 503 and "-redis-fail-closed" in e.value.message
            assert await store.cache_get("k") is None                  # the cache just misses
            await store.hincr("h", {"a": 1})                           # counters are kept for later
            assert store.health()["status"] == "degraded" and store.health()["fail_closed"] is True
        finally:
            await store.close()
    run(scenario())


def test_an_error_reply_falls_back_for_that_call_without_an_outage():
    async def scenario():
        server = FakeRedis()
        await server.start()
        store = RedisStore(server.url)
        try:
            server.dbs[0] = {b"clasp:cache:k": {b"not": b"a string"}}  # WRONGTYPE
            assert await store.cache_get("k") is None
            assert store.health()["status"] == "ok" and store.errors == 1
        finally:
            await store.close()
            await server.stop()
    run(scenario())


def test_counters_refused_by_an_error_reply_reach_redis_once_it_accepts_writes():
    # Redis answers but refuses writes for a while (OOM under maxmemory, READONLY after a failover,
    # LOADING after a restart): no outage starts, and what was booked meanwhile still reaches Redis
    async def scenario():
        server = FakeRedis()
        await server.start()
        store = RedisStore(server.url)
        try:
            await store.hincr("spend", {"usd": 1.0})
            server.refuse_writes = "OOM command not allowed when used memory > 'maxmemory'."
            await store.hincr("spend", {"usd": 2.0})
            await store.hincr("spend", {"usd": 4.0})
            assert store.health()["status"] == "ok" and store.errors == 2     # an error reply is no outage
            server.refuse_writes = None
            for _ in range(200):
                if (await store.hgetall("spend")).get("usd") == 7.0:
                    break
                await asyncio.sleep(0.02)
            assert await store.hgetall("spend") == {"usd": 7.0}
            assert float(server.dbs[0][b"clasp:hash:spend"][b"usd"]) == 7.0   # in Redis, not only here
        finally:
            await store.close()
            await server.stop()
    run(scenario())


def test_token_bucket_script_uses_the_server_clock():
    # TAKE reads TIME inside the script: replicas with skewed clocks share one correct bucket
    assert "redis.call('TIME')" in TAKE.source and "PEXPIRE" in TAKE.source


# ------------------------------------------------------------------- two proxies, one fake Redis

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
DET = {**HELLO, "temperature": 0}


@pytest.fixture
def fake_redis(lt):
    server = FakeRedis(password=PASSWORD)
    lt.run(server.start())
    yield server
    lt.run(server.stop())


def _proxy(proxies, lt, upstream, server, *argv):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-redis-url",
                   f"redis://:{PASSWORD}@127.0.0.1:{server.port}/1", *argv], {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    return p


def _json(p, path):
    status, _, raw = p.request("GET", path)
    assert status == 200
    return json.loads(raw)


def test_two_proxies_share_one_rate_limit_and_one_cache(lt, upstream, proxies, fake_redis):
    upstream.script = lambda seen: json_reply(completion())
    limit = ["-rate-limit", "-rate-limit-burst", "3", "-rate-limit-requests", "1", "-rate-limit-window", "3600"]
    a = _proxy(proxies, lt, upstream, fake_redis, *limit, "-cache")
    b = _proxy(proxies, lt, upstream, fake_redis, *limit, "-cache")
    statuses = [p.post(HELLO)[0] for p in (a, b, a, b)]
    assert statuses == [200, 200, 200, 429]                  # one bucket of 3 for both
    status, headers, err = b.post(HELLO)
    assert status == 429 and err["error"]["type"] == "rate_limit_error"
    assert headers["anthropic-ratelimit-requests-limit"] == "3" and int(headers["retry-after"]) > 3000
    fake_redis.dbs.clear()                                   # fresh buckets
    # cache: what one stored, the other serves
    assert a.post(DET)[1]["x-clasp-cache"] == "MISS"
    calls = len(upstream.requests)
    status, headers, body = b.post(DET)
    assert status == 200 and headers["x-clasp-cache"] == "HIT" and len(upstream.requests) == calls
    assert body["content"][0]["text"] == "Hello!"
    assert _json(b, "/metrics")["cache"]["hits"] == 1


def test_redis_outage_keeps_traffic_flowing_and_health_says_degraded(lt, upstream, proxies, fake_redis,
                                                                      monkeypatch):
    monkeypatch.setattr(redis_store, "BACKOFF_START_S", 0.05)
    monkeypatch.setattr(redis_store, "BACKOFF_MAX_S", 0.1)
    upstream.script = lambda seen: json_reply(completion())
    p = _proxy(proxies, lt, upstream, fake_redis, "-rate-limit", "-rate-limit-burst", "50", "-cache")
    assert p.post(DET)[0] == 200
    health = _json(p, "/health")
    assert health["status"] == "ok" and health["store"]["kind"] == "redis" and health["store"]["status"] == "ok"
    port = fake_redis.port
    lt.run(fake_redis.stop())
    results = [p.post(DET) for _ in range(3)]
    assert [r[0] for r in results] == [200, 200, 200]
    assert all(r[1]["x-clasp-cache"] == "MISS" for r in results)   # no cache while Redis is away
    health = _json(p, "/health")
    assert health["status"] == "degraded" and health["store"]["status"] == "degraded"
    prom = promparse.parse(p.request("GET", "/metrics/prometheus")[2].decode())
    assert promparse.value(prom, "clasp_store_up", store="redis") == 0
    assert promparse.value(prom, "clasp_store_errors_total", store="redis") >= 3
    assert _json(p, "/metrics")["store"]["status"] == "degraded"
    fake_redis.port = port
    lt.run(fake_redis.start())
    for _ in range(100):
        if _json(p, "/health")["status"] == "ok":
            break
        lt.run(asyncio.sleep(0.02))
    assert _json(p, "/health")["store"]["status"] == "ok"
    assert p.post(DET)[1]["x-clasp-cache"] == "HIT"             # stored before the outage, still there
    log = p.log.getvalue() + p.request("GET", "/metrics/prometheus")[2].decode() + json.dumps(_json(p, "/health"))
    assert PASSWORD not in log


def test_fail_closed_answers_503_while_redis_is_down(lt, upstream, proxies, fake_redis):
    upstream.script = lambda seen: json_reply(completion())
    p = _proxy(proxies, lt, upstream, fake_redis, "-rate-limit", "-redis-fail-closed")
    assert p.post(HELLO)[0] == 200
    lt.run(fake_redis.stop())
    calls = len(upstream.requests)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, headers, raw = p.request("POST", path, HELLO)
        err = json.loads(raw)
        assert status == 503 and err["type"] == "error" and err["error"]["type"] == "api_error"
        assert "Redis" in err["error"]["message"] and PASSWORD not in err["error"]["message"]
        assert headers["retry-after"] == "5"
    assert len(upstream.requests) == calls


def test_fail_closed_costs_and_a_budgeted_key_answer_503_while_redis_is_down(lt, upstream, proxies, fake_redis,
                                                                                tmp_path):
    # GET /costs reads the store too: an Anthropic 503 naming the setting, never a 500 with a traceback
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "ops", "key": "sk-ops-Kq83bZ1x", "daily_budget_usd": 5}]}))
    upstream.script = lambda seen: json_reply(completion())
    p = _proxy(proxies, lt, upstream, fake_redis, "-redis-fail-closed", "-keys-file", str(keys))
    auth = {"x-api-key": "sk-ops-Kq83bZ1x"}
    assert p.request("GET", "/costs", headers=auth)[0] == 200
    lt.run(fake_redis.stop())
    for method, path, body in (("GET", "/costs", None), ("POST", "/v1/messages", HELLO)):
        status, headers, raw = p.request(method, path, body, headers=auth)
        err = json.loads(raw)
        assert status == 503 and err["type"] == "error" and err["error"]["type"] == "api_error", (path, raw)
        assert "-redis-fail-closed" in err["error"]["message"] and headers["retry-after"] == "5"
    assert "Traceback" not in p.log.getvalue()
    assert p.request("GET", "/metrics", headers=auth)[0] == 200            # the server keeps serving
