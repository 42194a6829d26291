from __future__ import annotations

import asyncio
import json
import math

import pytest

import promparse
from clasp.ops.cache import StoreCache
from clasp.ops.metrics import DURATION_BUCKETS, TTFT_BUCKETS, Metrics, go_duration
from clasp.store.local import LocalStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def filled_cache(clock: Clock, entries: int) -> StoreCache:
    """The proxy's response cache (StoreCache over a LocalStore of 1000 entries) holding `entries`."""
    store = LocalStore(clock=clock, cache_max_size=1000)
    for i in range(entries):
        asyncio.run(store.cache_put(f"k{i}", b"x", 3600))
    return StoreCache(store, 3600, 1000)


NASTY_MODEL = 'we"ird\\model\nname'


def realistic(clock: Clock) -> Metrics:
    m = Metrics(clock=clock)
    cache = filled_cache(clock, 42)
    m.set_sources(
        breakers=lambda: {"openai:gpt-4o": "closed", "openrouter:x": "half-open", 'odd"target\\': "open"},
        queue=lambda: {"depth": 3, "max_size": 100},
        cache=cache.stats,
    )
    for i in range(97):
        m.record_request("openai", "gpt-4o", 200, streaming=i % 4 != 0, tool_calls=i % 7 == 0,
                         latency_s=0.3 + (i % 5) * 0.4, ttft_s=(0.2 + (i % 3) * 0.1) if i % 4 else None,
                         input_tokens=1000, output_tokens=50, cache="hit" if i < 3 else None)
    m.record_request("openrouter", NASTY_MODEL, 200, streaming=True, tool_calls=1, latency_s=700.0,
                     ttft_s=90.0, input_tokens=10, output_tokens=5)
    m.record_request("openai", "gpt-4o", 429, latency_s=0.01, cache="miss")
    m.record_request("openai", "gpt-4o", 502, latency_s=1.0)
    m.record_upstream_error("openai", 429)
    m.record_upstream_error("openai", 500)
    m.record_upstream_error("openai", 500)
    m.record_upstream_error("openrouter", "timeout")
    m.record_retry("openai")
    m.record_retry("openai")
    m.record_fallback("openai:gpt-4o", "openrouter:x")
    clock.t += 330.0
    return m


def test_go_duration():
    assert go_duration(0) == "0s"
    assert go_duration(0.4) == "0s"
    assert go_duration(44.6) == "45s"
    assert go_duration(330) == "5m30s"
    assert go_duration(3600) == "1h0m0s"
    assert go_duration(3725) == "1h2m5s"
    assert go_duration(-3) == "0s"


def test_json_seed_shape_and_formatting():
    clock = Clock()
    m = Metrics(clock=clock)
    cache = filled_cache(clock, 42)
    m.set_sources(cache=cache.stats)
    # 100 requests: 98 successful, 75 streaming, 15 tool calls, average latency 523.5 ms.
    for i in range(100):
        status = 200 if i < 98 else 500
        m.record_request("openai", "gpt-4o", status, streaming=i < 75, tool_calls=1 if i < 15 else 0,
                         latency_s=0.5235, cache="hit" if i < 78 else "miss" if i < 100 else None)
    clock.t += 330
    j = m.to_json()
    assert j["requests"] == {"total": 100, "successful": 98, "errors": 2, "streaming": 75,
                             "tool_calls": 15, "success_rate": "98.00%"}
    assert j["performance"]["avg_latency_ms"] == "523.50"
    assert j["performance"]["requests_per_sec"] == "0.30"      # 100 / 330 s
    assert j["cache"] == {"enabled": True, "size": 42, "max_size": 1000, "hits": 78, "misses": 22,
                          "hit_rate": "78.00%"}
    assert j["uptime"] == "5m30s"
    json.dumps(j)   # serializable as is


