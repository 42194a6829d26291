"""SpendLedger: tokens and cost per key, model and target in the Store; budgets; the /costs report."""

from __future__ import annotations

import asyncio

import pytest

from clasp.ops.access import AccessControl
from clasp.ops.keys import parse_keys
from clasp.ops.metrics import Metrics
from clasp.ops.pricing import PriceTable, parse_prices
from clasp.ops.spend import DAY_TTL_S, MONTH_TTL_S, SpendLedger
from clasp.store.local import LocalStore
from clasp.translate.errors import ProxyError

DAY1 = 1801439000.0  # 2027-01-31T23:43:20Z


class RecordingStore(LocalStore):
    """LocalStore that remembers the calls (the lead checks the shared stores serve the same)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    async def hincr(self, name, fields, ttl_s=None):
        self.calls.append(("hincr", name, sorted(fields), ttl_s))
        await super().hincr(name, fields, ttl_s)


def ledger(wall):
    store = RecordingStore(clock=lambda: wall[0])
    return SpendLedger(store, PriceTable(parse_prices("my-model=1/0.1/2")), Metrics(), wall=lambda: wall[0])


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_record_writes_day_month_all_and_key_totals():
    wall = [DAY1]
    sl = ledger(wall)

    async def go():
        assert sl.record("alice", "openai", "my-model", 1_000_000, 500_000, 250_000) == pytest.approx(1.55)
        assert sl.record("alice", "local", "llama3", 10, 0, 5) is None
        await sl.flush()
        return await sl.report(parse_keys([{"name": "alice", "key": "sk-alice-123456", "daily_budget_usd": 2}],
                                          "k").by_name.values())

    report = run(go())
    names = [(c[1], c[3]) for c in sl.store.calls[:5]]
    assert names == [("spend:day:2027-01-31", DAY_TTL_S), ("spend:month:2027-01", MONTH_TTL_S), ("spend:all", None),
                     ("spend:key:day:2027-01-31:alice", DAY_TTL_S), ("spend:key:month:2027-01:alice", MONTH_TTL_S)]
    assert sl.store.calls[0][2] == ["alice|openai|my-model|cached_input_tokens", "alice|openai|my-model|cost_usd",
                                    "alice|openai|my-model|input_tokens", "alice|openai|my-model|output_tokens",
                                    "alice|openai|my-model|requests"]
    assert "alice|local|llama3|unpriced_requests" in sl.store.calls[5][2]
    alice = report["today"]["alice"]
    assert alice["requests"] == 2 and alice["unpriced_requests"] == 1 and alice["cost_usd"] == pytest.approx(1.55)
    assert alice["input_tokens"] == 1_000_010 and alice["cached_input_tokens"] == 500_000
    assert alice["models"]["llama3"]["cost_usd"] is None                 # unknown, never 0
    assert alice["models"]["my-model"]["targets"]["openai"]["output_tokens"] == 250_000
    assert report["this_month"] == report["today"] == report["since_start"]
    assert report["budgets"]["alice"]["daily"] == {"budget_usd": 2.0, "spent_usd": 1.55, "remaining_usd": 0.45,
                                                   "resets_at": "2027-02-01T00:00:00Z"}
    # next day: today starts empty, the month and since-start keep counting
    wall[0] += 3600
    report = run(sl.report())
    assert report["today"] == {} and report["day"] == "2027-02-01" and report["this_month"] == {}
    assert report["since_start"]["alice"]["requests"] == 2


def test_budgets_refuse_with_402_naming_the_limit_not_the_key():
    wall = [DAY1]
    sl = ledger(wall)
    key = parse_keys([{"name": "alice", "key": "sk-alice-123456", "daily_budget_usd": 1.5,
                       "monthly_budget_usd": 2}], "k").by_name["alice"]
    access = AccessControl(sl.store, sl, wall=lambda: wall[0])

    async def go():
        await access.check_budget(key)                            # nothing spent yet
        sl.record("alice", "openai", "my-model", 1_000_000, 500_000, 250_000)   # $1.55
        await sl.flush()
        with pytest.raises(ProxyError) as e:
            await access.check_budget(key)
        err = e.value
        assert (err.status, err.error_type, err.headers) == (402, "billing_error", {"x-should-retry": "false"})
        assert err.message == "daily budget of $1.50 for key 'alice' is spent ($1.55); resets at 00:00 UTC"
        assert "sk-alice" not in err.message
        wall[0] += 3600                                           # February 1st: both budgets start again
        await access.check_budget(key)
        sl.record("alice", "openai", "my-model", 0, 0, 500_000)    # $1 today
        await sl.flush()
        wall[0] += 86400                                          # February 2nd: $1 more
        sl.record("alice", "openai", "my-model", 0, 0, 500_000)
        await sl.flush()
        with pytest.raises(ProxyError, match=r"^402 billing_error: monthly budget of \$2.00 for key 'alice' is "
                                             r"spent \(\$2.00\); resets on 2027-03-01 00:00 UTC$"):
            await access.check_budget(key)

    run(go())


def test_metrics_count_tokens_and_cost_per_key_and_model_bounded():
    m = Metrics()
    m.record_spend("alice", "gpt-4o", 100, 20, 10, 0.5)
    m.record_spend("alice", "gpt-4o", 1, 2, 3, 0.25)
    m.record_spend("bob", "llama3", 7, 0, 1, None)
    for i in range(300):
        m.record_spend("bob", f"m{i}", 1, 0, 0, None)
        m.record_spend(f"k{i}", "gpt-4o", 1, 0, 0, None)
    assert m.spend_series()[("alice", "gpt-4o")] == (101, 22, 13, 0.75)
    assert m.spend_series()[("bob", "llama3")] == (7, 0, 1, None)
    text = m.to_prometheus()
    assert 'clasp_tokens_total{key="alice",model="gpt-4o",kind="input"} 101' in text
    assert 'clasp_tokens_total{key="alice",model="gpt-4o",kind="cached_input"} 22' in text
    assert 'clasp_tokens_total{key="alice",model="gpt-4o",kind="output"} 13' in text
    assert 'clasp_cost_usd_total{key="alice",model="gpt-4o"} 0.75' in text
    assert 'clasp_tokens_total{key="bob",model="llama3",kind="input"} 7' in text
    assert 'clasp_cost_usd_total{key="bob"' not in text                 # unpriced: no cost series at all
    assert 'clasp_tokens_total{key="bob",model="other",kind="input"}' in text
    assert text.count('kind="input"') <= 32 * 302


def test_day_and_month_follow_the_wall_clock_across_midnight_and_month_end():
    # the names are worked out once a day: each request still lands in its own UTC day and month
    midnight = 1801440000.0  # 2027-02-01T00:00:00Z
    wall = [midnight - 0.5]
    sl = SpendLedger(LocalStore(clock=lambda: 0.0), PriceTable(), wall=lambda: wall[0])
    seen = []
    for t in (midnight - 86400 * 3, midnight - 0.5, midnight - 1e-6, midnight, midnight + 86399.9,
              midnight + 86400, midnight - 0.25):
        wall[0] = t
        sl.record("alice", "local", "m", 1, 0, 1)
        seen.append(sl.day_and_month(t))
    assert seen == [("2027-01-29", "2027-01"), ("2027-01-31", "2027-01"), ("2027-01-31", "2027-01"),
                    ("2027-02-01", "2027-02"), ("2027-02-01", "2027-02"), ("2027-02-02", "2027-02"),
                    ("2027-01-31", "2027-01")]
    run(sl.flush())
    store = sl.store
    assert run(store.hmget("spend:key:day:2027-01-31:alice", ["requests"])) == [3.0]
    assert run(store.hmget("spend:key:day:2027-02-01:alice", ["requests"])) == [2.0]
    assert run(store.hmget("spend:key:month:2027-01:alice", ["requests"])) == [4.0]
    assert run(store.hmget("spend:month:2027-02", ["alice|local|m|requests"])) == [3.0]


def _requests():
    """(wall time, key, target, model, input, cached, output): over a midnight, priced and not."""
    midnight = 1801440000.0  # 2027-02-01T00:00:00Z
    out = []
    for i in range(60):
        t = midnight - 30 + i
        out.append((t, ("alice", "bob", "anonymous")[i % 3], ("openai", "local")[i % 2],
                    ("my-model", "llama3", "gpt-4o-2024-08-06")[i % 3], 1000 * i, 10 * (i % 4), 7 * i + 1))
    return out


def test_a_local_store_ends_up_with_what_a_per_request_write_gives():
    prices = PriceTable(parse_prices("my-model=1/0.1/2"))
    wall = [0.0]
    reference = SpendLedger(RecordingStore(clock=lambda: 0.0), prices, wall=lambda: wall[0])  # awaited per request
    summed = SpendLedger(LocalStore(clock=lambda: 0.0), prices, wall=lambda: wall[0])
    assert reference._book_now is None and summed._book_now is not None

    async def go():
        costs = ([], [])
        for t, key, target, model, inp, cached, out in _requests():
            wall[0] = t
            for ledger, got in zip((reference, summed), costs):
                got.append(ledger.record(key, target, model, inp, cached, out))
            assert not summed._pending                     # no task per request
            await reference.flush()                        # its task runs at once, as when serving
            for k in ("alice", "bob"):                     # budgets see every request, across midnight
                assert await summed.key_spend(k) == pytest.approx(await reference.key_spend(k), rel=1e-12)
        assert costs[0] == costs[1]
        await reference.flush()
        # what is read includes every request: budgets and /costs
        assert await summed.key_spend("alice") == pytest.approx(await reference.key_spend("alice"))
        assert (await summed.key_spend("alice"))[0] > 0
        assert await summed.report() == await reference.report()
        await summed.flush()

    run(go())
    names = {c[1] for c in reference.store.calls}
    assert len(names) == 17  # 2 days and 2 months of detail, since start, 3 keys x (2 days + 2 months)
    for name in names:
        a, b = run(reference.store.hgetall(name)), run(summed.store.hgetall(name))
        assert a.keys() == b.keys() and all(b[f] == pytest.approx(a[f], rel=1e-12) for f in a), name


def test_many_held_sums_are_written_before_they_grow_further():
    sl = SpendLedger(LocalStore(clock=lambda: 0.0), PriceTable(), wall=lambda: DAY1)
    for i in range(2500):
        sl.record(f"key-{i}", "local", "m", 1, 0, 1)
        assert len(sl._held) <= 1000
    assert run(sl.store.hmget("spend:all", ["key-1999|local|m|requests", "key-2000|local|m|requests"])) == [1.0, 0.0]
    run(sl.flush())
    assert not sl._held
    assert run(sl.store.hmget("spend:day:2027-01-31", ["key-0|local|m|requests", "key-2499|local|m|requests"])) \
        == [1.0, 1.0]
