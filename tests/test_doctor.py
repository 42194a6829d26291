"""`python -m clasp doctor`: a readable verdict per check against working and broken upstreams."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import FakeUpstream, Reply, completion, free_port, json_reply, sse_reply, text_chunks

from clasp import cli
from clasp.ops.doctor import CLAUDE_CODE_PROMPT_TOKENS, Check, Report, format_json, format_text

ROOT = Path(__file__).resolve().parent.parent
FAKE_KEY = "sk-doctorFAKEkey-0123456789abcdefXYZ"
TOOL_CALL = [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]


def working(seen) -> Reply:
    """An OpenAI-compatible server that does everything right."""
    if seen.method == "GET" and seen.target.endswith("/models"):
        return json_reply({"object": "list", "data": [{"id": "m1", "object": "model"}]})
    if seen.method != "POST":
        return json_reply({"error": {"message": "not found"}}, 404)
    body = seen.json()
    if body.get("stream"):
        return sse_reply(text_chunks(["OK"]))
    if body.get("tools"):
        return json_reply(completion(None, tool_calls=TOOL_CALL, finish="tool_calls"))
    return json_reply(completion("OK"))


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no config file, no proxy, no keys but the ones a test sets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.startswith(("CLASP_", "OPENAI_", "CUSTOM_", "OPENROUTER_",
                                                                  "AZURE_")) or name == "PROVIDER":
            monkeypatch.delenv(name)
    return monkeypatch


def doctor(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["doctor", "-provider", "custom", "-model", "m1", *args])
    out, err = capsys.readouterr()
    return code, out + err


def lines(text: str) -> dict[str, str]:
    """check name -> its verdict line (the last one of that name)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"  (OK|WARN|FAIL|SKIP)\s+(\S.*?)\s{2,}", line)
        if m:
            out[m.group(2)] = line
    return out


def test_a_working_upstream_passes_every_check_and_exits_0(lt, env, capsys):
    up = FakeUpstream(lt, working)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        env.setenv("CUSTOM_API_KEY", FAKE_KEY)
        code, out = doctor(capsys)
    finally:
        up.close()
    assert code == 0, out
    verdicts = re.findall(r"^  (OK|WARN|FAIL|SKIP) (?!\s*web search)", out, re.M)
    assert verdicts and set(verdicts) == {"OK"}, out
    assert lines(out)["web search"].startswith("  WARN"), out  # a custom server has no web search
    for name in ("opus", "sonnet", "haiku", "proxy", "dns", "tcp", "key", "server kind", "listed",
                 "completion", "streaming", "tool call", "reasoning", "context window"):
        assert name in lines(out), (name, out)
    assert "sonnet            -> custom: model m1 at http://127.0.0.1" in out
    assert "(sends 1 request)" in lines(out)["completion"]
    assert "primary path works" in out
    assert FAKE_KEY not in out
    # the requests were clasp's own translation, as small as possible
    posts = [s.json() for s in up.requests if s.method == "POST"]
    assert posts[0]["max_tokens"] == 1 and posts[0]["model"] == "m1"
    assert posts[1]["stream"] is True and posts[1]["stream_options"] == {"include_usage": True}
    assert posts[2]["tool_choice"]["function"]["name"] == "get_weather"
    assert all(s.headers["authorization"] == f"Bearer {FAKE_KEY}" for s in up.requests)


def test_a_rejected_key_fails_naming_the_variable_never_the_key(lt, env, capsys):
    up = FakeUpstream(lt, lambda seen: json_reply(
        {"error": {"message": f"Incorrect API key provided: {FAKE_KEY}"}}, 401))
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        env.setenv("CUSTOM_API_KEY", FAKE_KEY)
        code, out = doctor(capsys)
        code_json, out_json = doctor(capsys, "--json")
    finally:
        up.close()
    assert code == 1 and code_json == 1, out
    assert lines(out)["key"].startswith("  FAIL"), out
    assert "fix: check CUSTOM_API_KEY" in out
    assert FAKE_KEY not in out and FAKE_KEY not in out_json
    assert FAKE_KEY[3:20] not in out + out_json
    assert "does NOT work" in out


