"""Which server a custom upstream is (llama.cpp, vLLM), and what clasp does with the answer:
forced tool choice a string-only server honours, exact token counts."""

from __future__ import annotations

import json

import pytest

from harness import Proxy, json_reply, completion
from clasp.upstream.servers import (ServerInfo, count_from, identify_props, identify_version,
                                    root_url)

LLAMA_PROPS = {"default_generation_settings": {"n_ctx": 8192, "params": {}}, "total_slots": 1,
               "build_info": "b1-0c1e570", "chat_template": "..."}
TOOLS = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}},
         {"name": "get_time", "description": "t", "input_schema": {"type": "object", "properties": {}}}]
FORCED = {"model": "claude-sonnet-4-5", "max_tokens": 50, "tools": TOOLS,
          "tool_choice": {"type": "tool", "name": "get_time"},
          "messages": [{"role": "user", "content": "What time is it?"}]}


# ------------------------------------------------------------------------------ pure parts

def test_root_url_strips_the_api_path():
    assert root_url("http://127.0.0.1:8080/v1/chat/completions") == "http://127.0.0.1:8080"
    assert root_url("http://h/llama/v1/chat/completions?x=1") == "http://h/llama"
    assert root_url("http://h:1/chat/completions") == "http://h:1"


def test_llama_cpp_is_known_by_its_props():
    assert identify_props(200, {"server": "llama.cpp"}, json.dumps(LLAMA_PROPS).encode()) == \
        ServerInfo("llama.cpp", 8192)
    # without the header, the props shape says it; a bad n_ctx is just unknown
    props = {**LLAMA_PROPS, "default_generation_settings": {"n_ctx": "big"}}
    assert identify_props(200, {}, json.dumps(props).encode()) == ServerInfo("llama.cpp", None)
    for status, body in ((404, json.dumps(LLAMA_PROPS)), (200, "[]"), (200, "not json"), (200, '{"a": 1}'),
                         (200, "[" * 5000)):
        assert identify_props(status, {}, body.encode()) is None


def test_vllm_is_known_by_its_version_answer():
    assert identify_version(200, {}, b'{"version": "0.11.0"}') == ServerInfo("vllm")
    assert identify_version(200, {}, b'{"version": "0.11.0", "name": "other"}') is None
    assert identify_version(404, {}, b'{"version": "0.11.0"}') is None


def test_counts_and_capabilities_per_server():
    assert count_from("llama.cpp", {"tokens": [1, 2, 3]}) == 3
    assert count_from("vllm", {"count": 202, "max_model_len": 8192, "tokens": []}) == 202
    assert count_from("vllm", {"count": -1}) is None and count_from("vllm", {"count": True}) is None
    assert ServerInfo("llama.cpp").capability_defaults() == {"string_tool_choice": True}
    assert ServerInfo("vllm").capability_defaults() == {} and ServerInfo().counts_tokens is False


# ------------------------------------------------------------------------------ through the proxy

def llama_like(upstream, prompt_tokens: int = 202) -> None:
    """The fake upstream answers as llama-server does: /props, /apply-template, /tokenize."""
    upstream.probe_script = lambda seen: (json_reply(LLAMA_PROPS, headers=[("server", "llama.cpp")])
                                          if seen.target.endswith("/props") else json_reply({}, 404))

    def script(seen):
        if seen.target == "/apply-template":
            return json_reply({"prompt": "<|im_start|>user\nWhat time is it?<|im_end|>\n"})
        if seen.target == "/tokenize":
            return json_reply({"tokens": list(range(prompt_tokens))})
        return json_reply(completion("ok"))
    upstream.script = script


def start(proxies, lt, upstream, *argv) -> Proxy:
    p = Proxy(lt, ["-provider", "custom", "-model", "smollm", *argv], {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    return p


def test_forced_tool_reaches_a_llama_cpp_server_as_required_with_only_that_tool(lt, upstream, proxies):
    llama_like(upstream)
    p = start(proxies, lt, upstream)
    for _ in range(2):
        status, _, body = p.post(FORCED)
        assert status == 200, body
    sent = [r.json() for r in upstream.requests if r.target.endswith("/chat/completions")]
    assert len(sent) == 2
    for body in sent:
        assert body["tool_choice"] == "required"
        assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
    assert [s.target for s in upstream.probes] == ["/props"]  # asked once, not per request


def test_model_flags_win_over_what_the_server_needs(lt, upstream, proxies):
    llama_like(upstream)
    p = start(proxies, lt, upstream, "-model-flags", "string_tool_choice=false")
    assert p.post(FORCED)[0] == 200
    sent = upstream.requests[-1].json()
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


def test_count_tokens_is_exact_on_a_llama_cpp_server(lt, upstream, proxies):
    llama_like(upstream, prompt_tokens=202)
    p = start(proxies, lt, upstream)
    body = {k: v for k, v in FORCED.items() if k != "max_tokens"}
    status, _, data = p.post(body, path="/v1/messages/count_tokens")
    assert (status, data) == (200, {"input_tokens": 202})
    rendered = next(r for r in upstream.requests if r.target == "/apply-template").json()
    # what is counted is what clasp would send: translated messages and the narrowed tool list
    assert rendered["messages"] == [{"role": "user", "content": "What time is it?"}]
    assert [t["function"]["name"] for t in rendered["tools"]] == ["get_time"]
    assert "stream" not in rendered
    assert not any(r.target.endswith("/chat/completions") for r in upstream.requests)  # no model call


def test_count_tokens_falls_back_to_the_estimate_when_counting_fails(lt, upstream, proxies):
    llama_like(upstream)
    upstream.script = lambda seen: json_reply({"error": "boom"}, 500)
    p = start(proxies, lt, upstream)
    status, _, data = p.post({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi " * 400}]},
                             path="/v1/messages/count_tokens")
    assert status == 200 and 300 < data["input_tokens"] < 900


def test_hosted_providers_and_disabled_probing_are_never_probed(lt, upstream, proxies):
    p = start(proxies, lt, upstream, "-probe-upstream=false")
    assert p.post(FORCED)[0] == 200
    assert p.post({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
                  path="/v1/messages/count_tokens")[0] == 200
    assert upstream.probes == []
    assert upstream.requests[-1].json()["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    p2 = Proxy(lt, ["-provider", "openai", "-model", "gpt-4o"],
               {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": upstream.url})
    proxies.append(p2)
    assert p2.post(FORCED)[0] == 200
    assert upstream.probes == []


def test_a_server_of_another_kind_is_asked_once_not_per_request(lt, upstream, proxies):
    # a server that is not llama.cpp or vLLM answers 404: asked once, remembered
    p = start(proxies, lt, upstream)
    for _ in range(3):
        assert p.post(FORCED)[0] == 200
    assert [s.target for s in upstream.probes] == ["/props", "/version"]


def test_a_server_still_starting_is_asked_again_later(lt, upstream, proxies, monkeypatch):
    import clasp.upstream.servers as servers
    monkeypatch.setattr(servers, "RETRY_PROBE_AFTER_S", 0.0)
    loading = {"on": True}
    upstream.probe_script = lambda seen: (json_reply({"error": {"message": "Loading model"}}, 503) if loading["on"]
                                          else json_reply(LLAMA_PROPS, headers=[("server", "llama.cpp")]))
    p = start(proxies, lt, upstream)
    assert p.post(FORCED)[0] == 200
    assert upstream.requests[-1].json()["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    loading["on"] = False  # the model is loaded: the next request asks again and adapts
    assert p.post(FORCED)[0] == 200
    assert upstream.requests[-1].json()["tool_choice"] == "required"
