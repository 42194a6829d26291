"""The team gateway on a real redis-server: two clasp replicas (spawn_clasp), one Redis, one keys
file, and a fake upstream that reports usage for priced models.

* one per-key rate limit across both replicas, and another key's bucket untouched;
* one budget: spend booked through replica A makes replica B refuse the key (402 billing_error,
  not retried, naming the budget and the key's name);
* GET /costs from either replica: the same totals, equal to what was sent (tokens from the fake's
  usage, cost from the price table);
* Redis stopped and restarted (its data kept) mid-test, fail-open: traffic continues, what was booked
  meanwhile reaches Redis when it is back (the totals stay exact), /health degraded then ok;
* no key, key hash or Redis password in either replica's stderr, metrics, /costs or error bodies.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time

import pytest

import promparse
from conftest import PASSWORD
from harness import completion, json_reply
from clasp.ops.pricing import PRICES

ALICE = "sk-alice-Rk27dWq9Zp"    # rate limited, sonnet only
BOB = "sk-bob-Ty58mXc3Ln"        # a small daily budget
CAROL = "sk-carol-Vh41sPe6Jb"    # rate limited like alice, her own bucket
OPS = "sk-ops-Nq73fKa2Wd"        # reads /costs and /metrics
KEYS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "ops": OPS}
BURST = 5
BOB_BUDGET = 0.02

MAIN, SMALL = "gpt-4o-mini", "gpt-4.1-nano"     # priced in the table: sonnet and haiku go there
SONNET = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
HAIKU = {**SONNET, "model": "claude-haiku-4-5"}
# what the fake upstream reports for every request: 60,000 new input tokens, 40,000 read from the
# provider's cache, 20,000 output (gpt-4o-mini: $0.024 a request, more than bob's budget)
PROMPT, CACHED, OUTPUT = 100_000, 40_000, 20_000
USAGE = {"prompt_tokens": PROMPT, "completion_tokens": OUTPUT, "total_tokens": PROMPT + OUTPUT,
         "prompt_tokens_details": {"cached_tokens": CACHED}}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def cost_of(model: str, requests: int) -> float:
    return requests * PRICES[model].cost(PROMPT - CACHED, CACHED, OUTPUT)


SECRETS = (*KEYS.values(), *(sha(k) for k in KEYS.values()), PASSWORD)


class Gateway:
    """Two replicas on one Redis; every answer they give is kept, to look for secrets in it."""

    def __init__(self, tmp_path, redis, upstream, clasps, *argv: str, a_argv: tuple = ()) -> None:
        upstream.script = lambda seen: json_reply(completion(usage=USAGE))
        keys = tmp_path / "keys.json"
        keys.write_text(json.dumps({"keys": [
            {"name": "alice", "key_sha256": sha(ALICE), "rate_limit": 1, "burst": BURST, "models": ["sonnet"]},
            {"name": "bob", "key_sha256": sha(BOB), "daily_budget_usd": BOB_BUDGET},
            {"name": "carol", "key_sha256": sha(CAROL), "rate_limit": 1, "burst": BURST},
            {"name": "ops", "key_sha256": sha(OPS)},
        ]}))
        self.redis, self.upstream, self.clasps = redis, upstream, clasps
        self.answers: list[str] = []
        self.a, self.b = (clasps.start(upstream, redis.url, "-keys-file", str(keys), *argv, *extra, model=MAIN,
                                       env={"CLASP_MODEL_HAIKU": SMALL}) for extra in (a_argv, ()))

    def request(self, port: int, method: str, path: str, key: str, body: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"content-type": "application/json", "x-api-key": key})
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        self.answers.append(raw.decode(errors="replace"))
        return r.status, {k.lower(): v for k, v in r.getheaders()}, raw

    def post(self, port: int, key: str, body: dict = SONNET):
        return self.request(port, "POST", "/v1/messages", key, body)

    def get(self, port: int, path: str) -> bytes:
        status, _, raw = self.request(port, "GET", path, OPS)
        assert status == 200, (path, raw)
        return raw

    def costs(self, port: int) -> dict:
        return json.loads(self.get(port, "/costs"))

    def health(self, port: int) -> dict:
        return json.loads(self.get(port, "/health"))

    def finish(self) -> None:
        """Every page a user may see, then each replica's stderr: no secret anywhere."""
        for port in (self.a, self.b):
            for path in ("/metrics", "/metrics/prometheus", "/costs", "/health"):
                self.get(port, path)
        log = self.clasps.stop()
        assert "listening on" in log
        for text in (log, *self.answers):
            for secret in SECRETS:
                assert secret not in text, f"a secret ({secret[:6]}...) appears in: {text[:300]}"


