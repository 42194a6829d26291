"""End to end through real sockets: client keys (limits, allowed models, budgets, expiry, reload),
spend in /costs and Prometheus, and the single-key mode unchanged.

client -> proxy (clasp.server.run.serve in-process) -> fake OpenAI-compatible upstream, all on loopback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import pytest

import promparse
from harness import Proxy, completion, json_reply, sse_reply, text_chunks

ALICE = "sk-alice-Hq83nVb2Lp"
BOB = "sk-bob-Wm51xTz7Kc"
CAROL = "sk-carol-Jd46rYe9Ua"      # disabled
DAVE = "sk-dave-Pf27sLo3Qi"        # expired
ERIN = "sk-erin-Gx94kNw6Tb"        # only in the file after a reload
SINGLE = "proxy-key-Q7fW2xLk9"     # CLASP_AUTH_API_KEY
SECRETS = (ALICE, BOB, CAROL, DAVE, ERIN, SINGLE)

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
HAIKU = {**HELLO, "model": "claude-haiku-4-5"}
COUNT = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "foo"}]}
# gpt-test: $1000 per million input tokens, $100 cached, $2000 output: a request is worth cents
PRICES = ["-prices", "gpt-test=1000/100/2000"]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hdr(key: str) -> dict:
    return {"x-api-key": key}


def write_keys(path, keys: list) -> str:
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


BASE_KEYS = [
    {"name": "alice", "key_sha256": sha(ALICE), "rate_limit": 2, "burst": 2},
    {"name": "bob", "key": BOB},
    {"name": "carol", "key": CAROL, "enabled": False},
    {"name": "dave", "key": DAVE, "expires": "2020-01-31"},
]


def start(proxies, lt, upstream, *argv, **env) -> Proxy:
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *argv], {"CUSTOM_BASE_URL": upstream.url, **env})
    proxies.append(p)
    return p


def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def get(p: Proxy, path: str, key: str | None = None) -> tuple[int, dict, bytes]:
    return p.request("GET", path, headers=hdr(key) if key else None)


def costs(p: Proxy, key: str) -> dict:
    status, _, raw = get(p, "/costs", key)
    assert status == 200, raw
    return json.loads(raw)


def requests_booked(p: Proxy, key: str, name: str) -> int:
    return costs(p, key)["today"].get(name, {}).get("requests", 0)


def assert_no_secrets(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a key leaked into {where}"
        assert sha(secret)[:16] not in text, f"a key's hash leaked into {where}"


# ------------------------------------------------------------------ who may come in

def test_keys_file_authenticates_and_refuses_disabled_expired_unknown(lt, upstream, proxies, tmp_path):
    p = start(proxies, lt, upstream, "-keys-file", write_keys(tmp_path / "keys.json", BASE_KEYS))
    assert p.post(HELLO, headers=hdr(BOB))[0] == 200
    assert p.post(HELLO, headers={"authorization": f"Bearer {BOB}"})[0] == 200
    for headers, message in [({}, "invalid or missing API key"), (hdr("sk-nobody-123456"), "invalid or missing API key"),
                             (hdr(CAROL), "API key 'carol' is disabled"),
                             (hdr(DAVE), "API key 'dave' expired on 2020-01-31")]:
        for method, path, body in [("POST", "/v1/messages", HELLO), ("POST", "/v1/messages/count_tokens", COUNT),
                                   ("GET", "/costs", None), ("GET", "/metrics", None)]:
            status, h, raw = p.request(method, path, body, headers=headers)
            err = json.loads(raw)
            assert (status, err["error"]["type"]) == (401, "authentication_error"), (path, headers)
            assert message in err["error"]["message"] and h["x-should-retry"] == "false"
            assert_no_secrets(raw.decode(), "a 401")
    assert len(upstream.requests) == 2
    assert p.request("GET", "/health")[0] == 200                     # anonymous as before


def test_per_key_rate_limit_with_retry_after_and_count_tokens_shares_it(lt, upstream, proxies, tmp_path):
    p = start(proxies, lt, upstream, "-keys-file", write_keys(tmp_path / "keys.json", BASE_KEYS))
    status, headers, _ = p.post(HELLO, headers=hdr(ALICE))
    assert status == 200 and headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    status, headers, _ = p.post(COUNT, path="/v1/messages/count_tokens", headers=hdr(ALICE))
    assert status == 200 and headers["anthropic-ratelimit-requests-remaining"] == "0"
    calls = len(upstream.requests)
    for path, body in [("/v1/messages", HELLO), ("/v1/messages", {**HELLO, "stream": True}),
                       ("/v1/messages/count_tokens", COUNT)]:
        status, headers, err = p.post(body, path=path, headers=hdr(ALICE))
        assert status == 429 and err["error"]["type"] == "rate_limit_error"
        assert "rate limit of 2 requests per minute for key 'alice' exceeded" in err["error"]["message"]
        assert 1 <= int(headers["retry-after"]) <= 30
        assert_no_secrets(json.dumps(err), "a 429")
    assert len(upstream.requests) == calls
    assert [p.post(HELLO, headers=hdr(BOB))[0] for _ in range(4)] == [200] * 4   # bob has no limit
    wait_for(lambda: p.log.getvalue().count(" key=bob") == 4, "bob's access lines")
    assert p.log.getvalue().count(" key=alice") == 3             # who sent what: the access log names the key


def test_model_allow_list_403_before_any_upstream_call(lt, upstream, proxies, tmp_path):
    keys = [{"name": "alice", "key": ALICE, "models": ["haiku", "custom,gpt-4o*"]},
            {"name": "bob", "key": BOB, "models": ["custom,gpt-test"]}]
    p = start(proxies, lt, upstream, "-keys-file", write_keys(tmp_path / "keys.json", keys), "-model-haiku", "gpt-4o-mini",
              "-model-sonnet", "gpt-test")
    assert p.post(HAIKU, headers=hdr(ALICE))[0] == 200
    for body in (HELLO, {**HELLO, "stream": True}):
        status, headers, err = p.post(body, headers=hdr(ALICE))
        assert status == 403 and err["error"]["type"] == "permission_error"
        assert err["error"]["message"].startswith("model 'claude-sonnet-4-5' is not allowed for key 'alice'")
        assert headers["x-should-retry"] == "false"
    assert p.post(HELLO, headers=hdr(BOB))[0] == 200                  # the route's provider,model
    assert p.post(HAIKU, headers=hdr(BOB))[0] == 403
    assert [s.json()["model"] for s in upstream.requests] == ["gpt-4o-mini", "gpt-test"]


# ------------------------------------------------------------------ spend

def test_budget_from_upstream_usage_then_402_not_retried(lt, upstream, proxies, tmp_path):
    keys = [{"name": "alice", "key": ALICE, "daily_budget_usd": 2.0}, {"name": "bob", "key": BOB}]
    p = start(proxies, lt, upstream, "-keys-file", write_keys(tmp_path / "keys.json", keys), *PRICES)
    # 1000 prompt tokens of which 400 cached, 100 output: 600*1000 + 400*100 + 100*2000 = $0.84 per request
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 400}}
    upstream.script = lambda seen: json_reply(completion(usage=usage))
    for n in (1, 2):
        assert p.post(HELLO, headers=hdr(ALICE))[0] == 200
        wait_for(lambda: requests_booked(p, BOB, "alice") == n, f"{n} requests booked")
    upstream.script = lambda seen: sse_reply(text_chunks(["a", "b"], usage=usage))
    assert p.post({**HELLO, "stream": True}, headers=hdr(ALICE))[0] == 200   # $1.68 < $2: allowed
    wait_for(lambda: requests_booked(p, BOB, "alice") == 3, "3 requests booked")
    calls = len(upstream.requests)
    for body in (HELLO, {**HELLO, "stream": True}):
        status, headers, err = p.post(body, headers=hdr(ALICE))
        assert status == 402 and err["error"]["type"] == "billing_error"
        assert err["error"]["message"] == ("daily budget of $2.00 for key 'alice' is spent ($2.52); "
                                           "resets at 00:00 UTC")
        assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    assert len(upstream.requests) == calls
    wait_for(lambda: p.log.getvalue().count(" key=alice") == 5, "alice's 5 access lines")
    assert p.log.getvalue().count(" cost_usd=0.84") == 3                # each answered request's cost
    upstream.script = lambda seen: json_reply(completion(usage=usage))
    assert p.post(HELLO, headers=hdr(BOB))[0] == 200                 # other keys are not affected
    c = costs(p, BOB)
    alice = c["today"]["alice"]
    assert alice["requests"] == 3 and alice["cost_usd"] == pytest.approx(2.52)
    assert (alice["input_tokens"], alice["cached_input_tokens"], alice["output_tokens"]) == (1800, 1200, 300)
    assert alice["models"]["gpt-test"]["targets"]["custom"]["requests"] == 3
    assert c["budgets"]["alice"]["daily"]["spent_usd"] == pytest.approx(2.52)
    assert c["budgets"]["alice"]["daily"]["remaining_usd"] == 0


def test_costs_and_prometheus_per_key_and_model_unknown_cost_is_null(lt, upstream, proxies, tmp_path):
    p = start(proxies, lt, upstream, "-keys-file", write_keys(tmp_path / "keys.json", BASE_KEYS), *PRICES,
              "-model-haiku", "local-llama")
    assert p.post(HELLO, headers=hdr(BOB))[0] == 200                 # gpt-test: 12 in, 5 out: $0.022
    assert p.post(HAIKU, headers=hdr(BOB))[0] == 200                 # local-llama: no price
    assert p.post(HELLO, headers=hdr(ALICE))[0] == 200
    wait_for(lambda: requests_booked(p, BOB, "bob") == 2, "bob's requests booked")
    wait_for(lambda: requests_booked(p, BOB, "alice") == 1, "alice's request booked")
    c = costs(p, ALICE)
    assert set(c) >= {"today", "this_month", "since_start", "budgets", "day", "month"}
    bob = c["today"]["bob"]
    assert bob["requests"] == 2 and bob["unpriced_requests"] == 1 and bob["cost_usd"] == pytest.approx(0.022)
    assert bob["models"]["local-llama"]["cost_usd"] is None and bob["models"]["local-llama"]["input_tokens"] == 12
    assert bob["models"]["gpt-test"]["cost_usd"] == pytest.approx(0.022)
    assert c["this_month"] == c["today"] and c["since_start"] == c["today"]
    fams = promparse.parse(p.request("GET", "/metrics/prometheus", headers=hdr(BOB))[2].decode())
    v = promparse.value
    assert v(fams, "clasp_tokens_total", key="bob", model="gpt-test", kind="input") == 12
    assert v(fams, "clasp_tokens_total", key="bob", model="gpt-test", kind="output") == 5
    assert v(fams, "clasp_tokens_total", key="bob", model="local-llama", kind="cached_input") == 0
    assert v(fams, "clasp_cost_usd_total", key="bob", model="gpt-test") == pytest.approx(0.022)
    assert v(fams, "clasp_cost_usd_total", key="alice", model="gpt-test") == pytest.approx(0.022)
    with pytest.raises(KeyError):
        v(fams, "clasp_cost_usd_total", key="bob", model="local-llama")
    assert get(p, "/costs")[0] == 401


def test_single_key_mode_unchanged_and_named_default(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", SINGLE, *PRICES)
    status, _, raw = p.request("POST", "/v1/messages", HELLO, headers=hdr("wrong"))
    assert status == 401 and json.loads(raw)["error"]["message"].startswith("invalid or missing API key")
    assert p.post(HELLO, headers=hdr(SINGLE))[0] == 200
    assert p.post(HELLO, headers={"authorization": f"Bearer {SINGLE}"})[0] == 200
    wait_for(lambda: requests_booked(p, SINGLE, "default") == 2, "2 requests booked")
    assert costs(p, SINGLE)["budgets"] == {}


def test_without_auth_spend_is_anonymous(lt, upstream, proxies):
    p = start(proxies, lt, upstream, *PRICES)
    assert p.post(HELLO)[0] == 200
    wait_for(lambda: requests_booked(p, "", "anonymous") == 1, "1 request booked")


# ------------------------------------------------------------------ reload and secrets

def test_reload_by_mtime_keeps_serving_and_broken_file_keeps_keys(lt, upstream, proxies, tmp_path, caplog):
    path = tmp_path / "keys.json"
    p = start(proxies, lt, upstream, "-keys-file", write_keys(path, BASE_KEYS), "-keys-check-interval", "0.05")
    assert p.post(HELLO, headers=hdr(BOB))[0] == 200
    write_keys(path, [*BASE_KEYS, {"name": "erin", "key": ERIN}])
    os.utime(path, ns=(1, 1))
    time.sleep(0.1)
    assert p.post(HELLO, headers=hdr(ERIN))[0] == 200
    with caplog.at_level(logging.WARNING, logger="clasp.keys"):
        path.write_text('{"keys": [{"name": "frank", "key": "sk-frank-secret-value"}, {"name": "bad"}]}')
        os.utime(path, ns=(2, 2))
        time.sleep(0.1)
        assert p.post(HELLO, headers=hdr(ERIN))[0] == 200              # the previous keys stay in force
        assert p.post(HELLO, headers=hdr("sk-frank-secret-value"))[0] == 401
    assert "keys entry #2 ('bad')" in caplog.text and "sk-frank-secret-value" not in caplog.text


def test_no_key_or_key_hash_in_logs_metrics_costs_or_errors(lt, upstream, proxies, tmp_path, caplog):
    keys = [*BASE_KEYS, {"name": "erin", "key": ERIN, "models": ["haiku"], "daily_budget_usd": 0}]
    with caplog.at_level(logging.DEBUG):
        p = start(proxies, lt, upstream, "-keys-file", write_keys(tmp_path / "keys.json", keys), *PRICES,
                  "-debug")
        bodies = []
        for key in SECRETS:
            for body in (HELLO, HAIKU, {**HELLO, "stream": True}):
                bodies.append(p.request("POST", "/v1/messages", body, headers=hdr(key))[2])
                bodies.append(p.request("POST", "/v1/messages", body,
                                        headers={"authorization": f"Bearer {key}"})[2])
        wait_for(lambda: requests_booked(p, BOB, "bob") >= 1, "bob booked")
        texts = {"responses": b"".join(bodies).decode(), "costs": get(p, "/costs", BOB)[2].decode(),
                 "metrics": get(p, "/metrics", BOB)[2].decode(),
                 "prometheus": get(p, "/metrics/prometheus", BOB)[2].decode(),
                 "proxy log": p.log.getvalue(), "python log": caplog.text}
    for where, text in texts.items():
        assert_no_secrets(text, where)
    assert "is not allowed for key 'erin'" in texts["responses"]


def test_sighup_reloads_the_keys_file_of_a_running_clasp(upstream, tmp_path):
    import signal
    import subprocess
    import urllib.request

    from harness import spawn_clasp

    path = tmp_path / "keys.json"
    write_keys(path, BASE_KEYS)
    proc, port = spawn_clasp(["-provider", "custom", "-model", "gpt-test", "-keys-file", str(path),
                              "-keys-check-interval", "3600"], {"CUSTOM_BASE_URL": upstream.url})

    def status(key: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", json.dumps(HELLO).encode(),
                                     {"content-type": "application/json", "x-api-key": key})
        try:
            return urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert status(BOB) == 200 and status(ERIN) == 401
        write_keys(path, [{"name": "erin", "key": ERIN}])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: status(ERIN) == 200, "erin's key after SIGHUP")
        assert status(BOB) == 401 and proc.poll() is None
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert b"reloaded: 1 keys" in err
    assert_no_secrets(err.decode(errors="replace"), "the process log")


def test_without_a_keys_file_sighup_still_stops_clasp(upstream):
    """SIGHUP means "reload" only when there is a keys file to reload: otherwise a proxy left in a
    closed terminal must stop, as it always did."""
    import signal

    from harness import spawn_clasp

    proc, _port = spawn_clasp(["-provider", "custom"], {"CUSTOM_BASE_URL": upstream.url})
    try:
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(15) == -signal.SIGHUP
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
