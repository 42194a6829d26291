"""End to end through real sockets: client -> proxy -> fake upstream, non-streaming path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import FakeUpstream, LoopThread, Proxy, Reply, completion, json_reply

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "claude-code"


def custom_proxy(lt, upstream, *argv, **env):
    return Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *argv],
                 {"CUSTOM_BASE_URL": upstream.url, **env})


@pytest.fixture
def proxy(lt, upstream):
    p = custom_proxy(lt, upstream)
    yield p
    p.stop()


HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}


def test_text_message_shape(proxy, upstream):
    status, headers, msg = proxy.post(HELLO)
    assert status == 200
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["id"].startswith("msg_")
    assert msg["model"] == "claude-sonnet-4-5"          # the name the client asked for
    assert msg["content"] == [{"type": "text", "text": "Hello!"}]
    assert msg["stop_reason"] == "end_turn" and "stop_sequence" in msg and msg["stop_sequence"] is None
    assert msg["usage"]["input_tokens"] == 12 and msg["usage"]["output_tokens"] == 5
    assert headers["x-clasp-provider"] == "custom"
    assert headers["request-id"].startswith("req_")
    sent = upstream.requests[-1]
    assert sent.target == "/v1/chat/completions"
    body = sent.json()
    assert body["model"] == "gpt-test"
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 100


def test_tool_use_with_parsed_input(proxy, upstream):
    upstream.script = lambda seen: json_reply(completion(None, tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path": "a.py"}'}}],
        finish="tool_calls"))
    body = {**HELLO, "tools": [{"name": "Read", "description": "read",
                                "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]}
    status, _, msg = proxy.post(body)
    assert status == 200
    assert msg["content"] == [{"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "a.py"}}]
    assert msg["stop_reason"] == "tool_use"
    sent = upstream.requests[-1].json()
    assert sent["tools"][0]["function"]["name"] == "Read"


def test_client_keys_are_not_forwarded_and_no_anthropic_headers(proxy, upstream):
    proxy.post(HELLO, headers={"x-api-key": "sk-ant-client", "authorization": "Bearer sk-ant-client",
                               "anthropic-version": "2023-06-01", "anthropic-beta": "x",
                               "x-claude-code-session-id": "abc"})
    sent = upstream.requests[-1].headers
    assert "x-api-key" not in sent and "authorization" not in sent   # custom without CUSTOM_API_KEY
    assert not any(k.startswith("anthropic-") or k == "x-claude-code-session-id" for k in sent)


@pytest.mark.parametrize("provider, env, path, auth_header, auth_value", [
    ("openai", {"OPENAI_API_KEY": "sk-openai"}, "/v1/chat/completions", "authorization", "Bearer sk-openai"),
    ("openrouter", {"OPENROUTER_API_KEY": "sk-or", "OPENROUTER_HTTP_REFERER": "https://x.example",
                    "OPENROUTER_X_TITLE": "clasp"}, "/v1/chat/completions", "authorization", "Bearer sk-or"),
    ("custom", {"CUSTOM_API_KEY": "ck"}, "/v1/chat/completions", "authorization", "Bearer ck"),
    ("azure", {"AZURE_API_KEY": "az-key", "AZURE_DEPLOYMENT_NAME": "my-gpt4"},
     "/openai/deployments/my-gpt4/chat/completions?api-version=2024-02-15-preview", "api-key", "az-key"),
])
def test_provider_url_and_auth_conventions(lt, upstream, provider, env, path, auth_header, auth_value):
    base = f"http://127.0.0.1:{upstream.port}"
    env = dict(env)
    if provider == "azure":
        env["AZURE_OPENAI_ENDPOINT"] = base
    elif provider == "openai":
        env["OPENAI_BASE_URL"] = base + "/v1"
    elif provider == "openrouter":
        env["OPENROUTER_BASE_URL"] = base + "/v1"
    else:
        env["CUSTOM_BASE_URL"] = base + "/v1"
    p = Proxy(lt, ["-provider", provider], env)
    try:
        status, headers, msg = p.post(HELLO)
    finally:
        p.stop()
    assert status == 200, msg
    seen = upstream.requests[-1]
    assert seen.target == path
    assert seen.headers[auth_header] == auth_value
    if provider == "openrouter":
        assert seen.headers["http-referer"] == "https://x.example" and seen.headers["x-title"] == "clasp"
    if provider == "openai":
        assert seen.json()["model"] == "gpt-4o"   # default for claude-* names without -model
    assert headers["x-clasp-provider"] == provider


def test_tier_models(lt, upstream):
    p = Proxy(
        lt, ["-provider", "custom", "-model", "base-model"],
        {"CUSTOM_BASE_URL": upstream.url, "CLASP_MODEL_HAIKU": "small-model", "CLASP_MODEL_OPUS": "big-model"})
    try:
        for requested, expected in [("claude-haiku-4-5", "small-model"), ("claude-opus-4-1[1m]", "big-model"),
                                    ("claude-sonnet-4-5", "base-model"), ("gpt-4o", "gpt-4o")]:
            status, _, msg = p.post({**HELLO, "model": requested})
            assert status == 200 and msg["model"] == requested
            assert upstream.requests[-1].json()["model"] == expected
    finally:
        p.stop()


@pytest.mark.parametrize("up_status, up_body, status, etype, should_retry", [
    (400, {"error": {"message": "bad thing", "type": "invalid_request_error"}}, 400, "invalid_request_error", "false"),
    (401, {"error": {"message": "Incorrect API key"}}, 401, "authentication_error", "false"),
    (403, {"error": {"message": "nope"}}, 403, "permission_error", "false"),
    (404, {"error": {"message": "The model `x` does not exist"}}, 404, "not_found_error", "false"),
    (429, {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}, 429, "rate_limit_error", None),
    (500, {"error": {"message": "boom"}}, 500, "api_error", None),
    (503, {"error": {"message": "overloaded"}}, 529, "overloaded_error", None),
])
def test_upstream_errors_are_mapped(lt, upstream, up_status, up_body, status, etype, should_retry):
    upstream.script = lambda seen: json_reply(up_body, status=up_status)
    p = custom_proxy(lt, upstream, "-max-retries", "0")
    try:
        got, headers, body = p.post(HELLO)
    finally:
        p.stop()
    assert got == status
    assert body["type"] == "error" and body["error"]["type"] == etype
    assert "custom" in body["error"]["message"]
    assert headers.get("x-should-retry") == should_retry


def test_context_overflow_rewritten_for_claude_code(proxy, upstream):
    upstream.script = lambda seen: json_reply({"error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in "
                   "12000 tokens.", "code": "context_length_exceeded"}}, status=400)
    status, _, body = proxy.post(HELLO)
    assert status == 400
    assert body["error"]["message"].startswith("prompt is too long: 12000 tokens > 8192 maximum")


def test_connection_refused_is_502_api_error(lt):
    p = Proxy(lt, ["-provider", "custom", "-max-retries", "0"], {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})
    try:
        status, _, body = p.post(HELLO)
        metrics = json.loads(p.request("GET", "/metrics")[2])
    finally:
        p.stop()
    assert status == 502 and body["error"]["type"] == "api_error"
    assert metrics["upstream_errors"] == {"connect": 1}   # transport failures are counted too


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
    (json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5}).encode(), "messages"),
])
def test_malformed_requests_never_reach_upstream(proxy, upstream, body, fragment):
    before = len(upstream.requests)
    status, headers, raw = proxy.request("POST", "/v1/messages", body)
    data = json.loads(raw)
    assert status == 400 and data["error"]["type"] == "invalid_request_error"
    assert fragment in data["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert len(upstream.requests) == before


def test_endpoints(proxy):
    status, _, raw = proxy.request("GET", "/")
    info = json.loads(raw)
    assert status == 200 and info["name"] == "clasp" and "version" in info and info["provider"] == "custom"
    assert proxy.request("HEAD", "/")[0] == 200
    assert proxy.request("HEAD", "/api/hello")[0] == 404
    status, _, raw = proxy.request("GET", "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    status, _, raw = proxy.request("GET", "/nope")
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    status, headers, raw = proxy.request("GET", "/v1/messages")
    assert status == 405 and json.loads(raw)["type"] == "error" and "POST" in headers["allow"]
    status, _, raw = proxy.request("POST", "/v1/messages/count_tokens?beta=true",
                                   {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "foo"}]})
    assert status == 200 and isinstance(json.loads(raw)["input_tokens"], int) and json.loads(raw)["input_tokens"] > 0


def test_count_tokens_makes_no_upstream_call(proxy, upstream):
    before = len(upstream.requests)
    body = json.loads((FIXTURES / "first_request.json").read_text())
    status, _, raw = proxy.request("POST", "/v1/messages/count_tokens", {k: body[k] for k in ("model", "messages", "tools")})
    assert status == 200 and json.loads(raw)["input_tokens"] > 5000
    assert len(upstream.requests) == before


@pytest.mark.parametrize("name", ["first_request.json", "tool_result_request.json"])
def test_replay_claude_code_fixtures(proxy, upstream, name):
    body = json.loads((FIXTURES / name).read_text())
    body["stream"] = False
    headers = dict(json.loads((FIXTURES / "first_request_headers.json").read_text())["headers"])
    headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "host", "connection",
                                                                       "accept-encoding")}
    status, _, msg = proxy.post(body, path="/v1/messages?beta=true", headers=headers)
    assert status == 200, msg
    sent = upstream.requests[-1].json()
    assert sent["model"] == "gpt-test"
    names = sorted(t["function"]["name"] for t in sent["tools"])
    assert names == sorted(t["name"] for t in body["tools"])
    assert "cache_control" not in json.dumps(sent)
    assert "x-anthropic-billing-header" not in json.dumps(sent)
    for key in ("context_management", "output_config", "thinking", "metadata"):
        assert key not in sent
    roles = [m["role"] for m in sent["messages"]]
    assert set(roles) <= {"system", "user", "assistant", "tool"}
    for i, m in enumerate(sent["messages"]):   # every tool call answered right after
        for call in m.get("tool_calls") or []:
            followers = sent["messages"][i + 1:i + 1 + len(m["tool_calls"])]
            assert call["id"] in [f.get("tool_call_id") for f in followers]
    assert upstream.requests[-1].headers.get("x-api-key") is None


def test_python_m_clasp_imports_only_stdlib():
    # every module of the package, including the lazily imported ones
    # (modules present before clasp is imported come from the interpreter's site set-up)
    probe = (f"import sys, pkgutil, importlib; sys.path.insert(0, {str(ROOT)!r})\n"
             "base = set(sys.modules)\n"
             "import clasp\n"
             "for m in pkgutil.walk_packages(clasp.__path__, 'clasp.'):\n"
             "    importlib.import_module(m.name)\n"
             "std = set(sys.stdlib_module_names)\n"
             "bad = sorted(m for m in set(sys.modules) - base if m.split('.')[0] not in std | {'clasp'})\n"
             "print(bad)")
    out = subprocess.run([sys.executable, "-I", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