def test_an_unreachable_port_fails_quickly_with_a_connection_message(env, capsys):
    env.setenv("CUSTOM_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    code, out = doctor(capsys)
    assert code == 1
    tcp = lines(out)["tcp"]
    assert tcp.startswith("  FAIL") and "Connection refused" in tcp, out
    assert "fix: is the server running" in out
    assert "completion" not in lines(out)  # nothing more is tried on a dead target


def test_a_server_rejecting_stream_options_warns_with_the_flag(lt, env, capsys):
    def script(seen):
        if seen.method == "POST" and "stream_options" in seen.json():
            return json_reply({"error": {"message": "Unrecognized request argument supplied: stream_options"}}, 400)
        return working(seen)
    up = FakeUpstream(lt, script)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code, out = doctor(capsys)
    finally:
        up.close()
    assert code == 0, out
    stream = lines(out)["streaming"]
    assert stream.startswith("  WARN") and "stream_options" in stream and "(sends 2 requests)" in stream, out
    assert "fix: set CLASP_MODEL_FLAGS=no_stream_options" in out


def test_a_model_answering_a_forced_tool_with_text_says_claude_code_cannot_use_tools(lt, env, capsys):
    def script(seen):
        if seen.method == "POST" and seen.json().get("tools"):
            return json_reply(completion("It is sunny in Paris."))
        return working(seen)
    up = FakeUpstream(lt, script)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code, out = doctor(capsys)
    finally:
        up.close()
    assert code == 0, out  # the primary path works; tools are a warning
    assert lines(out)["tool call"].startswith("  WARN"), out
    assert "Claude Code cannot use tools on this model" in out


def test_llama_cpp_with_a_small_context_is_recognised_and_gets_the_settings(lt, env, capsys):
    up = FakeUpstream(lt, working)
    up.probe_script = lambda seen: (
        json_reply({"default_generation_settings": {"n_ctx": 8192}}, headers=[("server", "llama.cpp")])
        if seen.target.endswith("/props") else json_reply({}, 404))
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code, out = doctor(capsys)
    finally:
        up.close()
    assert code == 0, out
    assert "llama.cpp" in lines(out)["server kind"] and "string_tool_choice" in out, out
    ctx = lines(out)["context window"]
    assert ctx.startswith("  WARN") and "8192 tokens" in ctx, out
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW=" in out and "CLASP_MODEL_FLAGS=max_output_cap=" in out
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS=" in out and str(CLAUDE_CODE_PROMPT_TOKENS) in out
    # forced tools go as a string to llama.cpp, as the proxy sends them
    tool_post = [s.json() for s in up.requests if s.method == "POST" and s.json().get("tools")][0]
    assert tool_post["tool_choice"] == "required"


def test_json_prints_the_same_report_for_scripts(lt, env, capsys):
    up = FakeUpstream(lt, working)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        env.setenv("CUSTOM_API_KEY", FAKE_KEY)
        code, out = doctor(capsys, "--json")
    finally:
        up.close()
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["exit_code"] == 0 and data["config_error"] is None
    names = [c["name"] for c in data["checks"]]
    assert {"tcp", "key", "completion", "streaming", "tool call"} <= set(names)
    for c in data["checks"]:
        assert set(c) == {"target", "section", "name", "verdict", "detail", "fix", "requests", "primary"}
        assert c["verdict"] in ("OK", "WARN", "FAIL", "SKIP")
    assert FAKE_KEY not in out


def test_a_key_in_the_url_is_never_shown(lt, env, capsys):
    up = FakeUpstream(lt, working)
    try:
        env.setenv("CUSTOM_BASE_URL", f"http://user:{FAKE_KEY}@127.0.0.1:{up.port}/v1?api-key={FAKE_KEY}")
        code, out = doctor(capsys)
    finally:
        up.close()
    assert FAKE_KEY not in out and "127.0.0.1" in out


def test_a_configuration_error_exits_2_as_the_server_does(env, capsys):
    code, out = doctor(capsys, "-provider", "openai")  # no OPENAI_API_KEY
    assert code == 2
    assert "OPENAI_API_KEY" in out


def test_report_formatting_is_pure_and_names_failures():
    report = Report([Check("", "configuration", "sonnet", "OK", "-> openai: model gpt-4o"),
                     Check("openai", "auth", "key", "FAIL", "rejected", "check OPENAI_API_KEY", 1, True)])
    text = format_text(report)
    assert "  FAIL  key               rejected (sends 1 request)" in text
    assert "fix: check OPENAI_API_KEY" in text and report.exit_code == 1
    assert json.loads(format_json(report))["checks"][1]["fix"] == "check OPENAI_API_KEY"


def test_python_m_clasp_doctor_runs_as_a_command_and_help_mentions_it():
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent-clasp-test-home", "PYTHONPATH": str(ROOT),
           "CUSTOM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    proc = subprocess.run([sys.executable, "-m", "clasp", "doctor", "-provider", "custom", "-model", "x"],
                          env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 1 and "FAIL  tcp" in proc.stdout, proc.stdout + proc.stderr
    helptext = subprocess.run([sys.executable, "-m", "clasp", "-help"], env=env, capture_output=True,
                              text=True, timeout=60, cwd="/").stdout
    assert "python -m clasp doctor" in helptext


def _tls_upstream(lt) -> FakeUpstream:
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(ROOT / "tests" / "certs" / "server.pem"), str(ROOT / "tests" / "certs" / "server.key"))
    return FakeUpstream(lt, working, ssl_context=ctx)


