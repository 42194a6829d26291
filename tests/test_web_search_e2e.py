"""Claude Code's WebSearch side request (the recorded fixture, its headers too) through the server
to a fake upstream of each provider style, the reply read the way Claude Code 2.1.330 reads it
(../shared/fixtures/claude-code/web_search/README.md): search count, titles and URLs, the joined
text, usage.server_tool_use.web_search_requests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness import FakeUpstream, Proxy, Reply, accumulate, completion, json_reply, sse_reply

from clasp.pipeline import web_search as web_search_pipeline

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "claude-code" / "web_search"
SIDE_REQUEST = json.loads((FIXTURES / "web_search_request.json").read_text())
_SKIP_HEADERS = {"host", "content-length", "connection", "accept-encoding"}
SIDE_HEADERS = {k: v for k, v in json.loads((FIXTURES / "web_search_request_headers.json").read_text())["headers"]
                if k.lower() not in _SKIP_HEADERS}
QUERY = "python 3.13 release date"

PY = ("https://www.python.org/downloads/release/python-3130/", "Python Release Python 3.13.0 | Python.org")
PEP = ("https://peps.python.org/pep-0719/", "PEP 719 – Python 3.13 Release Schedule | peps.python.org")
DOCS = ("https://docs.python.org/3/whatsnew/3.13.html", "What's New In Python 3.13")
LEAD = "Based on the search results, "
CITED = "Python 3.13 was released on October 7, 2024."
TAIL = " It is the current stable 3.13 release line."
ANSWER = LEAD + CITED + TAIL
SPAN = (len(LEAD), len(LEAD) + len(CITED))


def claude_code_view(message: dict) -> dict:
    """What Claude Code keeps of a side reply (fixture README)."""
    blocks = message["content"]
    uses = sum(b["type"] == "server_tool_use" for b in blocks)
    results = [b for b in blocks if b["type"] == "web_search_tool_result"]
    links = []
    for r in results:
        if isinstance(r["content"], dict):
            links.append(f"Web search error: {r['content']['error_code']}")
        else:
            links.append([{"title": x["title"], "url": x["url"]} for x in r["content"]])
    return {"searches": max(uses, len(results)), "links": links,
            "text": "".join(b["text"] for b in blocks if b["type"] == "text"),
            "queries": [b["input"]["query"] for b in blocks if b["type"] == "server_tool_use"],
            "requests": message["usage"].get("server_tool_use", {}).get("web_search_requests", 0)}


def side_request(proxy: Proxy, stream: bool = True, **changes) -> tuple[int, dict, dict]:
    """The fixture side request with its headers; the reply as one Message (streamed or not)."""
    body = {**copy.deepcopy(SIDE_REQUEST), "stream": stream, **changes}
    status, headers, raw = proxy.request("POST", "/v1/messages?beta=true", body, headers=SIDE_HEADERS)
    if "event-stream" in headers.get("content-type", ""):
        from harness import parse_sse
        events = [data for _, data in parse_sse(raw)]
        assert events[-1]["type"] == "message_stop", events[-1]
        return status, headers, {"events": events, "message": accumulate(events)}
    return status, headers, {"events": None, "message": json.loads(raw)}


# ------------------------------------------------------------------ upstream replies

def responses_events(*events: dict) -> Reply:
    chunks = [f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': n})}\n\n"
              for n, e in enumerate(events)]
    return Reply(200, [("content-type", "text/event-stream")], chunks=chunks, done=False)


SEARCH_CALL = {"type": "web_search_call", "id": "ws_1", "status": "completed",
               "action": {"type": "search", "query": "Python 3.13 release date official",
                          "sources": [{"type": "url", "url": PY[0]}, {"type": "url", "url": DOCS[0]},
                                      {"type": "url", "url": PEP[0]}]}}
PREFACE = {"type": "message", "id": "msg_0", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "I'll search for the Python 3.13 release date.",
                        "annotations": []}]}
ANSWER_ITEM = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": ANSWER, "annotations": [
                   {"type": "url_citation", "start_index": SPAN[0], "end_index": SPAN[1], "url": PY[0],
                    "title": PY[1]},
                   {"type": "url_citation", "start_index": SPAN[0], "end_index": SPAN[1], "url": PEP[0],
                    "title": PEP[1]}]}]}
RESP_USAGE = {"input_tokens": 9000, "output_tokens": 112, "total_tokens": 9112}


def responses_object(*output: dict) -> dict:
    return {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5-mini",
            "output": list(output), "usage": RESP_USAGE}


def responses_stream() -> Reply:
    out = [{"type": "response.created", "response": {**responses_object(), "status": "in_progress", "usage": None}}]
    for i, item in enumerate((PREFACE, SEARCH_CALL, ANSWER_ITEM)):
        added = {**item, "status": "in_progress"}
        if item["type"] == "message":
            added["content"] = []
        out.append({"type": "response.output_item.added", "output_index": i, "item": added})
        if item["type"] == "web_search_call":
            out += [{"type": f"response.web_search_call.{s}", "output_index": i, "item_id": "ws_1"}
                    for s in ("in_progress", "searching", "completed")]
        else:
            text = item["content"][0]["text"]
            out.append({"type": "response.output_text.delta", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "delta": text})
            for n, ann in enumerate(item["content"][0]["annotations"]):
                out.append({"type": "response.output_text.annotation.added", "output_index": i,
                            "item_id": item["id"], "content_index": 0, "annotation_index": n, "annotation": ann})
        out.append({"type": "response.output_item.done", "output_index": i, "item": item})
    out.append({"type": "response.completed", "response": responses_object(PREFACE, SEARCH_CALL, ANSWER_ITEM)})
    return responses_events(*out)


def chat_annotations(nested: bool = True) -> list[dict]:
    anns = []
    for url, title in (PY, PEP):
        inner = {"url": url, "title": title, "start_index": SPAN[0], "end_index": SPAN[1]}
        anns.append({"type": "url_citation", "url_citation": inner})
    return anns


def chat_completion(annotations: list[dict]) -> dict:
    return {"id": "chatcmpl-ws", "object": "chat.completion", "model": "gpt-4o-mini-search-preview",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER, "annotations": annotations}}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940}}


def chat_stream(annotations: list[dict]) -> Reply:
    base = {"id": "chatcmpl-ws", "object": "chat.completion.chunk"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": piece}}]} for piece in (LEAD, CITED, TAIL)]
    chunks.append({**base, "choices": [{"index": 0, "delta": {"annotations": annotations}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 40}})
    return sse_reply(chunks)


def reply_for(style: str, stream: bool):
    def script(seen) -> Reply:
        wants_stream = seen.json().get("stream") is True
        assert wants_stream == stream
        if style == "responses":
            return responses_stream() if stream else json_reply(responses_object(PREFACE, SEARCH_CALL, ANSWER_ITEM))
        anns = chat_annotations()
        return chat_stream(anns) if stream else json_reply(chat_completion(anns))
    return script


# ------------------------------------------------------------------ the proxies

def openai_proxy(lt, proxies, upstream, model: str, *extra: str) -> Proxy:
    p = Proxy(lt, ["-provider", "openai", "-model", model, "-max-retries", "0", *extra],
              {"OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": upstream.url})
    proxies.append(p)
    return p


@pytest.mark.parametrize("stream", [True, False])
def test_openai_responses_searches_with_the_web_search_tool(lt, upstream, proxies, stream):
    upstream.script = reply_for("responses", stream)
    p = openai_proxy(lt, proxies, upstream, "gpt-5-mini", "-openai-api", "responses")
    status, headers, out = side_request(p, stream)
    assert status == 200, out
    seen = upstream.requests[-1]
    assert seen.target == "/v1/responses"
    body = seen.json()
    assert body["tools"] == [{"type": "web_search"}] and body["tool_choice"] == "auto"
    assert body["max_tool_calls"] == 8 and "web_search_call.action.sources" in body["include"]
    view = claude_code_view(out["message"])
    assert view == {"searches": 1, "queries": ["Python 3.13 release date official"],  # the query it ran
                    "links": [[{"title": PY[1], "url": PY[0]}, {"title": DOCS[0], "url": DOCS[0]},
                               {"title": PEP[1], "url": PEP[0]}]],
                    "text": "I'll search for the Python 3.13 release date." + ANSWER, "requests": 1}
    cited = [b for b in out["message"]["content"] if b.get("citations")]
    assert [b["text"] for b in cited] == [CITED]
    assert [(c["type"], c["url"], c["cited_text"]) for c in cited[0]["citations"]] == [
        ("web_search_result_location", PY[0], CITED), ("web_search_result_location", PEP[0], CITED)]
    assert headers["x-clasp-provider"] == "openai"


def _shape(events: list[dict]) -> list[tuple]:
    """Event types with their block / delta types, repeated deltas collapsed."""
    out: list[tuple] = []
    for e in events:
        if e["type"] == "ping":
            continue
        if e["type"] == "content_block_start":
            block = e["content_block"]
            key = (e["type"], block["type"], "citations" in block)
        elif e["type"] == "content_block_delta":
            key = (e["type"], e["delta"]["type"])
        else:
            key = (e["type"],)
        if not out or out[-1] != key or key[0] != "content_block_delta":
            out.append(key)
    return out


def test_the_stream_follows_the_fixture_event_for_event(lt, upstream, proxies):
    upstream.script = reply_for("responses", True)
    p = openai_proxy(lt, proxies, upstream, "gpt-5-mini", "-openai-api", "responses")
    _, _, out = side_request(p, True)
    fixture = [json.loads(line[6:]) for line in (FIXTURES / "web_search_reply.sse").read_text().splitlines()
               if line.startswith("data: ")]
    assert _shape(out["events"]) == _shape(fixture)
    start = next(e for e in out["events"] if e["type"] == "content_block_start"
                 and e["content_block"]["type"] == "server_tool_use")
    assert start["content_block"]["input"] == {} and start["content_block"]["id"].startswith("srvtoolu_")
    final = [e for e in out["events"] if e["type"] == "message_delta"][0]
    assert final["usage"]["server_tool_use"] == {"web_search_requests": 1}


@pytest.mark.parametrize("stream", [True, False])
def test_openai_chat_search_model_uses_web_search_options(lt, upstream, proxies, stream):
    upstream.script = reply_for("chat", stream)
    p = openai_proxy(lt, proxies, upstream, "gpt-4o-mini-search-preview")
    loc = {"type": "approximate", "city": "Berlin", "country": "DE", "timezone": "Europe/Berlin"}
    tools = [{**SIDE_REQUEST["tools"][0], "user_location": loc}]
    status, _, out = side_request(p, stream, tools=tools)
    assert status == 200, out
    body = upstream.requests[-1].json()
    assert upstream.requests[-1].target == "/v1/chat/completions"
    assert body["web_search_options"] == {"user_location": {"type": "approximate", "approximate": {
        "country": "DE", "city": "Berlin", "timezone": "Europe/Berlin"}}}
    assert "tools" not in body and "tool_choice" not in body and "temperature" not in body
    view = claude_code_view(out["message"])
    assert view == {"searches": 1, "queries": [QUERY], "text": ANSWER, "requests": 1,
                    "links": [[{"title": PY[1], "url": PY[0]}, {"title": PEP[1], "url": PEP[0]}]]}


@pytest.mark.parametrize("stream", [True, False])
def test_openrouter_uses_the_web_plugin_and_filters_domains_itself(lt, upstream, proxies, stream):
    upstream.script = reply_for("chat", stream)
    p = Proxy(lt, ["-provider", "openrouter", "-model", "openai/gpt-4o-mini", "-max-retries", "0"],
              {"OPENROUTER_API_KEY": "sk-or-test", "OPENROUTER_BASE_URL": upstream.url})
    proxies.append(p)
    tools = [{**SIDE_REQUEST["tools"][0], "blocked_domains": ["peps.python.org"]}]
    status, _, out = side_request(p, stream, tools=tools)
    assert status == 200, out
    body = upstream.requests[-1].json()
    assert body["plugins"] == [{"id": "web", "max_results": 5}] and body["model"] == "openai/gpt-4o-mini"
    view = claude_code_view(out["message"])
    # the plugin cannot block a domain: clasp drops its results and citations
    assert view["links"] == [[{"title": PY[1], "url": PY[0]}]] and view["searches"] == 1
    assert view["text"] == ANSWER and view["requests"] == 1
    urls = [c["url"] for b in out["message"]["content"] for c in b.get("citations") or ()]
    assert urls == [PY[0]]


@pytest.mark.parametrize("stream", [True, False])
def test_no_native_search_answers_unavailable_without_calling_the_upstream(lt, upstream, proxies, stream, caplog):
    p = Proxy(lt, ["-provider", "custom", "-model", "qwen3", "-max-retries", "0"], {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    for _ in range(2):
        status, _, out = side_request(p, stream)
        assert status == 200, out
        view = claude_code_view(out["message"])
        assert view["links"] == ["Web search error: unavailable"] and view["searches"] == 1
        assert "-web-search" in view["text"] and "CLASP_WEB_SEARCH" in view["text"]
        assert view["requests"] == 0
    assert upstream.requests == []
    warnings = [r for r in caplog.records if "web search requested" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"  # once, not once per request


@pytest.mark.parametrize("stream", [True, False])
def test_an_openai_chat_model_searches_on_the_responses_api(lt, upstream, proxies, monkeypatch, stream):
    # OpenAI's own API (here the fake upstream's host) with a plain chat model
    monkeypatch.setattr(web_search_pipeline, "OPENAI_API_HOST", "127.0.0.1")
    upstream.script = reply_for("responses", stream)
    p = openai_proxy(lt, proxies, upstream, "gpt-4o")
    status, headers, out = side_request(p, stream)
    assert status == 200, out
    seen = upstream.requests[-1]
    assert seen.target == "/v1/responses" and seen.headers["authorization"] == "Bearer sk-test-key"
    body = seen.json()
    assert body["model"] == "gpt-4o" and body["tools"] == [{"type": "web_search"}]
    view = claude_code_view(out["message"])
    assert view["searches"] == 1 and view["requests"] == 1
    assert view["links"] == [[{"title": PY[1], "url": PY[0]}, {"title": DOCS[0], "url": DOCS[0]},
                              {"title": PEP[1], "url": PEP[0]}]]
    assert view["text"] == "I'll search for the Python 3.13 release date." + ANSWER
    assert headers["x-clasp-provider"] == "openai"
    # the conversation itself stays on Chat Completions
    upstream.script = lambda seen: json_reply(completion("hi"))
    status, _, _ = p.post({"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and upstream.requests[-1].target == "/v1/chat/completions"


def test_an_openai_chat_model_on_another_base_url_is_unavailable(lt, upstream, proxies):
    # an OpenAI-compatible server other than api.openai.com may have no /v1/responses
    p = openai_proxy(lt, proxies, upstream, "gpt-4o")
    status, _, out = side_request(p, False)
    view = claude_code_view(out["message"])
    assert view["links"] == ["Web search error: unavailable"]
    assert "not api.openai.com" in view["text"] and "CLASP_WEB_SEARCH" in view["text"]
    assert upstream.requests == []



def test_where_a_search_goes_keeps_the_requests_own_target_its_key_and_base_url():
    from clasp.config import load_config
    from clasp.pipeline.web_search import search_route
    from clasp.routing.providers import Router
    env = {"HOME": "/nonexistent", "OPENAI_API_KEY": "sk-main", "CLASP_OPUS_API_KEY": "sk-opus",
           "AZURE_API_KEY": "az", "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "AZURE_DEPLOYMENT_NAME": "d"}

    def where(*argv: str, requested: str = "claude-sonnet-4-5"):
        route, style = search_route(Router(load_config(list(argv), env)[0]), None, requested)
        return style, route.api, route.model, route.url, dict(route.target.headers).get("Authorization")

    # an opus tier on its own OpenAI key: its search uses that key, not the main target's
    tiers = ["-provider", "openai", "-model", "gpt-4o", "-multi-provider"]
    env.update({"CLASP_OPUS_PROVIDER": "openai", "CLASP_OPUS_MODEL": "gpt-4.1"})
    assert where(*tiers, requested="claude-opus-4-1") == (
        "responses", "responses", "gpt-4.1", "https://api.openai.com/v1/responses", "Bearer sk-opus")
    assert where(*tiers) == ("responses", "responses", "gpt-4o", "https://api.openai.com/v1/responses", "Bearer sk-main")
    # api.openai.com named explicitly is still OpenAI; another host or Azure is not
    env["OPENAI_BASE_URL"] = "https://api.openai.com/v1/"
    assert where("-provider", "openai", "-model", "gpt-5-mini", "-openai-api", "chat")[:2] == ("responses", "responses")
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:8000/v1"
    assert where("-provider", "openai", "-model", "gpt-4o")[:2] == (None, "chat")
    assert where("-provider", "azure")[0] is None

@pytest.mark.parametrize("stream", [True, False])
def test_the_web_search_target_serves_searches_of_a_provider_without_search(lt, upstream, proxies, stream):
    search_up = FakeUpstream(lt, reply_for("responses", stream))
    try:
        p = Proxy(lt, ["-provider", "custom", "-model", "qwen3", "-max-retries", "0",
                       "-web-search", "openai,gpt-5-mini"],
                  {"CUSTOM_BASE_URL": upstream.url, "OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": search_up.url})
        proxies.append(p)
        tools = [{**SIDE_REQUEST["tools"][0], "allowed_domains": ["python.org"]}]
        status, headers, out = side_request(p, stream, tools=tools)
        assert status == 200, out
        assert upstream.requests == []
        seen = search_up.requests[-1]
        assert seen.target == "/v1/responses"
        body = seen.json()
        assert body["model"] == "gpt-5-mini"
        assert body["tools"] == [{"type": "web_search", "filters": {"allowed_domains": ["python.org"]}}]
        view = claude_code_view(out["message"])
        assert view["searches"] == 1 and view["requests"] == 1
        assert [x["url"] for x in view["links"][0]] == [PY[0], DOCS[0], PEP[0]]  # subdomains included
        assert headers["x-clasp-provider"] == "openai"
        # an ordinary request still goes to the main target
        status, _, msg = p.post({"model": "claude-sonnet-4-5", "max_tokens": 50,
                                 "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and upstream.requests
    finally:
        search_up.close()


def test_a_web_search_target_without_search_is_a_start_up_error(lt):
    from clasp.config import ConfigError
    with pytest.raises(ConfigError, match="no native web search"):
        Proxy(lt, ["-provider", "custom", "-web-search", "custom,qwen3"], {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})
    with pytest.raises(ConfigError, match="provider,model"):
        Proxy(lt, ["-provider", "custom", "-web-search", "gpt-5-mini"], {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})


def test_an_upstream_error_reaches_claude_code_as_an_api_error(lt, upstream, proxies):
    upstream.script = lambda seen: json_reply({"error": {"message": "web_search is not enabled for this key",
                                                         "type": "invalid_request_error"}}, 400)
    p = openai_proxy(lt, proxies, upstream, "gpt-5-mini", "-openai-api", "responses")
    status, _, out = side_request(p, True)
    assert status == 400 and out["message"]["type"] == "error"
    assert "web_search is not enabled" in out["message"]["error"]["message"]


def test_an_https_web_search_target_keeps_tls_loadable():
    # main target plain http, clients may not choose: only the web-search target speaks https
    from clasp.config import load_config
    from clasp.routing.providers import may_use_tls
    env = {"HOME": "/nonexistent", "CUSTOM_BASE_URL": "http://127.0.0.1:11434/v1", "OPENAI_API_KEY": "sk-x"}
    off = ["-provider", "custom", "-client-model-choice", "off"]
    assert may_use_tls(load_config(off, env)[0]) is False
    assert may_use_tls(load_config([*off, "-web-search", "openai,gpt-5-mini"], env)[0]) is True
