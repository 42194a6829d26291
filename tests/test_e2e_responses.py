"""The Responses API dialect end to end: client -> clasp -> a fake upstream speaking
POST /v1/responses (its recorded event shapes), all on loopback."""

from __future__ import annotations

import json

import pytest

from harness import FakeUpstream, Proxy, Reply, completion, json_reply

TOOLS = [{"name": "Bash", "description": "Run a command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}]
ASK = {"model": "claude-sonnet-4-5", "max_tokens": 200, "system": "Be terse.",
       "messages": [{"role": "user", "content": "List the files."}], "tools": TOOLS}
USAGE = {"input_tokens": 1500, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 40,
         "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 1540}


def events(*items: dict) -> list[str]:
    """A Responses SSE body: one `event:` + `data:` pair per event, sequence numbers in order."""
    out = []
    for n, item in enumerate(items):
        out.append(f"event: {item['type']}\ndata: {json.dumps({**item, 'sequence_number': n})}\n\n")
    return out


def sse(*items: dict) -> Reply:
    return Reply(200, [("content-type", "text/event-stream")], chunks=events(*items), done=False)


REASONING = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Use ls."}],
             "encrypted_content": "gAAAAB-opaque-blob"}
CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Bash",
        "arguments": '{"command":"ls"}', "status": "completed"}
MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "Two files.", "annotations": []}]}


def response(*output: dict, status: str = "completed", usage: dict = USAGE, **extra) -> dict:
    return {"id": "resp_1", "object": "response", "status": status, "model": "gpt-5.1-codex",
            "output": list(output), "usage": usage, **extra}


def tool_turn_stream() -> Reply:
    """Reasoning, then a function call whose arguments arrive in pieces, then completed."""
    return sse(
        {"type": "response.created", "response": response(status="in_progress", usage=None)},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_1", "summary": []}},
        {"type": "response.reasoning_summary_part.added", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
         "delta": "Use ls."},
        {"type": "response.reasoning_summary_text.done", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
         "text": "Use ls."},
        {"type": "response.output_item.done", "output_index": 0, "item": REASONING},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**CALL, "arguments": "", "status": "in_progress"}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1,
         "delta": '{"comm'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1,
         "delta": 'and":"ls"}'},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 1,
         "arguments": '{"command":"ls"}'},
        {"type": "response.output_item.done", "output_index": 1, "item": CALL},
        {"type": "response.completed", "response": response(REASONING, CALL)},
    )


@pytest.fixture
def proxy(lt, upstream, proxies):
    p = Proxy(lt, ["-provider", "custom", "-model", "gpt-5.1-codex", "-max-retries", "0"],
              {"CUSTOM_BASE_URL": upstream.url})
    proxies.append(p)
    return p


def sent(upstream) -> dict:
    seen = upstream.requests[-1]
    assert seen.target == "/v1/responses", seen.target
    return seen.json()


def test_a_codex_model_is_sent_to_the_responses_api(proxy, upstream):
    upstream.script = lambda seen: json_reply(response(MESSAGE))
    status, headers, message = proxy.post(ASK)
    assert status == 200, message
    body = sent(upstream)
    assert body["model"] == "gpt-5.1-codex" and body["instructions"] == "Be terse."
    assert body["store"] is False and body["max_output_tokens"] == 200
    assert body["tools"][0] == {"type": "function", "name": "Bash", "description": "Run a command",
                                "parameters": body["tools"][0]["parameters"], "strict": False}
    assert message["content"] == [{"type": "text", "text": "Two files."}]
    assert message["stop_reason"] == "end_turn" and message["model"] == "claude-sonnet-4-5"
    assert message["usage"]["input_tokens"] == 476 and message["usage"]["cache_read_input_tokens"] == 1024
    assert message["usage"]["output_tokens"] == 40
    assert proxy.metrics()["apis"] == {"custom": {"responses": 1}}