def test_json_empty():
    j = Metrics(clock=Clock()).to_json()
    assert j["requests"]["success_rate"] == "0.00%"
    assert j["performance"] == {"avg_latency_ms": "0.00", "requests_per_sec": "0.00"}
    assert j["cache"] == {"enabled": False, "size": 0, "max_size": 0, "hits": 0, "misses": 0, "hit_rate": "0.00%"}
    assert j["uptime"] == "0s"
    assert j["circuit_breakers"] == {} and j["queue"] == {"enabled": False}


def test_json_extras():
    j = realistic(Clock()).to_json()
    assert j["tokens"]["openai"]["gpt-4o"] == {"requests": 99, "input_tokens": 97000, "output_tokens": 4850}
    assert j["tokens"]["openrouter"][NASTY_MODEL]["output_tokens"] == 5
    assert j["upstream_errors"] == {"429": 1, "500": 2, "timeout": 1}
    assert j["retries"] == 2 and j["fallbacks"] == 1
    assert j["circuit_breakers"] == {"openai:gpt-4o": "closed", "openrouter:x": "half_open", 'odd"target\\': "open"}
    assert j["queue"] == {"enabled": True, "depth": 3, "max_size": 100}
    assert j["requests"]["total"] == 100 and j["requests"]["errors"] == 2
    assert j["requests"]["success_rate"] == "98.00%"


def test_prometheus_output_parses_strictly():
    clock = Clock()
    text = realistic(clock).to_prometheus()
    fams = promparse.parse(text)
    v = promparse.value
    # Every family has HELP and TYPE.
    for fam in fams.values():
        assert fam.help, fam.name
    assert fams["clasp_requests_total"].type == "counter"
    assert v(fams, "clasp_requests_total", provider="openai", model="gpt-4o", status="200") == 97
    assert v(fams, "clasp_requests_total", provider="openai", model="gpt-4o", status="429") == 1
    # Label values with quotes, backslashes and newlines survive the round trip.
    assert v(fams, "clasp_requests_total", provider="openrouter", model=NASTY_MODEL, status="200") == 1
    assert v(fams, "clasp_tokens_total", provider="openai", model="gpt-4o", type="input") == 97000
    assert v(fams, "clasp_streaming_requests_total", provider="openai", model="gpt-4o") == 72
    assert v(fams, "clasp_tool_calls_total", provider="openai", model="gpt-4o") == 14
    assert v(fams, "clasp_upstream_errors_total", provider="openai", status="500") == 2
    assert v(fams, "clasp_upstream_errors_total", provider="openrouter", status="timeout") == 1
    assert v(fams, "clasp_retries_total", provider="openai") == 2
    assert v(fams, "clasp_fallbacks_total", **{"from": "openai:gpt-4o", "to": "openrouter:x"}) == 1
    assert v(fams, "clasp_cache_requests_total", result="hit") == 3
    assert v(fams, "clasp_cache_requests_total", result="miss") == 1
    assert v(fams, "clasp_cache_size") == 42
    assert v(fams, "clasp_cache_max_size") == 1000
    assert v(fams, "clasp_queue_depth") == 3
    assert v(fams, "clasp_uptime_seconds") == 330
    assert fams["clasp_uptime_seconds"].type == "gauge"
    assert v(fams, "clasp_circuit_breaker_state", target="openrouter:x", state="half_open") == 1
    assert v(fams, "clasp_circuit_breaker_state", target="openrouter:x", state="open") == 0
    assert v(fams, "clasp_circuit_breaker_state", target='odd"target\\', state="open") == 1


