"""translate_responses_response (issue 13): a Responses API response object -> Anthropic Message,
and the reasoning-signature encoding both Responses translators share."""
from __future__ import annotations

import base64
import json
import re
from types import SimpleNamespace

import pytest

from clasp.translate.errors import ProxyError
from clasp.translate.responses_common import decode_reasoning_signature, encode_reasoning_signature
from clasp.translate.responses_response import first_stop, translate_responses_response

MODEL = "claude-sonnet-4-5"


def make_ctx(**over: object) -> SimpleNamespace:
    base = dict(requested_model=MODEL, upstream_model="gpt-5", stream=False, name_map={},
                stop_sequences=[], show_thinking=False, estimated_input_tokens=100, max_tokens=32000)
    base.update(over)
    return SimpleNamespace(**base)


CAPS = SimpleNamespace(buffer_tool_args=False)


def resp(*output: dict, status: str = "completed", usage: dict | None = None, **extra: object) -> dict:
    body = {"id": "resp_abc", "object": "response", "created_at": 1741476542, "status": status,
            "error": None, "incomplete_details": None, "model": "gpt-5-2025-08-07", "output": list(output),
            "usage": usage if usage is not None else {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 0},
                                                      "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
                                                      "total_tokens": 60}}
    body.update(extra)
    return body