def wait_until(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def gateway(tmp_path, redis, upstream, clasps):
    made = []

    def make(*argv: str, a_argv: tuple = ()) -> Gateway:
        made.append(Gateway(tmp_path, redis, upstream, clasps, *argv, a_argv=a_argv))
        return made[-1]
    return make


def test_one_rate_limit_per_key_across_two_replicas(gateway):
    gw = gateway()
    results = [(port, gw.post(port, ALICE)) for _ in range(6) for port in (gw.a, gw.b)]
    accepted = [port for port, (status, _, _) in results if status == 200]
    refused = [r for _, r in results if r[0] == 429]
    # one bucket: the burst (and at most one token refilled meanwhile at 1/min), not one per replica
    assert BURST <= len(accepted) <= BURST + 1 and len(accepted) + len(refused) == 12
    assert {gw.a, gw.b} <= set(accepted)
    status, headers, raw = refused[-1]
    err = json.loads(raw)["error"]
    assert err["type"] == "rate_limit_error" and "'alice'" in err["message"]
    assert int(headers["retry-after"]) > 0 and headers["anthropic-ratelimit-requests-limit"] == str(BURST)
    # carol's bucket is her own: her first burst passes on both replicas
    statuses = [gw.post(port, CAROL)[0] for port in (gw.a, gw.b, gw.a, gw.b, gw.a)]
    assert statuses == [200] * BURST
    gw.finish()


def test_spend_booked_by_one_replica_spends_the_budget_on_the_other(gateway):
    gw = gateway()
    assert gw.post(gw.a, BOB)[0] == 200                  # $0.024: over bob's $0.02
    wait_until(lambda: gw.costs(gw.b)["budgets"]["bob"]["daily"]["spent_usd"] >= BOB_BUDGET,
               "replica B to see the spend booked by replica A")
    calls = len(gw.upstream.requests)
    for port in (gw.b, gw.a):
        status, headers, raw = gw.post(port, BOB)
        assert status == 402, raw
        assert headers["x-should-retry"] == "false"
        body = json.loads(raw)
        assert body["type"] == "error" and body["error"]["type"] == "billing_error"
        message = body["error"]["message"]
        assert "daily budget of $0.02" in message and "'bob'" in message
    assert len(gw.upstream.requests) == calls                # refused before the upstream
    assert gw.post(gw.b, CAROL)[0] == 200                    # only bob is cut off
    gw.finish()


def test_costs_from_either_replica_are_the_totals_sent(gateway):
    gw = gateway()
    sent = {("alice", MAIN): 0, ("carol", MAIN): 0, ("carol", SMALL): 0}
    for port, key, body, booked in ((gw.a, ALICE, SONNET, ("alice", MAIN)), (gw.b, ALICE, SONNET, ("alice", MAIN)),
                                    (gw.a, ALICE, SONNET, ("alice", MAIN)), (gw.a, CAROL, HAIKU, ("carol", SMALL)),
                                    (gw.b, CAROL, HAIKU, ("carol", SMALL)), (gw.b, CAROL, SONNET, ("carol", MAIN))):
        assert gw.post(port, key, body)[0] == 200
        sent[booked] += 1

    def expected_for(name: str) -> dict:
        models = {}
        for (key, model), n in sent.items():
            if key == name:
                models[model] = {"requests": n, "input_tokens": n * (PROMPT - CACHED),
                                 "cached_input_tokens": n * CACHED, "output_tokens": n * OUTPUT,
                                 "unpriced_requests": 0, "cost": cost_of(model, n)}
        return models

    def shown(costs: dict, name: str) -> dict:
        out = {}
        for model, m in costs["today"].get(name, {}).get("models", {}).items():
            out[model] = {k: m[k] for k in ("requests", "input_tokens", "cached_input_tokens", "output_tokens",
                                            "unpriced_requests")}
            out[model]["cost"] = m["cost_usd"]
        return out

    def matches(costs: dict) -> bool:
        for name in ("alice", "carol"):
            got, want = shown(costs, name), expected_for(name)
            if set(got) != set(want):
                return False
            for model, w in want.items():
                g = dict(got[model])
                if g.pop("cost") != pytest.approx(w["cost"], abs=1e-6) or g != {k: v for k, v in w.items() if k != "cost"}:
                    return False
        return True

    # alice may not use haiku, on either replica: 403 naming her, nothing sent upstream, nothing booked
    calls = len(gw.upstream.requests)
    for port in (gw.a, gw.b):
        status, headers, raw = gw.post(port, ALICE, HAIKU)
        err = json.loads(raw)["error"]
        assert status == 403 and err["type"] == "permission_error" and "'alice'" in err["message"]
        assert headers["x-should-retry"] == "false"
    assert len(gw.upstream.requests) == calls
    wait_until(lambda: matches(gw.costs(gw.a)) and matches(gw.costs(gw.b)), "/costs to show what was sent")
    ca, cb = gw.costs(gw.a), gw.costs(gw.b)
    assert ca["today"] == cb["today"] and ca["since_start"] == cb["since_start"] == ca["today"]
    assert ca["today"]["alice"]["cost_usd"] == pytest.approx(cost_of(MAIN, 3), abs=1e-6)
    # Prometheus is per replica (metrics are not shared): the two replicas' series add up to the totals
    tokens = cost = 0.0
    for port in (gw.a, gw.b):
        prom = promparse.parse(gw.get(port, "/metrics/prometheus").decode())
        tokens += sum(s.value for s in prom["clasp_tokens_total"].samples
                      if s.labels.get("key") == "carol" and s.labels.get("kind") == "output")
        cost += sum(s.value for s in prom["clasp_cost_usd_total"].samples if s.labels.get("key") == "alice")
    assert tokens == 3 * OUTPUT and cost == pytest.approx(cost_of(MAIN, 3), abs=1e-6)
    gw.finish()


def test_redis_restarted_mid_test_fail_open_keeps_exact_totals(gateway):
    gw = gateway("-redis-timeout", "0.5")
    for port in (gw.a, gw.b):
        assert gw.post(port, CAROL)[0] == 200
        assert gw.health(port)["status"] == "ok"
    wait_until(lambda: gw.costs(gw.a)["today"].get("carol", {}).get("requests") == 2, "the first spend")

    gw.redis.stop(persist=True)                               # a restart that keeps the data
    statuses = [gw.post(port, key)[0] for port in (gw.a, gw.b) for key in (CAROL, CAROL, ALICE)]
    assert statuses == [200] * 6                              # fail-open: traffic continues
    for port in (gw.a, gw.b):
        health = gw.health(port)
        assert health["status"] == "degraded" and health["store"]["status"] == "degraded"

    gw.redis.start()
    wait_until(lambda: all(gw.health(port)["status"] == "ok" for port in (gw.a, gw.b)), "both replicas to recover")
    # what each replica booked during the outage reached Redis: the totals are exact on both
    for port in (gw.a, gw.b):
        today = gw.costs(port)["today"]
        assert today["carol"]["requests"] == 2 + 4 and today["alice"]["requests"] == 2
        assert today["carol"]["output_tokens"] == 6 * OUTPUT
        assert today["carol"]["cost_usd"] == pytest.approx(cost_of(MAIN, 6), abs=1e-6)
        assert gw.costs(port)["since_start"] == today
    assert gw.post(gw.b, CAROL)[0] == 200                     # and traffic goes on
    gw.finish()
    log_text = gw.clasps.stderr
    assert log_text.count("Redis store unreachable") == 2      # once per replica and outage
    assert log_text.count("reachable again") == 2


def test_redis_refusing_writes_mid_test_keeps_exact_totals(gateway):
    # Redis answers but refuses writes (out of memory under maxmemory; a read-only replica after a
    # failover is the same): no outage, traffic continues, and what was booked meanwhile reaches
    # Redis once it takes writes again
    gw = gateway()
    for port in (gw.a, gw.b):
        assert gw.post(port, CAROL)[0] == 200
    wait_until(lambda: gw.costs(gw.a)["today"].get("carol", {}).get("requests") == 2, "the first spend")
    gw.redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    gw.redis.command("CONFIG", "SET", "maxmemory", "1")
    assert [gw.post(port, CAROL)[0] for port in (gw.a, gw.b, gw.a, gw.b)] == [200] * 4
    gw.redis.command("CONFIG", "SET", "maxmemory", "0")

    def exact(port: int) -> bool:
        carol = gw.costs(port)["today"].get("carol", {})
        return (carol.get("requests"), carol.get("output_tokens")) == (6, 6 * OUTPUT)
    wait_until(lambda: exact(gw.a) and exact(gw.b), "the refused spend to reach Redis")
    for port in (gw.a, gw.b):
        assert gw.costs(port)["today"]["carol"]["cost_usd"] == pytest.approx(cost_of(MAIN, 6), abs=1e-6)
        assert gw.health(port)["status"] == "ok"
    gw.finish()
    assert "refused a command: OOM" in gw.clasps.stderr


def test_a_replica_with_two_workers_shares_the_limits_and_costs_with_the_other(gateway):
    # -workers 2 with Redis: each worker uses Redis itself, so 3 processes hold one limit per key
    gw = gateway(a_argv=("-workers", "2"))
    wait_until(lambda: gw.clasps.procs[0].err.count(b"listening on") == 2, "both workers of replica A")
    statuses = [gw.post(port, ALICE)[0] for _ in range(8) for port in (gw.a, gw.b)]
    assert BURST <= statuses.count(200) <= BURST + 1 and statuses.count(429) == 16 - statuses.count(200)
    assert gw.post(gw.a, BOB)[0] == 200
    wait_until(lambda: gw.costs(gw.b)["budgets"]["bob"]["daily"]["remaining_usd"] == 0, "bob's spend on B")
    assert [gw.post(port, BOB)[0] for port in (gw.a, gw.b, gw.a, gw.a)] == [402] * 4
    processes = json.loads(gw.get(gw.a, "/metrics"))["worker"]["processes"]
    assert len(processes) == 2 and all(p["requests"] > 0 for p in processes)   # both workers served
    assert gw.costs(gw.a)["today"] == gw.costs(gw.b)["today"]
    assert gw.costs(gw.a)["today"]["alice"]["requests"] == statuses.count(200)
    gw.finish()
