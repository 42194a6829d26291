"""bench/run.py runs end to end (smoke mode) and reports every figure; no timing assertions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_every_scenario_and_reports_all_fields():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json",
                           "--scenarios", "whole,stream,ttfb,big,idle,slow,long,startup"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    whole = r["whole"]
    assert [w["concurrency"] for w in whole] == [1, 16]
    for w in whole:
        assert w["proxy"]["rps"] > 0 and w["direct"]["rps"] > 0
        assert w["proxy"]["p50_ms"] > 0 and w["proxy"]["p99_ms"] >= w["proxy"]["p50_ms"]
        assert w["proxy"]["cpu_s_per_1000"] >= 0
    stream = r["stream"]["c1"]
    # every upstream chunk came back as an event (plus message_start, ping, block start/stop, ...)
    assert stream["proxy"]["events"] >= r["stream"]["chunks_per_stream"] * 4
    assert stream["proxy"]["cpu_us_per_event"] >= 0
    assert r["ttfb"]["proxy"]["ttfb_p50_ms"] > 0 and r["ttfb"]["direct"]["ttfb_p50_ms"] > 0
    assert r["big"]["body_bytes"] > 1_000_000 and r["big"]["proxy"]["cpu_ms_per_request"] >= 0
    assert r["idle_rss_start_mib"] > 0 and r["idle_rss_after_load_mib"] > 0
    assert r["slow"]["completed"] == r["slow"]["streams"]       # no slow stream was lost
    assert r["slow"]["peak_rss_mib"] >= r["slow"]["rss_before_mib"] > 0
    assert r["long"]["events"] >= r["long"]["chunks"]
    assert r["startup"]["source"]["p50_ms"] > 0


def test_bench_table_has_the_documented_rows():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--scenarios", "whole,idle"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needle in ("non-stream 50KB c=1: req/s", "latency p50 ms", "proxy CPU ms/request", "idle RSS"):
        assert needle in proc.stdout


def test_bench_rejects_unknown_scenarios():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--scenarios", "nope"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr


def test_bench_configs_keys_and_limits_serve_every_request():
    # --config keys: every request carries the keys file's key (a 401 or 429 would stop the run)
    for config in ("keys", "limits"):
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", "--scenarios",
                               "whole", "--config", config], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout)
        assert r["config"] == config and all(w["proxy"]["rps"] > 0 for w in r["whole"])