def message(*parts: dict | str, item_id: str = "msg_1") -> dict:
    content = [{"type": "output_text", "text": p, "annotations": []} if isinstance(p, str) else p for p in parts]
    return {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": content}


def call(name: str, args: object, call_id: str | None = "call_1", item_id: str = "fc_1") -> dict:
    item = {"id": item_id, "type": "function_call", "status": "completed", "name": name, "arguments": args}
    if call_id is not None:
        item["call_id"] = call_id
    return item


def reasoning(*summary: str, item_id: str = "rs_1", enc: str | None = "ENC==", content: list | None = None) -> dict:
    item: dict = {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": s} for s in summary]}
    if enc is not None:
        item["encrypted_content"] = enc
    if content is not None:
        item["content"] = content
    return item


def translate(body: dict, **ctx: object) -> dict:
    return translate_responses_response(body, make_ctx(**ctx), CAPS)


# ---------------------------------------------------------------- envelope and content


def test_text_message_envelope() -> None:
    out = translate(resp(message("Hello ", "world")))
    assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", out.pop("id"))
    assert out == {"type": "message", "role": "assistant", "model": MODEL,
                   "content": [{"type": "text", "text": "Hello world"}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 50, "output_tokens": 10, "cache_read_input_tokens": 0,
                             "cache_creation_input_tokens": 0}}


def test_output_items_in_order_reasoning_text_tool() -> None:
    body = resp(reasoning("**Plan**\n\nRead it.", "Then answer."), message("Reading."),
                call("Read", '{"file_path":"a.py"}'))
    out = translate(body, show_thinking=True)
    thinking, text, tool = out["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "**Plan**\n\nRead it.\n\nThen answer."
    assert thinking["signature"].startswith("clasp.r1.")
    assert decode_reasoning_signature(thinking["signature"]) == ("rs_1", "ENC==")
    assert text == {"type": "text", "text": "Reading."}
    assert tool == {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "a.py"}}
    assert out["stop_reason"] == "tool_use"


def test_thinking_only_when_the_client_asked() -> None:
    out = translate(resp(reasoning("Plan."), message("Hi.")))
    assert out["content"] == [{"type": "text", "text": "Hi."}]


def test_reasoning_signature_needs_id_and_encrypted_content() -> None:
    out = translate(resp(reasoning("Plan.", enc=None), reasoning("More.", item_id="", enc="x"), message("Hi.")),
                    show_thinking=True)
    assert [b.get("signature") for b in out["content"]] == ["", "", None]


def test_reasoning_with_no_summary_but_encrypted_content_keeps_an_empty_thinking_block() -> None:
    out = translate(resp(reasoning(), message("Hi.")), show_thinking=True)
    assert out["content"][0]["thinking"] == ""
    assert decode_reasoning_signature(out["content"][0]["signature"]) == ("rs_1", "ENC==")
    out = translate(resp(reasoning(enc=None), message("Hi.")), show_thinking=True)
    assert [b["type"] for b in out["content"]] == ["text"]  # nothing to show, nothing to carry back


def test_raw_reasoning_text_content_is_thinking_too() -> None:
    body = resp(reasoning(enc=None, content=[{"type": "reasoning_text", "text": "raw chain"}]), message("Hi."))
    assert translate(body, show_thinking=True)["content"][0] == {"type": "thinking", "thinking": "raw chain",
                                                                 "signature": ""}


def test_refusal_part_becomes_text() -> None:
    out = translate(resp(message({"type": "refusal", "refusal": "I can't help with that."})))
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "end_turn"


def test_whitespace_only_text_is_not_a_block() -> None:
    out = translate(resp(message("\n\n  "), call("Read", "{}")))
    assert [b["type"] for b in out["content"]] == ["tool_use"]
    assert out["content"][0]["input"] == {}


def test_parallel_calls_names_restored_ids_unique_arguments_repaired() -> None:
    body = resp(call("Read", '{"file_path":"a.py"}', call_id="call_a", item_id="fc_a"),
                call("mcp__x__tool_1a2b3c4d", '```json\n{"q": 1,}\n```', call_id="call_a", item_id="fc_b"),
                call("Glob", {"pattern": "*"}, call_id=None, item_id="fc_c"),
                call("Bash", "not json at all", call_id="call_d", item_id="fc_d"),
                call("", '{"x":1}', call_id="call_e", item_id="fc_e"))
    out = translate(body, name_map={"mcp__x__tool_1a2b3c4d": "mcp__x__tool.with.dots"})
    blocks = out["content"]
    assert [b["name"] for b in blocks] == ["Read", "mcp__x__tool.with.dots", "Glob", "Bash"]  # nameless dropped
    assert [b["input"] for b in blocks] == [{"file_path": "a.py"}, {"q": 1}, {"pattern": "*"}, {}]
    ids = [b["id"] for b in blocks]
    assert ids[0] == "call_a" and len(set(ids)) == 4
    assert all(re.fullmatch(r"toolu_[A-Za-z0-9]{24}", i) for i in ids[1:3])
    assert ids[3] == "call_d"


def test_other_item_types_are_skipped() -> None:
    body = resp({"id": "ws_1", "type": "web_search_call", "status": "completed"}, "junk", message("Found it."))
    assert translate(body)["content"] == [{"type": "text", "text": "Found it."}]


# ---------------------------------------------------------------- stop_reason


@pytest.mark.parametrize("status,reason,output_tokens,items,expected", [
    ("completed", None, 10, [message("Hi.")], "end_turn"),
    ("completed", None, 10, [call("Read", "{}")], "tool_use"),
    ("incomplete", "max_output_tokens", 32000, [message("Hi")], "max_tokens"),
    ("incomplete", "max_output_tokens", 32000, [call("Read", '{"a":')], "max_tokens"),
    ("incomplete", "max_output_tokens", 500, [message("Hi")], "model_context_window_exceeded"),
    ("incomplete", "content_filter", 3, [message("Hi")], "refusal"),
    ("incomplete", "something_new", 3, [message("Hi")], "end_turn"),
])
def test_stop_reason(status: str, reason: str | None, output_tokens: int, items: list, expected: str) -> None:
    body = resp(*items, status=status, incomplete_details={"reason": reason} if reason else None,
                usage={"input_tokens": 5, "output_tokens": output_tokens})
    out = translate(body)
    assert out["stop_reason"] == expected and out["stop_sequence"] is None


def test_stop_sequence_trims_text_and_drops_what_followed() -> None:
    body = resp(message("one two ### three"), call("Read", "{}"), message("more"))
    out = translate(body, stop_sequences=["###"])
    assert out["content"] == [{"type": "text", "text": "one two "}]
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "###")


def test_stop_sequence_after_a_tool_call_still_reports_tool_use() -> None:
    out = translate(resp(call("Read", "{}"), message("done ### x")), stop_sequences=["###"])
    assert [b["type"] for b in out["content"]] == ["tool_use", "text"]
    assert (out["stop_reason"], out["stop_sequence"]) == ("tool_use", None)


def test_stop_sequence_beats_a_later_truncation_and_trims_to_nothing() -> None:
    body = resp(message("END and then"), status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    out = translate(body, stop_sequences=["END"])
    assert out["content"] == [] and out["stop_sequence"] == "END"


def test_first_stop_is_the_earliest_completed() -> None:
    assert first_stop("xabcd", ["abcd", "bc"]) == (2, "bc")
    assert first_stop("xab", ["xab", "ab"]) == (0, "xab")  # same end: the earlier start
    assert first_stop("none here", ["STOP", ""]) is None


# ---------------------------------------------------------------- usage


def test_usage_moves_cached_tokens_to_cache_read() -> None:
    out = translate(resp(message("Hi."), usage={"input_tokens": 2100, "input_tokens_details": {"cached_tokens": 1920},
                                                "output_tokens": 180, "output_tokens_details": {"reasoning_tokens": 128}}))
    assert out["usage"] == {"input_tokens": 180, "output_tokens": 180, "cache_read_input_tokens": 1920,
                            "cache_creation_input_tokens": 0}


def test_missing_usage_is_estimated() -> None:
    body = resp(message("x" * 40))
    body["usage"] = None
    out = translate(body)
    assert out["usage"] == {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 0,
                            "cache_creation_input_tokens": 0}


# ---------------------------------------------------------------- errors


def failed(code: object, message: str, **extra: object) -> dict:
    return resp(status="failed", error={"code": code, "message": message, **extra}, usage=None)


@pytest.mark.parametrize("code,status,etype", [
    ("server_error", 500, "api_error"),
    ("rate_limit_exceeded", 429, "rate_limit_error"),
    ("insufficient_quota", 429, "rate_limit_error"),
    ("invalid_api_key", 401, "authentication_error"),
    ("model_not_found", 404, "not_found_error"),
    ("invalid_prompt", 400, "invalid_request_error"),
    ("invalid_image_url", 400, "invalid_request_error"),
    ("server_is_overloaded", 529, "overloaded_error"),
    ("vector_store_timeout", 504, "timeout_error"),
    (503, 529, "overloaded_error"),
    (None, 500, "api_error"),
])
def test_failed_response_raises_mapped_error(code: object, status: int, etype: str) -> None:
    with pytest.raises(ProxyError) as info:
        translate(failed(code, "something went wrong"))
    assert (info.value.status, info.value.error_type) == (status, etype)
    assert info.value.message == "upstream: something went wrong"


def test_context_overflow_becomes_prompt_is_too_long() -> None:
    with pytest.raises(ProxyError) as info:
        translate(failed("context_length_exceeded", "Your input exceeds the context window of this model. "
                                                    "Please adjust your input and try again."))
    assert info.value.status == 400 and info.value.error_type == "invalid_request_error"
    assert info.value.message.startswith("prompt is too long: Your input exceeds the context window")
    # the wording alone is enough, whatever the code
    with pytest.raises(ProxyError) as info:
        translate(failed("server_error", "This model's maximum context length is 128000 tokens. However, your "
                                         "messages resulted in 130001 tokens."))
    assert info.value.message == "prompt is too long: 130001 tokens > 128000 maximum"


def test_error_body_without_output_and_failed_without_error_raise() -> None:
    with pytest.raises(ProxyError) as info:
        translate({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                             "code": "invalid_api_key"}})
    assert info.value.status == 401
    with pytest.raises(ProxyError) as info:
        translate(resp(status="failed"))
    assert info.value.error_type == "api_error" and "upstream response failed" in info.value.message
    with pytest.raises(ProxyError) as info:
        translate(resp(status="cancelled"))
    assert "cancelled" in info.value.message


def test_secrets_in_upstream_error_messages_are_redacted() -> None:
    with pytest.raises(ProxyError) as info:
        translate(failed("invalid_api_key", "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz123456"))
    assert "abcdefghijklmnopqrstuvwxyz123456" not in info.value.message


def test_garbage_bodies_give_an_empty_answer_not_a_crash() -> None:
    for body in ({}, {"output": "x"}, {"output": [None, 1, {"type": "message", "content": "str"}]}, []):
        out = translate(body)  # type: ignore[arg-type]
        assert out["content"] == [] and out["stop_reason"] == "end_turn"


# ---------------------------------------------------------------- the reasoning signature


def test_signature_round_trip_and_shape() -> None:
    sig = encode_reasoning_signature("rs_67cc", "gAAAAB+/=x")
    assert sig.startswith("clasp.r1.")
    data = sig[len("clasp.r1."):].rstrip("=")
    payload = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    assert payload == {"id": "rs_67cc", "enc": "gAAAAB+/=x"}
    assert decode_reasoning_signature(sig) == ("rs_67cc", "gAAAAB+/=x")
    padded = sig + "=" * (-len(data) % 4) if not sig.endswith("=") else sig
    assert decode_reasoning_signature(padded) == ("rs_67cc", "gAAAAB+/=x")  # padding optional


@pytest.mark.parametrize("sig", [
    None, "", "EqQBCkYIBxgCKkD1x9…real-anthropic-signature", "clasp.r1.", "clasp.r1.!!!!",
    "clasp.r1." + base64.urlsafe_b64encode(b"[1,2]").decode(),
    "clasp.r1." + base64.urlsafe_b64encode(b'{"id":"rs_1"}').decode(),
    "clasp.r1." + base64.urlsafe_b64encode(b'{"id":"rs_1","enc":""}').decode(),
    "clasp.r1." + base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    "clasp.r1.ééé",
])
def test_decode_rejects_anything_not_clasps(sig: object) -> None:
    assert decode_reasoning_signature(sig) is None


def test_completed_at_exactly_the_limit_sent_is_max_tokens():
    """llama.cpp's /v1/responses reports "completed" when max_output_tokens cut the answer."""
    from clasp.translate.responses_response import responses_stop_reason
    assert responses_stop_reason("completed", None, False, None, 40, 40) == ("max_tokens", None)
    assert responses_stop_reason("completed", None, False, None, 39, 40) == ("end_turn", None)
    assert responses_stop_reason("completed", None, True, None, 40, 40) == ("tool_use", None)
    assert responses_stop_reason("completed", None, False, None, None, 40) == ("end_turn", None)
