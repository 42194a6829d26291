"""translate/web_search.py: detection, upstream search options per provider, and the provider's
reply (documented shapes) -> Anthropic server_tool_use / web_search_tool_result / cited text,
whole and streamed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import accumulate
from clasp.translate.capabilities import Capabilities
from clasp.translate.context import RequestContext
from clasp.translate.errors import ProxyError
from clasp.translate.stream import events_from_message
from clasp.translate.web_search import (
    WebSearchRequest,
    WebSearchStream,
    add_search_options,
    message_from_chat,
    message_from_responses,
    search_style,
    unavailable_message,
    web_search_request,
)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "claude-code" / "web_search"
CTX = RequestContext("claude-opus-5-5", "gpt-5-mini", True, {}, [], False, 100, 1000)
CAPS = Capabilities()
SEARCH = WebSearchRequest("rust 2024 edition")
TEXT = "The Rust 2024 edition shipped with Rust 1.85. See the blog."
CITED = "shipped with Rust 1.85"
SPAN = (TEXT.index(CITED), TEXT.index(CITED) + len(CITED))
BLOG = ("https://blog.rust-lang.org/2025/02/20/Rust-1.85.0.html", "Announcing Rust 1.85.0")
BOOK = ("https://doc.rust-lang.org/edition-guide/rust-2024/index.html", "Rust 2024 - The Edition Guide")


def ask(tools, text="Perform a web search for the query: rust 2024 edition") -> dict:
    return {"model": "claude-x", "max_tokens": 10, "tools": tools,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}


# ------------------------------------------------------------------ detection and options

def test_a_web_search_server_tool_makes_a_web_search_request_whatever_the_model():
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3,
            "allowed_domains": ["https://Docs.rs/", "rust-lang.org"], "blocked_domains": ["reddit.com"],
            "user_location": {"type": "approximate", "city": "Paris", "country": "FR", "region": 7}}
    search = web_search_request(ask([{"name": "Bash", "input_schema": {}}, tool]))
    assert search == WebSearchRequest("rust 2024 edition", 3, ("docs.rs", "rust-lang.org"), ("reddit.com",),
                                      {"country": "FR", "city": "Paris"})
    assert web_search_request(ask([{"type": "web_search_20260101", "name": "web_search"}])).query == "rust 2024 edition"
    assert web_search_request(ask([{"type": "bash_20250124", "name": "bash"}])) is None
    assert web_search_request(ask([{"name": "web_search", "input_schema": {}}])) is None  # a client tool
    assert web_search_request({"model": "m", "messages": []}) is None
    plain = web_search_request({**ask([{"type": "web_search_20250305", "name": "web_search"}]),
                                "messages": [{"role": "user", "content": "latest zig release"}]})
    assert plain.query == "latest zig release" and plain.max_uses is None


@pytest.mark.parametrize("provider,model,api,style", [
    ("openai", "gpt-5-mini", "responses", "responses"),
    ("openai", "gpt-4o", "chat", None),
    ("openai", "gpt-4o-search-preview", "chat", "chat"),
    ("openai", "gpt-4o-mini-search-preview-2025-03-11", "chat", "chat"),
    ("openai", "gpt-5-search-api", "chat", "chat"),
    ("openrouter", "openai/gpt-4o-mini", "chat", "openrouter"),
    ("openrouter", "anthropic/claude-sonnet-4", "responses", "openrouter"),
    ("custom", "qwen3", "chat", None),
    ("custom", "gpt-oss-20b", "responses", None),
    ("azure", "gpt-4o", "chat", None),
])
def test_which_providers_search_natively(provider, model, api, style):
    assert search_style(provider, model, api) == style


def test_responses_options_carry_domains_location_and_max_uses():
    search = WebSearchRequest("q", 4, ("python.org",), ("x.com",), {"country": "GB", "city": "London"})
    body = add_search_options({"model": "gpt-5", "input": [], "tools": [{"type": "function", "name": "f"}],
                               "parallel_tool_calls": True}, "responses", "responses", search)
    assert body["tools"] == [{"type": "web_search", "filters": {"allowed_domains": ["python.org"]},
                              "user_location": {"type": "approximate", "country": "GB", "city": "London"}}]
    assert body["tool_choice"] == "auto" and body["max_tool_calls"] == 4 and "parallel_tool_calls" not in body
    assert body["include"] == ["web_search_call.action.sources"]


def test_chat_search_models_get_web_search_options_and_no_sampling_or_tools():
    body = add_search_options({"model": "gpt-4o-search-preview", "messages": [], "temperature": 0.2,
                               "tools": [], "tool_choice": "auto"}, "chat", "chat", SEARCH)
    assert body == {"model": "gpt-4o-search-preview", "messages": [], "web_search_options": {}}


def test_openrouter_gets_the_web_plugin():
    body = add_search_options({"model": "openai/gpt-4o", "messages": []}, "openrouter", "chat", SEARCH)
    assert body["plugins"] == [{"id": "web", "max_results": 5}]


# ------------------------------------------------------------------ whole replies

def flat(url_title, start=SPAN[0], end=SPAN[1]) -> dict:
    return {"type": "url_citation", "start_index": start, "end_index": end, "url": url_title[0],
            "title": url_title[1]}


def answer_item(text=TEXT, annotations=()) -> dict:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": list(annotations)}]}


def search_call(query, urls=None, kind="search") -> dict:
    action: dict = {"type": kind}
    if query is not None:
        action["query"] = query
    if urls is not None:
        action["sources"] = [{"type": "url", "url": u} for u in urls]
    return {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": action}


def response(*output) -> dict:
    return {"id": "resp_1", "status": "completed", "output": list(output),
            "usage": {"input_tokens": 500, "output_tokens": 60}}


def kinds(message) -> list[str]:
    return [b["type"] for b in message["content"]]


def test_responses_search_call_and_citations():
    msg = message_from_responses(response(search_call("rust 2024 edition release", [BLOG[0], BOOK[0]]),
                                          answer_item(annotations=[flat(BLOG)])), CTX, CAPS, SEARCH)
    assert kinds(msg) == ["server_tool_use", "web_search_tool_result", "text", "text", "text"]
    use, result = msg["content"][:2]
    assert use["name"] == "web_search" and use["input"] == {"query": "rust 2024 edition release"}
    assert use["id"].startswith("srvtoolu_") and result["tool_use_id"] == use["id"]
    assert [(r["type"], r["url"], r["title"]) for r in result["content"]] == [
        ("web_search_result", BLOG[0], BLOG[1]), ("web_search_result", BOOK[0], BOOK[0])]
    assert all(isinstance(r["encrypted_content"], str) and r["encrypted_content"] for r in result["content"])
    texts = msg["content"][2:]
    assert "".join(b["text"] for b in texts) == TEXT
    assert texts[1]["text"] == CITED and "citations" not in texts[0] and "citations" not in texts[2]
    (cite,) = texts[1]["citations"]
    assert cite["type"] == "web_search_result_location" and cite["url"] == BLOG[0] and cite["title"] == BLOG[1]
    assert cite["cited_text"] == CITED and cite["encrypted_index"]
    assert msg["usage"]["server_tool_use"] == {"web_search_requests": 1}
    assert msg["usage"]["output_tokens"] == 60 and msg["stop_reason"] == "end_turn"
    assert msg["model"] == "claude-opus-5-5"


def test_several_searches_give_several_pairs_and_page_reads_are_not_searches():
    msg = message_from_responses(response(
        search_call("rust 2024", [BLOG[0]]), search_call(None, None, kind="open_page"),
        search_call("edition guide 2024", [BOOK[0], BOOK[0]]), answer_item()), CTX, CAPS, SEARCH)
    assert kinds(msg) == ["server_tool_use", "web_search_tool_result"] * 2 + ["text"]
    assert [b["input"]["query"] for b in msg["content"] if b["type"] == "server_tool_use"] == [
        "rust 2024", "edition guide 2024"]
    assert [len(b["content"]) for b in msg["content"] if b["type"] == "web_search_tool_result"] == [1, 1]
    assert msg["usage"]["server_tool_use"]["web_search_requests"] == 2


def test_a_search_without_sources_or_query_lists_the_cited_urls_under_the_users_query():
    msg = message_from_responses(response({"type": "web_search_call", "id": "ws_1", "status": "completed"},
                                          answer_item(annotations=[flat(BLOG), flat(BOOK, 0, 3), flat(BLOG)])),
                                 CTX, CAPS, SEARCH)
    assert msg["content"][0]["input"] == {"query": "rust 2024 edition"}
    assert [r["url"] for r in msg["content"][1]["content"]] == [BLOG[0], BOOK[0]]


def test_annotations_without_search_items_still_count_as_one_search():
    # OpenRouter's web plugin on the Responses API: annotations only
    msg = message_from_responses(response(answer_item(annotations=[flat(BLOG)])), CTX, CAPS, SEARCH)
    assert kinds(msg)[:2] == ["server_tool_use", "web_search_tool_result"]
    assert msg["usage"]["server_tool_use"]["web_search_requests"] == 1


def test_bad_annotation_indices_keep_the_text_whole_and_the_url_listed():
    msg = message_from_responses(response(answer_item(annotations=[flat(BLOG, 40, 9999), flat(BOOK, -1, 3)])),
                                 CTX, CAPS, SEARCH)
    texts = [b for b in msg["content"] if b["type"] == "text"]
    assert texts == [{"type": "text", "text": TEXT}]
    assert [r["url"] for r in msg["content"][1]["content"]] == [BLOG[0], BOOK[0]]


def test_no_whitespace_only_text_blocks_between_citations():
    text = "A. B."
    msg = message_from_responses(response(answer_item(text, [flat(BLOG, 0, 2), flat(BOOK, 3, 5)])),
                                 CTX, CAPS, SEARCH)
    texts = [b for b in msg["content"] if b["type"] == "text"]
    assert all(b["text"].strip() for b in texts) and "".join(b["text"] for b in texts) == text
    assert [len(b["citations"]) for b in texts] == [1, 1]


def test_a_failed_response_is_an_error():
    with pytest.raises(ProxyError):
        message_from_responses({"status": "failed", "error": {"code": "server_error", "message": "x"}},
                               CTX, CAPS, SEARCH)


def test_chat_annotations_openrouter_content_is_the_cited_text():
    ann = {"type": "url_citation", "url_citation": {"url": BLOG[0], "title": BLOG[1], "start_index": SPAN[0],
                                                    "end_index": SPAN[1], "content": "Rust 1.85.0 stabilizes..."}}
    data = {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": TEXT, "annotations": [ann]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    msg = message_from_chat(data, CTX, CAPS, SEARCH)
    assert kinds(msg) == ["server_tool_use", "web_search_tool_result", "text", "text", "text"]
    assert msg["content"][0]["input"] == {"query": "rust 2024 edition"}
    assert msg["content"][3]["citations"][0]["cited_text"] == "Rust 1.85.0 stabilizes..."


def test_domain_filters_apply_to_results_and_citations():
    search = WebSearchRequest("q", None, ("rust-lang.org",), ("doc.rust-lang.org",))
    msg = message_from_responses(response(search_call("q", [BLOG[0], BOOK[0], "https://evil.example/"]),
                                          answer_item(annotations=[flat(BOOK)])), CTX, CAPS, search)
    assert [r["url"] for r in msg["content"][1]["content"]] == [BLOG[0]]
    assert not any(b.get("citations") for b in msg["content"])


def test_unavailable_is_a_search_error_with_the_setting():
    msg = unavailable_message("claude-x", SEARCH, "custom model 'qwen3' has no native web search")
    assert msg["content"][1]["content"] == {"type": "web_search_tool_result_error", "error_code": "unavailable"}
    assert msg["content"][0]["input"] == {"query": "rust 2024 edition"}
    assert "CLASP_WEB_SEARCH" in msg["content"][2]["text"] and "qwen3" in msg["content"][2]["text"]


# ------------------------------------------------------------------ events and streams

def test_the_fixture_reply_round_trips_through_events_from_message():
    reply = json.loads((FIXTURES / "web_search_reply.json").read_text())
    start = {"type": "message_start", "message": {**reply, "content": [], "stop_reason": None}}
    events = [start, *events_from_message(reply)]
    rebuilt = accumulate(events)
    assert rebuilt["content"] == reply["content"]
    assert rebuilt["usage"]["server_tool_use"] == {"web_search_requests": 1}
    fixture = [json.loads(line[6:]) for line in (FIXTURES / "web_search_reply.sse").read_text().splitlines()
               if line.startswith("data: ")]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert starts == [e for e in fixture if e["type"] == "content_block_start"]


def run(translator, chunks, finish=True) -> list[dict]:
    events = translator.start()
    for c in chunks:
        events += translator.feed(c)
    if finish:
        events += translator.finish()
    return events


def responses_stream_events(resp: dict) -> list[dict]:
    out = [{"type": "response.created", "response": {**resp, "status": "in_progress", "output": []}}]
    for i, item in enumerate(resp["output"]):
        out.append({"type": "response.output_item.added", "output_index": i, "item": item})
        out.append({"type": "response.output_item.done", "output_index": i, "item": item})
    out.append({"type": "response.completed", "response": resp})
    return out


def test_the_responses_stream_gives_the_whole_translation():
    resp = response(search_call("rust 2024", [BLOG[0]]), answer_item(annotations=[flat(BLOG)]))
    events = run(WebSearchStream(CTX, CAPS, SEARCH, "responses"), responses_stream_events(resp), finish=False)
    assert events[-1]["type"] == "message_stop"
    streamed = accumulate(events)
    whole = message_from_responses(resp, CTX, CAPS, SEARCH)
    strip = lambda m: json.loads(json.dumps(m["content"]).replace(m["content"][0]["id"], "ID"))  # noqa: E731
    assert strip(streamed) == strip(whole)
    assert streamed["usage"]["server_tool_use"] == {"web_search_requests": 1}
    # a completed event without output (minimal servers): the items seen on the way are used
    bare = responses_stream_events(resp)
    bare[-1] = {"type": "response.completed", "response": {**resp, "output": []}}
    assert kinds(accumulate(run(WebSearchStream(CTX, CAPS, SEARCH, "responses"), bare, False)))[:2] == [
        "server_tool_use", "web_search_tool_result"]


def test_the_chat_stream_collects_text_and_annotations():
    ann = {"type": "url_citation", "url_citation": {"url": BLOG[0], "title": BLOG[1],
                                                    "start_index": SPAN[0], "end_index": SPAN[1]}}
    chunks = [{"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": TEXT[:10]}}]},
              {"id": "c1", "choices": [{"index": 0, "delta": {"content": TEXT[10:]}}]},
              {"id": "c1", "choices": [{"index": 0, "delta": {"annotations": [ann]}, "finish_reason": "stop"}]},
              {"id": "c1", "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 9}}]
    translator = WebSearchStream(CTX, CAPS, SEARCH, "chat")
    events = run(translator, chunks)
    msg = accumulate(events)
    assert kinds(msg) == ["server_tool_use", "web_search_tool_result", "text", "text", "text"]
    assert msg["content"][3]["citations"][0]["url"] == BLOG[0]
    assert msg["usage"]["output_tokens"] == 9 and translator.done
    cited = [e for e in events if e["type"] == "content_block_delta" and e["index"] == 3]
    assert [e["delta"]["type"] for e in cited] == ["citations_delta", "text_delta"]


def test_stream_errors_end_with_an_error_event():
    failed = {"type": "response.failed", "response": {"status": "failed",
                                                      "error": {"code": "rate_limit_exceeded", "message": "slow"}}}
    events = run(WebSearchStream(CTX, CAPS, SEARCH, "responses", provider="openai"), [failed], finish=False)
    assert events[-1]["type"] == "error" and "slow" in events[-1]["error"]["message"]
    cut = run(WebSearchStream(CTX, CAPS, SEARCH, "responses"), [{"type": "response.created", "response": {}}])
    assert cut[-1]["type"] == "error"
    cut = run(WebSearchStream(CTX, CAPS, SEARCH, "chat"),
              [{"choices": [{"index": 0, "delta": {"content": "half"}}]}])
    assert cut[-1]["type"] == "error"
    bad = run(WebSearchStream(CTX, CAPS, SEARCH, "chat"), [{"error": {"message": "boom", "code": 500}}])
    assert bad[-1]["type"] == "error" and "boom" in bad[-1]["error"]["message"]