def test_a_certificate_from_an_unknown_ca_fails_and_suggests_ssl_cert_file(lt, env, capsys):
    up = _tls_upstream(lt)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        env.delenv("SSL_CERT_FILE", raising=False)  # the system's CAs: the test CA is not among them
        env.delenv("SSL_CERT_DIR", raising=False)
        code, out = doctor(capsys)
        env.setenv("SSL_CERT_FILE", str(ROOT / "tests" / "certs" / "ca.pem"))
        code_trusted, out_trusted = doctor(capsys)
    finally:
        up.close()
    assert code == 1, out
    tls = lines(out)["tls"]
    assert tls.startswith("  FAIL") and "unknown CA" in tls, out
    assert "SSL_CERT_FILE" in out
    assert code_trusted == 0 and lines(out_trusted)["tls"].startswith("  OK"), out_trusted


def test_the_proxy_in_use_is_named_and_used_as_the_client_uses_it(lt, env, capsys):
    up = FakeUpstream(lt, working)  # answers absolute-form requests as a forward proxy would
    try:
        env.setenv("CUSTOM_BASE_URL", "http://upstream.invalid:8000/v1")
        env.setenv("HTTP_PROXY", f"http://user:{FAKE_KEY}@127.0.0.1:{up.port}")
        code, out = doctor(capsys)
    finally:
        up.close()
    assert code == 0, out
    assert f"HTTP_PROXY in use: http://127.0.0.1:{up.port}" in lines(out)["proxy"], out
    assert up.requests[0].target == "http://upstream.invalid:8000/v1/models"
    assert FAKE_KEY not in out


def test_vllm_reports_its_context_through_models(lt, env, capsys):
    def script(seen):
        if seen.method == "GET" and seen.target.endswith("/models"):
            return json_reply({"data": [{"id": "m1", "max_model_len": 4096}]})
        return working(seen)
    up = FakeUpstream(lt, script)
    up.probe_script = lambda seen: (json_reply({"version": "0.6.3"}) if seen.target.endswith("/version")
                                    else json_reply({}, 404))
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code, out = doctor(capsys)
    finally:
        up.close()
    assert code == 0
    assert "vLLM" in lines(out)["server kind"], out
    assert lines(out)["context window"].startswith("  WARN") and "4096 tokens" in out


def test_a_responses_dialect_route_is_checked_over_v1_responses(lt, env, capsys):
    def script(seen):
        if seen.method == "GET" and seen.target.endswith("/models"):
            return json_reply({"data": [{"id": "m1"}]})
        if not seen.target.endswith("/v1/responses"):
            return json_reply({"error": {"message": "wrong endpoint"}}, 404)
        body = seen.json()
        if body.get("stream"):
            return sse_reply(["event: response.completed\ndata: {\"type\": \"response.completed\"}\n\n"],
                             done=False)
        item = ({"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"}
                if body.get("tools") else {"type": "message", "role": "assistant",
                                           "content": [{"type": "output_text", "text": "OK"}]})
        return json_reply({"id": "r1", "object": "response", "status": "completed", "output": [item]})
    up = FakeUpstream(lt, script)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code, out = doctor(capsys, "-openai-api", "responses")
    finally:
        up.close()
    assert code == 0, out
    assert "(responses dialect)" in out and "/v1/responses" in out
    assert set(re.findall(r"^  (OK|WARN|FAIL|SKIP) (?!\s*web search)", out, re.M)) == {"OK"}, out


def test_no_model_configured_is_a_warning_with_the_setting(lt, env, capsys):
    up = FakeUpstream(lt, working)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code = cli.main(["doctor", "-provider", "custom"])
        out = capsys.readouterr().out
    finally:
        up.close()
    assert code == 0, out
    assert lines(out)["sonnet"].startswith("  WARN") and "fix: set -model / CLASP_MODEL" in out, out


def test_a_bad_model_flag_is_a_configuration_error_as_for_the_server(env, capsys):
    env.setenv("CUSTOM_BASE_URL", "http://127.0.0.1:9/v1")
    code, out = doctor(capsys, "-model-flags", "no_such_flag")
    assert code == 2 and "CLASP_MODEL_FLAGS" in out and "no_such_flag" in out


