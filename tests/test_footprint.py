"""What the proxy process loads: OpenSSL (~5 MiB of RSS) only when an upstream it can reach speaks TLS.

A team running clasp in front of a local model (Ollama, vLLM, llama.cpp over plain HTTP) pays
for no TLS library; a config that can reach an https upstream still gets working TLS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from clasp.config import load_config
from clasp.routing.providers import may_use_tls
from harness import FakeUpstream, LoopThread, completion, json_reply, spawn_clasp

ROOT = Path(__file__).resolve().parent.parent
CA = str(ROOT / "tests" / "certs" / "ca.pem")
NOHOME = {"HOME": "/nonexistent-clasp-test-home"}

linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
ssl_is_a_shared_module = pytest.mark.skipif(
    "_ssl" in sys.builtin_module_names or "_hashlib" in sys.builtin_module_names,
    reason="this Python links OpenSSL into the interpreter itself")


@pytest.mark.parametrize("argv,env,expected", [
    (["-provider", "custom"], {"CUSTOM_BASE_URL": "http://127.0.0.1:11434/v1"}, False),
    (["-provider", "custom"], {"CUSTOM_BASE_URL": "https://llm.internal/v1"}, True),
    # OPENAI_API_KEY alone makes "openai,gpt-4o" requests reach api.openai.com over https
    (["-provider", "custom"], {"CUSTOM_BASE_URL": "http://127.0.0.1:11434/v1", "OPENAI_API_KEY": "sk-x"}, True),
    (["-provider", "openai"], {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, False),
    (["-provider", "custom", "-fallback", "-fallback-provider", "openrouter"],
     {"CUSTOM_BASE_URL": "http://127.0.0.1:11434/v1", "CLASP_FALLBACK_API_KEY": "k"}, True),
    (["-provider", "custom", "-multi-provider"],
     {"CUSTOM_BASE_URL": "http://127.0.0.1:11434/v1", "CLASP_OPUS_PROVIDER": "custom",
      "CLASP_OPUS_BASE_URL": "HTTPS://big.internal/v1"}, True),
])
def test_tls_is_needed_when_any_reachable_upstream_is_https(argv, env, expected):
    cfg, _ = load_config(argv, {**NOHOME, **env})
    assert may_use_tls(cfg) is expected


def _serve_one_request(upstream_url: str, extra_env: dict) -> tuple[dict, str]:
    """Start `python -m clasp` for `upstream_url`, send one message; returns (response, /proc maps)."""
    proc, port = spawn_clasp(["-provider", "custom"], {"CUSTOM_BASE_URL": upstream_url, **extra_env})
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", method="POST", data=json.dumps(
            {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        ).encode(), headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        return body, Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@linux_only
@ssl_is_a_shared_module
def test_plain_http_upstream_runs_without_loading_openssl():
    lt = LoopThread()
    up = FakeUpstream(lt, lambda seen: json_reply(completion("over plain http")))
    try:
        body, maps = _serve_one_request(up.url, {})
    finally:
        up.close()
        lt.stop()
    assert body["content"][0]["text"] == "over plain http"
    assert "/_ssl." not in maps and "/_hashlib." not in maps and "libcrypto" not in maps


@linux_only
def test_https_upstream_still_gets_verified_tls():
    import ssl
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(ROOT / "tests" / "certs" / "server.pem"), str(ROOT / "tests" / "certs" / "server.key"))
    lt = LoopThread()
    up = FakeUpstream(lt, lambda seen: json_reply(completion("over tls")), ssl_context=server_ctx)
    try:
        body, _ = _serve_one_request(up.url, {"SSL_CERT_FILE": CA})
    finally:
        up.close()
        lt.stop()
    assert up.url.startswith("https://")
    assert body["content"][0]["text"] == "over tls"


def test_https_in_a_process_started_without_tls_is_a_clear_connect_error():
    """Defence in depth: only reachable through a bug in may_use_tls, but never a bare RuntimeError."""
    probe = """
from clasp.server.run import import_asyncio
asyncio = import_asyncio(False)
from clasp.upstream.client import ConnectError, UpstreamClient
async def main():
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        await UpstreamClient().request("POST", f"https://127.0.0.1:{port}/v1/chat/completions", [], b"{}")
    except ConnectError as e:
        print("ConnectError:", e)
    srv.close()
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "ConnectError: TLS is not loaded" in out.stdout, out.stderr


def test_a_default_proxy_does_not_load_what_only_some_requests_or_settings_need():
    """datetime (~0.45 MiB: only keys files with expiry dates parse dates) and the web-search
    translators (only for a request that asks for a search, or with -web-search) are loaded on use."""
    probe = """
import sys
from clasp.config import load_config
from clasp.app import App
from clasp.pipeline.web_search import web_search_request
cfg, _ = load_config(["-provider", "custom", "-model", "m"], {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", "HOME": "/nonexistent"})
App(cfg)
lazy = ("datetime", "clasp.translate.web_search")
print("at start:", [m for m in lazy if m in sys.modules])
client_tools = [{"name": "Read", "input_schema": {"type": "object"}}, {"name": "Bash", "input_schema": {}}]
print("client tools:", web_search_request({"tools": client_tools}), [m for m in lazy if m in sys.modules])
client_tools.append({"type": "custom", "name": "x", "input_schema": {}})
print("typed client tool:", web_search_request({"tools": client_tools}))
search = web_search_request({"tools": [*client_tools, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
                             "messages": [{"role": "user", "content": "Perform a web search for the query: clasp"}]})
print("search:", search.max_uses, search.query)
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["at start: []", "client tools: None []", "typed client tool: None",
                                     "search: 3 clasp"]
