"""A web page must not drive a local proxy, and clients must not pick the operator's credentials.

Browser side: a page can POST text/plain cross-origin without a preflight, always sends Origin,
and through DNS rebinding reaches 127.0.0.1 under its own host name. Routing side: with choice
off, "provider,model" and non-claude names must not select another credential or model.
Rate limiting covers count_tokens like /v1/messages.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from clasp.config import Config, ConfigError, is_loopback_host, load_config
from clasp.launcher import SESSION_KEY_TAIL, child_env, private_config
from clasp.ops.guard import RequestGuard
from clasp.routing.providers import Router, may_use_tls
from harness import Proxy, recv_response

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
NOHOME = {"HOME": "/nonexistent-clasp-test-home"}


def start(proxies: list, lt, upstream, *argv, **env) -> Proxy:
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", *argv], {"CUSTOM_BASE_URL": upstream.url, **env})
    proxies.append(p)
    return p


def error_of(raw: bytes) -> dict:
    body = json.loads(raw)
    assert body["type"] == "error", body
    return body["error"]


# ------------------------------------------------------------------------------ browser requests

def test_the_browser_attack_request_is_refused_and_never_reaches_the_upstream(lt, upstream, proxies):
    # What a page on https://evil.example sends after rebinding its name to 127.0.0.1.
    p = start(proxies, lt, upstream)
    status, headers, raw = p.request("POST", "/v1/messages", json.dumps(HELLO).encode(), headers={
        "content-type": "text/plain;charset=UTF-8", "origin": "http://evil.example:%d" % p.port,
        "host": "evil.example:%d" % p.port})
    assert status == 403
    assert error_of(raw)["type"] == "permission_error"
    assert headers["x-should-retry"] == "false"
    assert upstream.requests == []


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", None])
def test_post_without_a_json_content_type_is_415(lt, upstream, proxies, path, ctype):
    p = start(proxies, lt, upstream)
    headers = {"content-type": ctype} if ctype is not None else {}
    if ctype is None:  # harness adds application/json by default: send the request by hand
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        body = json.dumps(HELLO).encode()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                  % (path.encode(), len(body), body))
        status, _, raw = recv_response(s)
        s.close()
    else:
        status, _, raw = p.request("POST", path, HELLO, headers=headers)
    assert status == 415
    err = error_of(raw)
    assert err["type"] == "invalid_request_error" and "application/json" in err["message"]
    assert upstream.requests == []
    assert p.request("GET", "/health")[0] == 200  # still serving


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_content_types_are_accepted(lt, upstream, proxies, ctype):
    p = start(proxies, lt, upstream)
    assert p.request("POST", "/v1/messages", HELLO, headers={"content-type": ctype})[0] == 200
    assert p.request("POST", "/v1/messages/count_tokens", HELLO, headers={"content-type": ctype})[0] == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:3000"])
def test_a_browser_origin_is_refused(lt, upstream, proxies, origin):
    p = start(proxies, lt, upstream)
    status, _, raw = p.request("POST", "/v1/messages", HELLO, headers={"origin": origin})
    assert status == 403
    err = error_of(raw)
    assert err["type"] == "permission_error" and "CLASP_ALLOWED_ORIGINS" in err["message"]
    assert p.request("GET", "/v1/models", headers={"origin": origin})[0] == 403
    assert upstream.requests == []


def test_allowed_origins_pass_and_others_do_not(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-allowed-origins", "https://app.example, http://localhost:5173")
    assert p.request("POST", "/v1/messages", HELLO, headers={"origin": "https://app.example"})[0] == 200
    assert p.request("POST", "/v1/messages", HELLO, headers={"origin": "HTTP://LOCALHOST:5173/"})[0] == 200
    assert p.request("POST", "/v1/messages", HELLO, headers={"origin": "https://evil.example"})[0] == 403
    q = start(proxies, lt, upstream, CLASP_ALLOWED_ORIGINS="*")
    assert q.request("POST", "/v1/messages", HELLO, headers={"origin": "https://any.example"})[0] == 200


def test_a_foreign_host_on_a_loopback_proxy_is_refused(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    for host in ("evil.example:%d" % p.port, "evil.example", "192.168.1.10:%d" % p.port, "localhost.evil.example"):
        status, _, raw = p.request("POST", "/v1/messages", HELLO, headers={"host": host})
        assert status == 403, host
        err = error_of(raw)
        assert err["type"] == "permission_error" and "CLASP_ALLOWED_HOSTS" in err["message"]
    assert p.request("GET", "/metrics", headers={"host": "evil.example"})[0] == 403
    assert upstream.requests == []


def test_loopback_hosts_pass(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    for host in ("localhost:%d" % p.port, "127.0.0.1:%d" % p.port, "[::1]:%d" % p.port, "localhost",
                 "LOCALHOST.:%d" % p.port, "127.1.2.3", "app.localhost:%d" % p.port):
        assert p.request("POST", "/v1/messages", HELLO, headers={"host": host})[0] == 200, host


def test_an_http10_request_without_host_is_served(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    status, _, raw = recv_response(s)
    s.close()
    assert status == 200 and json.loads(raw)["status"] == "ok"


def test_allowed_hosts_setting(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-allowed-hosts", "clasp.internal,gw.example:8443")
    assert p.request("POST", "/v1/messages", HELLO, headers={"host": "clasp.internal:%d" % p.port})[0] == 200
    assert p.request("POST", "/v1/messages", HELLO, headers={"host": "gw.example:8443"})[0] == 200
    assert p.request("POST", "/v1/messages", HELLO, headers={"host": "gw.example:9999"})[0] == 403
    assert p.request("POST", "/v1/messages", HELLO, headers={"host": "evil.example"})[0] == 403
    q = start(proxies, lt, upstream, CLASP_ALLOWED_HOSTS="*")
    assert q.request("POST", "/v1/messages", HELLO, headers={"host": "evil.example"})[0] == 200


def test_checks_come_before_auth(lt, upstream, proxies):
    # A page learns nothing about the key: refused the same with or without one.
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", "k-123")
    assert p.request("POST", "/v1/messages", HELLO, headers={"origin": "https://evil.example"})[0] == 403
    assert p.request("POST", "/v1/messages", HELLO, headers={"content-type": "text/plain"})[0] == 415
    assert p.request("POST", "/v1/messages", HELLO, headers={"x-api-key": "k-123"})[0] == 200


def test_guard_unit_matrix():
    loop = RequestGuard("127.0.0.1")
    json_ok = {"content-type": "application/json", "host": "127.0.0.1:8080"}
    assert loop.check("POST", json_ok) is None
    assert loop.check("GET", {"host": "localhost"}) is None            # GET needs no content type
    assert loop.check("POST", {**json_ok, "host": "evil.example"}).status == 403
    assert loop.check("POST", {**json_ok, "origin": "https://a.example"}).status == 403
    assert loop.check("POST", {"host": "localhost"}).status == 415      # no content type
    assert loop.check("POST", {**json_ok, "content-type": "application/jsonx"}).status == 415
    assert loop.check("POST", {**json_ok, "content-type": "text/plain; x=application/json"}).status == 415
    # Bound to every interface or another address: the names clients use are unknown, no Host check.
    for bind in ("0.0.0.0", "::", "", "192.168.1.5"):
        assert RequestGuard(bind).check("POST", {**json_ok, "host": "clasp.lan:8080"}) is None, bind
        assert RequestGuard(bind).check("POST", {**json_ok, "origin": "https://a.example"}).status == 403
    assert RequestGuard("localhost").check("GET", {"host": "evil.example"}).status == 403
    assert RequestGuard("::1").check("GET", {"host": "evil.example"}).status == 403


def test_is_loopback_host():
    for name in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LocalHost.", "a.localhost", "::ffff:127.0.0.1"):
        assert is_loopback_host(name), name
    for name in ("0.0.0.0", "::", "", "10.0.0.1", "evil.example", "localhost.evil.example", "2130706433"):
        assert not is_loopback_host(name), name


# ------------------------------------------------------------------------------ clasp claude

def test_private_proxy_gets_a_random_key_per_session():
    cfg, _ = load_config([], {**NOHOME, "PROVIDER": "custom", "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})
    first, second = private_config(cfg), private_config(cfg)
    assert first.auth and second.auth
    assert first.auth_api_key != second.auth_api_key
    assert first.auth_api_key.endswith(SESSION_KEY_TAIL) and len(SESSION_KEY_TAIL) == 20
    assert len(first.auth_api_key) >= 40 + len(SESSION_KEY_TAIL)
    assert child_env({}, 1234, first)["ANTHROPIC_API_KEY"] == first.auth_api_key
    assert first.host == "127.0.0.1"
    # The session key does not count as the user's auth for the client's model choice.
    assert first.client_chooses_model
    # The user's own key is kept.
    mine, _ = load_config(["-auth", "-auth-api-key", "my-key"], {**NOHOME, "PROVIDER": "custom",
                                                               "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})
    assert private_config(mine).auth_api_key == "my-key"
    assert not private_config(mine).client_chooses_model


def test_private_proxy_refuses_the_old_placeholder_and_no_key(lt, upstream, proxies):
    cfg, _ = load_config(["-provider", "custom", "-model", "gpt-test"], {**NOHOME, "CUSTOM_BASE_URL": upstream.url})
    private = private_config(cfg)
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-test", "-auth", "-auth-api-key", private.auth_api_key],
              {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    assert p.post(HELLO, headers={"x-api-key": "clasp"})[0] == 401
    assert p.post(HELLO)[0] == 401
    assert p.post(HELLO, headers={"x-api-key": private.auth_api_key})[0] == 200
    assert len(upstream.requests) == 1


# ------------------------------------------------------------------------------ client model choice

def _router(argv: list[str], **env: str) -> Router:
    cfg, _ = load_config(["-provider", "custom", "-model", "gpt-test", *argv],
                         {**NOHOME, "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-x", **env})
    return Router(cfg)


@pytest.mark.parametrize("argv,expected", [
    ([], True),                                                   # loopback, no auth
    (["-auth", "-auth-api-key", "k"], False),
    (["-host", "0.0.0.0"], False),
    (["-host", "localhost"], True),
    (["-host", "::1"], True),
    (["-client-model-choice", "on", "-auth", "-auth-api-key", "k"], True),
    (["-client-model-choice", "on", "-host", "0.0.0.0"], True),
    (["-client-model-choice", "off"], False),
])
def test_client_model_choice_default_follows_bind_and_auth(argv, expected):
    assert _router(argv).client_chooses is expected


def test_client_model_choice_rejects_other_values():
    with pytest.raises(ConfigError, match="CLASP_CLIENT_MODEL_CHOICE"):
        load_config(["-client-model-choice", "maybe"], {**NOHOME, "PROVIDER": "custom",
                                                         "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})


def test_routing_with_choice_off():
    r = _router(["-client-model-choice", "off", "-model-haiku", "small",
                 "-model-aliases", "fast=openai:gpt-4o-mini"])
    with pytest.raises(ConfigError, match="client-model-choice"):
        r.resolve("openai,gpt-4o")
    assert r.resolve("gpt-4o")[0].model == "gpt-test"            # no pass-through
    assert r.resolve("o3-pro")[0].target is r.primary
    assert r.resolve("my-haiku-thing")[0].model == "small"       # tier keyword still applies
    alias = r.resolve("fast")[0]                                 # operator aliases stay
    assert (alias.target.provider, alias.model) == ("openai", "gpt-4o-mini")
    on = _router([])
    assert on.resolve("gpt-4o")[0].model == "gpt-4o"
    assert on.resolve("openai,gpt-4o")[0].target.provider == "openai"


def test_provider_model_with_auth_is_400_naming_the_setting(lt, upstream, proxies):
    # OPENAI_API_KEY is there for a fallback; an authenticated client must not spend it directly.
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", "k-1", OPENAI_API_KEY="sk-operator",
              OPENAI_BASE_URL=upstream.url)
    status, headers, err = p.post({**HELLO, "model": "openai,gpt-4o"}, headers={"x-api-key": "k-1"})
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"
    assert "CLASP_CLIENT_MODEL_CHOICE" in err["error"]["message"] and "sk-operator" not in json.dumps(err)
    assert upstream.requests == []
    # a non-claude name gets the configured model
    status, _, body = p.post({**HELLO, "model": "gpt-4o"}, headers={"x-api-key": "k-1"})
    assert status == 200 and body["model"] == "gpt-4o"           # the response names what was asked
    assert [r.json()["model"] for r in upstream.requests] == ["gpt-test"]
    assert "authorization" not in upstream.requests[0].headers  # custom upstream without key: not sk-operator


def test_choice_on_keeps_pass_through_and_provider_model(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", "k-1", "-client-model-choice", "on",
              OPENAI_API_KEY="sk-operator", OPENAI_BASE_URL=upstream.url)
    assert p.post({**HELLO, "model": "o3-mini"}, headers={"x-api-key": "k-1"})[0] == 200
    assert p.post({**HELLO, "model": "openai,gpt-4o"}, headers={"x-api-key": "k-1"})[0] == 200
    assert [r.json()["model"] for r in upstream.requests] == ["o3-mini", "gpt-4o"]
    assert upstream.requests[1].headers["authorization"] == "Bearer sk-operator"


def test_tls_not_loaded_for_providers_a_client_cannot_choose():
    env = {**NOHOME, "CUSTOM_BASE_URL": "http://127.0.0.1:11434/v1", "OPENAI_API_KEY": "sk-x"}
    assert may_use_tls(load_config(["-provider", "custom"], env)[0]) is True
    assert may_use_tls(load_config(["-provider", "custom", "-auth", "-auth-api-key", "k"], env)[0]) is False
    assert may_use_tls(load_config(["-provider", "custom", "-client-model-choice", "off"], env)[0]) is False


# ------------------------------------------------------------------------------ count_tokens rate limit

SLOW_REFILL = ["-rate-limit", "-rate-limit-burst", "2", "-rate-limit-requests", "1", "-rate-limit-window", "3600"]


def test_count_tokens_is_rate_limited_like_messages(lt, upstream, proxies):
    p = start(proxies, lt, upstream, *SLOW_REFILL)
    status, headers, raw = p.request("POST", "/v1/messages/count_tokens", HELLO)
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert p.post(HELLO)[0] == 200                                  # the same bucket
    for path in ("/v1/messages/count_tokens", "/v1/messages"):
        status, headers, raw = p.request("POST", path, HELLO)
        assert status == 429, path
        assert error_of(raw) == {"type": "rate_limit_error", "message": "rate limit exceeded for this client"}
        assert 3000 <= int(headers["retry-after"]) <= 3600
        assert headers["anthropic-ratelimit-requests-limit"] == "2"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        reset = time.strptime(headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
        assert reset > time.gmtime(time.time() + 3000)
    assert len(upstream.requests) == 1


def test_count_tokens_without_rate_limit_has_no_rate_headers(lt, upstream, proxies):
    p = start(proxies, lt, upstream)
    for _ in range(15):
        status, headers, _ = p.request("POST", "/v1/messages/count_tokens", HELLO)
        assert status == 200 and "anthropic-ratelimit-requests-limit" not in headers


def test_config_defaults():
    cfg = Config()
    assert (cfg.allowed_hosts, cfg.allowed_origins, cfg.client_model_choice) == ("", "", "auto")


CLAUDE_CODE_HEADERS = Path("/work/shared/fixtures/claude-code/first_request_headers.json")


@pytest.mark.skipif(not CLAUDE_CODE_HEADERS.exists(), reason="Claude Code capture not available")
def test_claude_code_headers_pass_the_checks(lt, upstream, proxies):
    # Everything Claude Code sent, its Host (127.0.0.1:<its port>) included.
    p = start(proxies, lt, upstream)
    headers = dict(json.loads(CLAUDE_CODE_HEADERS.read_text())["headers"])
    headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "connection")}
    assert RequestGuard("127.0.0.1").check("POST", {k.lower(): v for k, v in headers.items()}) is None
    status, _, body = p.post(HELLO, path="/v1/messages?beta=true", headers=headers)
    assert status == 200, body


def test_count_tokens_answers_provider_choice_like_messages(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-auth", "-auth-api-key", "k-123", OPENAI_API_KEY="sk-test")
    body = {"model": "openai,gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    key = {"x-api-key": "k-123"}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, _, raw = p.request("POST", path, {**body, "max_tokens": 5}, headers=key)
        assert status == 400 and "CLASP_CLIENT_MODEL_CHOICE" in error_of(raw)["message"], path