def test_prometheus_histograms():
    fams = promparse.parse(realistic(Clock()).to_prometheus())
    v = promparse.value
    dur = fams["clasp_request_duration_seconds"]
    assert dur.type == "histogram"
    les = [s.labels["le"] for s in dur.samples
           if s.name.endswith("_bucket") and s.labels["provider"] == "openai"]
    assert len(les) == len(DURATION_BUCKETS) + 1 and les[-1] == "+Inf"
    lab = {"provider": "openai", "model": "gpt-4o"}
    assert v(fams, "clasp_request_duration_seconds_count", **lab) == 99
    assert v(fams, "clasp_request_duration_seconds_bucket", le="0.1", **lab) == 1        # the 10 ms one
    assert v(fams, "clasp_request_duration_seconds_bucket", le="0.5", **lab) == 21       # + 20 at 0.3 s
    # 700 s is above the largest bound: only in +Inf.
    nasty = {"provider": "openrouter", "model": NASTY_MODEL}
    assert v(fams, "clasp_request_duration_seconds_bucket", le="600", **nasty) == 0
    assert v(fams, "clasp_request_duration_seconds_bucket", le="+Inf", **nasty) == 1
    assert v(fams, "clasp_request_duration_seconds_sum", **nasty) == 700
    ttft = {s.labels["le"] for s in fams["clasp_time_to_first_token_seconds"].samples if "le" in s.labels}
    assert len(ttft) == len(TTFT_BUCKETS) + 1
    assert v(fams, "clasp_time_to_first_token_seconds_count", **lab) == 72   # only those with a TTFT
    total = v(fams, "clasp_time_to_first_token_seconds_sum", **lab)
    assert math.isclose(total, sum(0.2 + (i % 3) * 0.1 for i in range(97) if i % 4), rel_tol=1e-9)


def test_prometheus_empty_is_valid():
    fams = promparse.parse(Metrics(clock=Clock()).to_prometheus())
    assert fams["clasp_requests_total"].samples == []
    assert promparse.value(fams, "clasp_uptime_seconds") == 0
    assert "clasp_cache_size" not in fams   # no cache registered


def test_sources_are_read_at_scrape_time():
    depth = [0]
    m = Metrics(clock=Clock())
    m.set_sources(queue=lambda: depth[0])
    assert m.to_json()["queue"] == {"enabled": True, "depth": 0}
    depth[0] = 7
    assert m.to_json()["queue"]["depth"] == 7
    assert promparse.value(promparse.parse(m.to_prometheus()), "clasp_queue_depth") == 7


def test_record_is_cheap_enough():
    # Many records of one label combination aggregate into one series (no per-call state growth).
    m = Metrics(clock=Clock())
    for i in range(50_000):
        m.record_request("openai", "gpt-4o", 200, True, 0, 0.5, 0.1, 10, 5, None)
    assert m.to_json()["requests"]["total"] == 50_000
    assert len(m._series) == 1 and len(m._requests) == 1


@pytest.mark.parametrize("state", ["OPEN", "Half-Open", "closed"])
def test_breaker_state_normalization(state):
    m = Metrics(clock=Clock())
    m.set_sources(breakers=lambda: {"t": state})
    fams = promparse.parse(m.to_prometheus())
    norm = state.lower().replace("-", "_")
    assert promparse.value(fams, "clasp_circuit_breaker_state", target="t", state=norm) == 1
    ones = [s for s in fams["clasp_circuit_breaker_state"].samples if s.value == 1]
    assert len(ones) == 1


# ---- the strict parser itself ------------------------------------------------------------------

GOOD = """\
# HELP a_total Things.
# TYPE a_total counter
a_total{x="1"} 3
a_total{x="q\\"b\\\\n\\n"} 4
# TYPE h histogram
h_bucket{le="0.5"} 1
h_bucket{le="1"} 2
h_bucket{le="+Inf"} 3
h_sum 2.5
h_count 3
# TYPE g gauge
g -1.5e3 1700000000000
"""


def test_parser_accepts_valid_input():
    fams = promparse.parse(GOOD)
    assert promparse.value(fams, "a_total", x='q"b\\n\n') == 4
    assert fams["a_total"].help == "Things."
    assert promparse.value(fams, "h_count") == 3
    assert promparse.value(fams, "g") == -1500