def test_streamed_reasoning_and_tool_call(proxy, upstream):
    upstream.script = lambda seen: tool_turn_stream()
    status, _, evs = proxy.post({**ASK, "stream": True, "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert status == 200
    kinds = [name for name, _ in evs if name != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    blocks = [data["content_block"] for name, data in evs if name == "content_block_start"]
    assert [b["type"] for b in blocks] == ["thinking", "tool_use"]
    args = "".join(data["delta"]["partial_json"] for name, data in evs
                   if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta")
    assert json.loads(args) == {"command": "ls"} and blocks[1]["name"] == "Bash"
    signature = "".join(data["delta"].get("signature", "") for name, data in evs
                        if name == "content_block_delta" and data["delta"]["type"] == "signature_delta")
    signature = signature or blocks[0].get("signature", "")
    assert signature.startswith("clasp.r1.")
    delta = next(data for name, data in evs if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 40
    body = sent(upstream)
    assert body["stream"] is True and "reasoning.encrypted_content" in body.get("include", [])


def test_reasoning_goes_back_before_the_calls_of_its_turn(proxy, upstream):
    upstream.script = lambda seen: json_reply(response(REASONING, CALL))
    _, _, first = proxy.post({**ASK, "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert [b["type"] for b in first["content"]] == ["thinking", "tool_use"]
    upstream.script = lambda seen: json_reply(response(MESSAGE))
    history = [*ASK["messages"], {"role": "assistant", "content": first["content"]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first["content"][1]["id"],
                                             "content": "a.py\nb.py"}]}]
    status, _, second = proxy.post({**ASK, "messages": history, "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert status == 200 and second["content"][0]["text"] == "Two files."
    items = sent(upstream)["input"]
    kinds = [i.get("type", "message") for i in items]
    r, c, o = kinds.index("reasoning"), kinds.index("function_call"), kinds.index("function_call_output")
    assert r < c < o
    assert items[r]["encrypted_content"] == "gAAAAB-opaque-blob" and items[r]["id"] == "rs_1"
    assert items[c]["call_id"] == items[o]["call_id"] and items[o]["output"] == "a.py\nb.py"
    # a signature that is not clasp's (real Anthropic history) is not sent upstream
    foreign = [{**b, "signature": "EqQBCkgIBxAC..."} if b["type"] == "thinking" else b for b in first["content"]]
    history[1] = {"role": "assistant", "content": foreign}
    proxy.post({**ASK, "messages": history})
    assert "reasoning" not in [i.get("type") for i in sent(upstream)["input"]]


def test_arguments_only_on_done_still_make_a_complete_tool_call(proxy, upstream):
    upstream.script = lambda seen: sse(
        {"type": "response.created", "response": response(status="in_progress", usage=None)},
        {"type": "response.output_item.added", "output_index": 0, "item": {**CALL, "arguments": ""}},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
         "arguments": '{"command":"ls -la"}'},
        {"type": "response.output_item.done", "output_index": 0, "item": {**CALL, "arguments": '{"command":"ls -la"}'}},
        {"type": "response.completed", "response": response({**CALL, "arguments": '{"command":"ls -la"}'})})
    _, _, evs = proxy.post({**ASK, "stream": True})
    args = "".join(d["delta"]["partial_json"] for n, d in evs
                   if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(args) == {"command": "ls -la"}


def test_a_failed_response_mid_stream_ends_with_an_error_event(proxy, upstream):
    upstream.script = lambda seen: sse(
        {"type": "response.created", "response": response(status="in_progress", usage=None)},
        {"type": "response.failed", "response": response(status="failed", usage=None, error={
            "code": "server_error", "message": "The model failed to generate a response."})})
    status, _, evs = proxy.post({**ASK, "stream": True})
    assert status == 200 and evs[0][0] == "message_start" and evs[-1][0] == "error"
    assert evs[-1][1]["error"]["type"] in ("api_error", "overloaded_error")


def test_a_cut_responses_stream_is_an_error_not_a_complete_answer(proxy, upstream):
    upstream.script = lambda seen: sse(
        {"type": "response.created", "response": response(status="in_progress", usage=None)},
        {"type": "response.output_item.added", "output_index": 0, "item": {**MESSAGE, "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "delta": "Two"})
    _, _, evs = proxy.post({**ASK, "stream": True})
    assert evs[-1][0] == "error" and "message_stop" not in [n for n, _ in evs]


def test_context_overflow_is_the_error_claude_code_parses(proxy, upstream):
    upstream.script = lambda seen: json_reply({"error": {
        "message": "Your input exceeds the context window of this model. Please adjust your input and try again.",
        "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}}, 400)
    status, _, err = proxy.post(ASK)
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    assert "prompt is too long" in err["error"]["message"]


def test_a_fallback_chain_mixes_responses_and_chat_completions(lt, proxies):
    responses_up = FakeUpstream(lt, lambda seen: json_reply({"error": {"message": "overloaded"}}, 503))
    chat_up = FakeUpstream(lt, lambda seen: json_reply(completion("From chat.")))
    try:
        p = Proxy(lt, ["-provider", "openai", "-model", "gpt-5.1-codex", "-max-retries", "0", "-fallback",
                       "-fallback-provider", "custom", "-fallback-model", "local"],
                  {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": responses_up.url, "CUSTOM_BASE_URL": chat_up.url})
        proxies.append(p)
        status, headers, message = p.post(ASK)
        assert status == 200 and message["content"][0]["text"] == "From chat."
        assert responses_up.requests[-1].target == "/v1/responses"
        assert chat_up.requests[-1].target == "/v1/chat/completions"
        assert chat_up.requests[-1].json()["model"] == "local"
        assert headers["x-clasp-provider"] == "fallback:custom"
    finally:
        responses_up.close()
        chat_up.close()