def test_redis_reachability_is_checked_and_its_password_never_shown(lt, env, capsys):
    from fakeredis import FakeRedis
    password = "doctor-Redis-pw-41"
    redis = FakeRedis(password=password)
    port = lt.run(redis.start())
    up = FakeUpstream(lt, working)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        env.setenv("CLASP_REDIS_URL", f"redis://:{password}@127.0.0.1:{port}/2")
        code, out = doctor(capsys)
        assert code == 0 and "OK" in lines(out)["shared state"], out
        assert f"redis://127.0.0.1:{port}/2 answers" in out
        env.setenv("CLASP_REDIS_URL", f"redis://:wrong-{password}@127.0.0.1:{port}/2")
        code, out = doctor(capsys)                        # fail-open: a warning, Claude Code still works
        assert code == 0 and "WARN" in lines(out)["shared state"] and "WRONGPASS" in out, out
        lt.run(redis.stop())
        code, out = doctor(capsys, "-redis-fail-closed")  # fail-closed: nothing would be admitted
        assert code == 1 and "FAIL" in lines(out)["shared state"], out
        assert password not in out
    finally:
        up.close()
        lt.run(redis.stop())


def _search_line(*argv: str, **env: str) -> Check:
    """The doctor's web-search line for a configuration (a pure check: nothing is sent)."""
    from clasp.config import load_config
    from clasp.ops.doctor import Doctor
    cfg, _ = load_config(list(argv), {"HOME": "/nonexistent", **env})
    checker = Doctor(cfg, {})
    checker.check_web_search()
    found = [c for c in checker.report.checks if c.name == "web search"]
    assert len(found) == 1, checker.report.checks
    return found[0]


def test_web_search_names_where_searches_go_and_warns_when_nowhere():
    configured = _search_line("-provider", "custom", "-model", "m1", "-web-search", "openai,gpt-5-mini",
                              CUSTOM_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY=FAKE_KEY)
    assert configured.verdict == "OK" and "-web-search" in configured.detail
    assert "openai: model gpt-5-mini at https://api.openai.com/v1/responses" in configured.detail
    own = _search_line("-provider", "openai", "-model", "gpt-4o", OPENAI_API_KEY=FAKE_KEY)
    assert own.verdict == "OK" and "own" in own.detail
    assert "openai: model gpt-4o at https://api.openai.com/v1/responses" in own.detail
    router = _search_line("-provider", "openrouter", "-model", "openai/gpt-4o-mini", OPENROUTER_API_KEY=FAKE_KEY)
    assert router.verdict == "OK" and "own" in router.detail and "openrouter: model openai/gpt-4o-mini" in router.detail
    nowhere = _search_line("-provider", "custom", "-model", "m1", CUSTOM_BASE_URL="http://127.0.0.1:9/v1")
    assert nowhere.verdict == "WARN" and not nowhere.primary  # Claude Code still works, without WebSearch
    assert nowhere.detail.startswith("unavailable (set -web-search / CLASP_WEB_SEARCH)")
    assert "custom model 'm1' has no native web search" in nowhere.detail and "CLASP_WEB_SEARCH" in nowhere.fix
    other_host = _search_line("-provider", "openai", "-model", "gpt-4o", OPENAI_API_KEY=FAKE_KEY,
                              OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert other_host.verdict == "WARN" and "127.0.0.1 is not api.openai.com" in other_host.detail


def test_web_search_per_tier_when_the_tiers_differ():
    line = _search_line("-provider", "custom", "-model", "m1", "-multi-provider", CUSTOM_BASE_URL="http://127.0.0.1:9/v1",
                        CLASP_OPUS_PROVIDER="openrouter", CLASP_OPUS_MODEL="openai/gpt-4o", OPENROUTER_API_KEY=FAKE_KEY)
    assert line.verdict == "WARN"
    assert line.detail.startswith("opus: -> opus:openrouter: model openai/gpt-4o"), line.detail
    assert "sonnet, haiku: unavailable (set -web-search / CLASP_WEB_SEARCH)" in line.detail


def test_the_web_search_line_is_in_the_run_and_a_bad_target_is_a_configuration_error(lt, env, capsys):
    up = FakeUpstream(lt, working)
    try:
        env.setenv("CUSTOM_BASE_URL", up.url)
        code, out = doctor(capsys, "--json")
    finally:
        up.close()
    assert code == 0, out
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["web search"]["verdict"] == "WARN" and checks["web search"]["section"] == "configuration"
    code, out = doctor(capsys, "-web-search", "custom,m1")
    assert code == 2 and "no native web search" in out