@pytest.mark.parametrize(
    "text,match",
    [
        ("a_total 1\n", "no # TYPE"),
        ("# HELP a_total x\na_total 1\n", "no # TYPE"),
        ("a_total 1\n# TYPE a_total counter\n", "no # TYPE"),
        ("# TYPE a_total counter\n# TYPE a_total counter\na_total 1\n", "second TYPE"),
        ("# TYPE a_total counter\n# HELP a_total x\n# HELP a_total y\na_total 1\n", "second HELP"),
        ("# TYPE a_total countr\na_total 1\n", "unknown type"),
        ("# TYPE a counter\na 1\n", "_total"),
        ("# TYPE a_total counter\na_total -1\n", "has value -1"),
        ("# TYPE a_total counter\na_total 1", "newline"),
        ("# TYPE a_total counter\na_total 1\r\n", "carriage return"),
        ("# TYPE a_total counter\na_total{1x=\"a\"} 1\n", "bad label name"),
        ("# TYPE a_total counter\na_total{x-y=\"a\"} 1\n", "after label"),
        ("# TYPE a_total counter\na_total{__x=\"a\"} 1\n", "reserved"),
        ("# TYPE a_total counter\na_total{x=\"a\",x=\"b\"} 1\n", "duplicate label"),
        ("# TYPE a_total counter\na_total{x=\"a\\t\"} 1\n", "bad escape in label"),
        ("# TYPE a_total counter\na_total{x=\"a\\\"} 1\n", "unterminated"),
        ("# TYPE a_total counter\na_total{x=a} 1\n", "after label"),
        ("# TYPE a_total counter\na_total{x=\"a\" y=\"b\"} 1\n", "expected , or"),
        ("# TYPE a_total counter\na_total{x=\"a\"}1\n", "whitespace before"),
        ("# TYPE a_total counter\na_total abc\n", "bad value"),
        ("# TYPE a_total counter\na_total 1 2 3\n", "value \\[timestamp\\]"),
        ("# TYPE a_total counter\na_total 1 1.5\n", "bad timestamp"),
        ("# TYPE 1a_total counter\n", "bad metric name"),
        ("# TYPE a_total counter\na_total 1\na_total 2\n", "duplicate series"),
        ("# TYPE a_total counter\n# TYPE g gauge\na_total{x=\"1\"} 1\ng 1\na_total{x=\"2\"} 1\n",
         "not contiguous"),
        ("# TYPE a_total counter\n# HELP a_total bad \\t escape\na_total 1\n", "bad escape in HELP"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
         "not cumulative"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\nh_sum 1\nh_count 1\n",
         "last bucket"),
        ("# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n"
         "h_count 1\n", "not increasing"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "_count differs"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\n", "missing _sum or _count"),
        ("# TYPE h histogram\nh_bucket 2\nh_sum 1\nh_count 2\n", "'le' must be"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum{le=\"1\"} 1\nh_count 2\n", "'le' must be"),
        ("# TYPE h histogram\nh 1\n", "bare sample"),
        ("# TYPE h histogram\nh_bucket{le=\"abc\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "bad le"),
    ],
)
def test_parser_rejects(text, match):
    with pytest.raises(promparse.PromParseError, match=match):
        promparse.parse(text)


def test_client_chosen_model_names_cannot_grow_series_without_bound() -> None:
    from clasp.ops.metrics import MAX_SERIES
    m = Metrics()
    for i in range(MAX_SERIES + 300):
        m.record_request("custom", f"model-{i}", 200, input_tokens=1)
    tokens = m.to_json()["tokens"]["custom"]
    assert len(tokens) == MAX_SERIES + 1
    assert tokens["other"]["requests"] == 300
    assert m.to_prometheus().count("model=\"other\"") > 0


def test_model_labels_are_cut_and_always_encodable() -> None:
    from clasp.ops.metrics import MAX_LABEL_CHARS
    m = Metrics()
    m.record_request("custom", "a" * 1_000_000, 200)
    m.record_request("custom", "a" * 2_000_000, 200)   # same cut prefix: the same series
    m.record_request("custom", "claude-\udc00\r\x00x", 200)
    tokens = m.to_json()["tokens"]["custom"]
    assert len(tokens) == 2
    assert all(len(name) <= MAX_LABEL_CHARS for name in tokens)
    assert tokens["a" * (MAX_LABEL_CHARS - 3) + "..."]["requests"] == 2
    assert "claude-???x" in tokens
    text = m.to_prometheus()
    text.encode("utf-8")                 # what /metrics/prometheus sends
    json.dumps(m.to_json(), ensure_ascii=False).encode("utf-8")
    promparse.parse(text)                # no raw CR or NUL either
    assert len(text) < 16 * 1024


def test_not_routed_and_other_never_take_a_model_slot() -> None:
    from clasp.ops.metrics import MAX_SERIES
    m = Metrics()
    for i in range(MAX_SERIES):
        m.record_request("custom", f"model-{i}", 200)
    m.record_request("-", "-", 400)
    m.record_request("custom", "one-too-many", 200)
    tokens = m.to_json()["tokens"]
    assert tokens["-"] == {"-": {"requests": 1, "input_tokens": 0, "output_tokens": 0}}
    assert set(tokens["custom"]) == {f"model-{i}" for i in range(MAX_SERIES)} | {"other"}


# ------------------------------------------------------------------------ a worker group's merge

def test_merged_snapshots_render_the_sum_of_the_processes():
    from clasp.ops.metrics import merge_snapshots, render_json, render_prometheus
    a, b = realistic(Clock()), realistic(Clock())
    b.record_request("openai", "gpt-4o", 200, latency_s=0.2, input_tokens=7)
    b.record_request("custom", "llama", 503, error_type="overloaded_error", error_message="later")
    b.active_streams = 4
    merged = merge_snapshots([a.snapshot(), b.snapshot()], uptime_s=10.0)
    one, j = a.to_json(), render_json(merged)
    assert j["requests"]["total"] == 2 * one["requests"]["total"] + 2
    assert j["requests"]["errors"] == 2 * one["requests"]["errors"] + 1
    assert j["tokens"]["openai"]["gpt-4o"]["input_tokens"] == 2 * one["tokens"]["openai"]["gpt-4o"]["input_tokens"] + 7
    assert j["latency"]["count"] == 2 * one["latency"]["count"] + 2
    assert j["upstream_errors"] == {k: 2 * v for k, v in one["upstream_errors"].items()}
    assert j["retries"] == 4 and j["fallbacks"] == 2
    assert j["cache"]["hits"] == 6 and j["queue"]["depth"] == 6 and j["active"]["streams"] == 4
    assert j["circuit_breakers"]["openrouter:x"] == "half_open" and j["uptime_s"] == 10.0
    assert j["errors"]["recent"][-1]["message"] == "later"
    fams = promparse.parse(render_prometheus(merged))
    single = promparse.parse(a.to_prometheus())
    assert promparse.value(fams, "clasp_requests_total", provider="openai", model="gpt-4o", status="200") == \
        2 * promparse.value(single, "clasp_requests_total", provider="openai", model="gpt-4o", status="200") + 1
    assert promparse.value(fams, "clasp_requests_total", provider="custom", model="llama", status="503") == 1
    assert promparse.value(fams, "clasp_uptime_seconds") == 10.0


def test_merged_counters_only_grow_while_processes_record_and_exit():
    from clasp.ops.metrics import merge_snapshots, render_prometheus
    procs = [Metrics(clock=Clock()) for _ in range(3)]
    last: dict[int, dict] = {}       # what a parent keeps: the last snapshot of each process
    previous: dict[tuple, float] = {}
    recorded = 0
    for step in range(40):
        i = step % 3
        if i == 2 and step > 20:     # the third process has exited: it records nothing more
            i = 0
        m = procs[i]
        m.record_request("openai", f"m{step % 4}", 200 if step % 5 else 500, streaming=step % 2 == 0,
                         latency_s=step / 10, ttft_s=0.1, input_tokens=step)
        m.record_upstream_error("openai", 500)
        recorded += 1
        last[i] = m.snapshot()
        exited = last.get(2) if step > 20 else None
        merged = merge_snapshots(list(last.values()), uptime_s=step, live=lambda s: s is not exited)
        fams = promparse.parse(render_prometheus(merged))
        for fam in fams.values():
            if fam.type not in ("counter", "histogram"):
                continue
            for sample in fam.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                assert sample.value >= previous.get(key, 0), key
                previous[key] = sample.value
        assert merged["counters"]["total"] == recorded
