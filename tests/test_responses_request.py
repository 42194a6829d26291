"""Anthropic Messages request -> OpenAI Responses API request (issue 13): every mapping, the
reasoning round trip, the validation shared with translate_request, and a replay of the real
Claude Code captures in /work/shared/fixtures/claude-code.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re

import pytest

from clasp.pipeline.wire import json_bytes, payload_bytes
from clasp.translate.capabilities import Capabilities, capabilities_for
from clasp.translate.errors import InvalidRequest
from clasp.translate.names import upstream_tool_id, upstream_tool_name
from clasp.translate.request import (EMPTY_RESULT, INTERRUPTED_RESULT, TOOL_ERROR_PREFIX,
                                     translate_request)
from clasp.translate.responses_common import encode_reasoning_signature
from clasp.translate.responses_request import translate_responses_request
from clasp.translate.schema import responses_tool, sanitize_schema

FIXTURES = os.environ.get("CLASP_FIXTURES", "/work/shared/fixtures/claude-code")
CAPS = Capabilities()
REASONING = capabilities_for("openai", "gpt-5")
LONG_MCP = "mcp__my_really_long_server_name_for_testing__and_an_even_longer_tool_name_here"
READ = {"name": "Read", "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                         "required": ["file_path"]}}


def tr(caps: Capabilities = CAPS, **fields):
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return translate_responses_request(body, "up-model", caps)


def items(messages, caps: Capabilities = CAPS, **fields):
    out, _ = tr(caps, messages=messages, **fields)
    return out["input"]


def user(*parts):
    return {"type": "message", "role": "user", "content": list(parts)}


def assistant(text):
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def text(t):
    return {"type": "input_text", "text": t}


def tool_use(tid, name="Read", inp=None):
    return {"type": "tool_use", "id": tid, "name": name, "input": inp if inp is not None else {}}


def tool_result(tid, content="ok", **extra):
    return {"type": "tool_result", "tool_use_id": tid, "content": content, **extra}


def fcall(call_id, name="Read", args="{}"):
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": args}


def fout(call_id, output="ok"):
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def image(**source):
    return {"type": "image", "source": source}


# ---------------------------------------------------------------------------------------------
# A Responses body checker: what the API would reject
# ---------------------------------------------------------------------------------------------

TOP_KEYS = {"model", "instructions", "input", "max_output_tokens", "stream", "store", "tools", "tool_choice",
            "parallel_tool_calls", "temperature", "top_p", "reasoning", "include", "user"}
ITEM_KEYS = {
    "message": {"type", "role", "content"},
    "function_call": {"type", "call_id", "name", "arguments"},
    "function_call_output": {"type", "call_id", "output"},
    "reasoning": {"type", "id", "encrypted_content", "summary"},
}
PART_KEYS = {
    "input_text": {"type", "text"}, "output_text": {"type", "text"},
    "input_image": {"type", "image_url", "detail"}, "input_file": {"type", "filename", "file_data", "file_url"},
}
ANTHROPIC_ONLY = ("cache_control", "context_management", "output_config", "thinking", "metadata",
                  "stop_sequences", "tool_use_id", "input_schema", "is_error", "signature", "service_tier")


def assert_valid_responses_body(out: dict) -> None:
    assert set(out) <= TOP_KEYS, set(out) - TOP_KEYS
    assert out["store"] is False
    dumped = json.dumps(out)
    for key in ANTHROPIC_ONLY:
        assert f'"{key}"' not in dumped, key
    open_calls: list[str] = []
    seen_calls: set[str] = set()
    for n, item in enumerate(out["input"]):
        itype = item["type"]
        assert set(item) <= ITEM_KEYS[itype], item
        if itype == "message":
            assert item["role"] in ("user", "assistant", "system")
            allowed = ("output_text",) if item["role"] == "assistant" else ("input_text", "input_image", "input_file")
            assert item["content"], item
            for part in item["content"]:
                assert part["type"] in allowed and set(part) <= PART_KEYS[part["type"]], part
                if part["type"] in ("input_text", "output_text"):
                    assert isinstance(part["text"], str) and part["text"]
        elif itype == "function_call":
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", item["name"])
            assert isinstance(json.loads(item["arguments"]), dict)
            assert item["call_id"] not in seen_calls
            seen_calls.add(item["call_id"])
            open_calls.append(item["call_id"])
        elif itype == "function_call_output":
            assert item["call_id"] in open_calls, "output without a preceding call"
            open_calls.remove(item["call_id"])
            output = item["output"]
            if isinstance(output, list):
                for part in output:
                    assert part["type"] in ("input_text", "input_image", "input_file"), part
            else:
                assert isinstance(output, str) and output
        else:  # reasoning: followed by the output item it led to
            assert item["encrypted_content"] and item["summary"] == []
            following = next(i for i in out["input"][n + 1:] if i["type"] != "reasoning")
            assert following["type"] == "function_call" or following.get("role") == "assistant"
    assert open_calls == [], "function_call without a function_call_output"
    for tool in out.get("tools", []):
        assert set(tool) <= {"type", "name", "description", "parameters", "strict"}
        assert tool["type"] == "function" and tool["strict"] is False
        assert tool["parameters"]["type"] == "object" and isinstance(tool["parameters"]["properties"], dict)


# ---------------------------------------------------------------------------------------------
# top-level fields
# ---------------------------------------------------------------------------------------------

def test_basic_turns_map_to_message_items():
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": True,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "open a.py"},
                         {"role": "assistant", "content": [{"type": "text", "text": "Sure."},
                                                           {"type": "text", "text": "Reading."}]},
                         {"role": "user", "content": [{"type": "text", "text": "thanks",
                                                       "cache_control": {"type": "ephemeral"}}]}]}
    before = copy.deepcopy(body)
    out, ctx = translate_responses_request(body, "gpt-4.1", capabilities_for("openai", "gpt-4.1"))
    assert body == before
    assert out == {"model": "gpt-4.1", "instructions": "You are Claude Code.",
                   "input": [user(text("open a.py")), assistant("Sure.\n\nReading."), user(text("thanks"))],
                   "max_output_tokens": 1000, "stream": True, "store": False}
    assert (ctx.requested_model, ctx.upstream_model, ctx.stream, ctx.max_tokens) == \
        ("claude-sonnet-4-5", "gpt-4.1", True, 1000)
    assert ctx.estimated_input_tokens > 0 and ctx.name_map == {} and ctx.stop_sequences == []
    assert_valid_responses_body(out)


def test_allowlist_drops_anthropic_only_fields():
    out, _ = tr(context_management={"edits": []}, container="c", mcp_servers=[], service_tier="auto",
                metadata={"user_id": "u"}, top_k=5, output_config={"format": {"type": "json"}},
                stop_sequences=["END"], thinking={"type": "enabled", "budget_tokens": 2000})
    assert set(out) == {"model", "input", "store"}


def test_stream_false_and_absent_max_tokens():
    out, ctx = tr(stream=False)
    assert "stream" not in out and "max_output_tokens" not in out and ctx.max_tokens == 0 and not ctx.stream


def test_max_output_tokens_clamped_to_cap_and_api_minimum():
    capped = Capabilities(max_output_cap=8192)
    out, ctx = tr(capped, max_tokens=128000)
    assert out["max_output_tokens"] == 8192 and ctx.max_tokens == 8192
    out, ctx = tr(capped, max_tokens=100)
    assert out["max_output_tokens"] == 100
    out, ctx = tr(max_tokens=1)     # the Responses API rejects values below 16
    assert out["max_output_tokens"] == 16 and ctx.max_tokens == 16


def test_sampling_passed_or_omitted_for_no_sampling():
    out, _ = tr(temperature=0.2, top_p=0.9, top_k=3)
    assert (out["temperature"], out["top_p"]) == (0.2, 0.9) and "top_k" not in out
    out, _ = tr(Capabilities(no_sampling=True), temperature=0.2, top_p=0.9)
    assert "temperature" not in out and "top_p" not in out
    out, _ = tr(Capabilities(pass_top_k=True), top_k=3)
    assert out["top_k"] == 3


def test_stop_sequences_kept_in_ctx_not_sent():
    out, ctx = tr(stop_sequences=["END", "", "a", "b", "c", "STOP"])
    assert ctx.stop_sequences == ["END", "a", "b", "c", "STOP"]       # all of them: clasp trims itself
    assert "stop" not in out and "stop_sequences" not in out
    _, ctx = tr(Capabilities(no_stop=True), stop_sequences=["END"])
    assert ctx.stop_sequences == ["END"]


def test_metadata_user_id_only_when_configured():
    out, _ = tr(metadata={"user_id": "someone"})
    assert "user" not in out
    out, _ = tr(Capabilities(send_user=True), metadata={"user_id": "someone"})
    assert out["user"] == hashlib.sha256(b"someone").hexdigest()


# ---------------------------------------------------------------------------------------------
# system
# ---------------------------------------------------------------------------------------------

def test_system_billing_line_stripped_and_empty_system_omitted():
    out, _ = tr(system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1;"},
                        {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "B"}])
    assert out["instructions"] == "A\n\nB"
    out, _ = tr(system="x-anthropic-billing-header: cc=1;\nreal prompt")
    assert out["instructions"] == "real prompt"
    out, _ = tr(system=[{"type": "text", "text": "x-anthropic-billing-header: cc=1;"}])
    assert "instructions" not in out
    out, _ = tr(Capabilities(strip_billing_header=False), system="x-anthropic-billing-header: cc=1;")
    assert out["instructions"] == "x-anthropic-billing-header: cc=1;"


def test_inline_system_message_in_place_or_merged_into_instructions():
    messages = [{"role": "user", "content": "a"}, {"role": "system", "content": "be brief"},
                {"role": "user", "content": "b"}]
    assert items(messages) == [user(text("a")),
                               {"type": "message", "role": "system", "content": [text("be brief")]},
                               user(text("b"))]
    out, _ = tr(Capabilities(single_system=True), system="S", messages=messages)
    assert out["instructions"] == "S\n\nbe brief"
    assert out["input"] == [user(text("a"), text("b"))]


def test_inline_system_does_not_break_call_pairing():
    got = items([{"role": "user", "content": "go"},
                 {"role": "assistant", "content": [tool_use("t1")]},
                 {"role": "system", "content": "note"},
                 {"role": "user", "content": [tool_result("t1")]}])
    assert got == [user(text("go")), fcall("t1"), fout("t1"),
                   {"type": "message", "role": "system", "content": [text("note")]}]


# ---------------------------------------------------------------------------------------------
# content blocks
# ---------------------------------------------------------------------------------------------

def test_user_text_blank_dropped_and_consecutive_user_turns_merged():
    got = items([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "  "}]},
                 {"role": "user", "content": "b"}, {"role": "user", "content": "   "}])
    assert got == [user(text("a"), text("b"))]


def test_images_base64_and_url_become_input_image():
    got = items([{"role": "user", "content": [
        image(type="base64", media_type="image/jpeg", data="/9j/4AAQ"),
        image(type="base64", data="R0lGOA=="),                          # media type defaults to png
        image(type="url", url="https://example.com/a.png"),
        image(type="file", file_id="file_1"),
        {"type": "text", "text": "what is this?"}]}])
    assert got == [user(
        {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "auto"},
        {"type": "input_image", "image_url": "data:image/png;base64,R0lGOA==", "detail": "auto"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
        text("[file file_1 omitted]"), text("what is this?"))]


def test_pdfs_become_input_file_and_text_documents_input_text():
    got = items([{"role": "user", "content": [
        {"type": "document", "title": "spec.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                             "data": "JVBERi0x"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "document", "source": {"type": "url", "url": "ftp://example.com/a.pdf"}},
        {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
        {"type": "document", "source": {"type": "file", "file_id": "file_9"}}]}])
    assert got == [user(
        {"type": "input_file", "filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
        {"type": "input_file", "filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        text("[document ftp://example.com/a.pdf omitted: unsupported URL]"),
        text("notes\nhello"), text("inner"), text("[file file_9 omitted]"))]


def test_other_blocks_summarized_or_dropped():
    got = items([{"role": "user", "content": [
        {"type": "search_result", "title": "T", "source": "https://s", "content": [{"type": "text", "text": "c"}]},
        {"type": "tool_reference", "tool_name": "Grep"},
        {"type": "thinking", "thinking": "user-side thinking", "signature": "x"},
        {"type": "mystery"}, {"type": "text", "text": "q"}]}])
    assert got == [user(text("T\nhttps://s\nc"), text("[tool_reference: Grep]"), text("q"))]


def test_assistant_blocks_in_order_with_server_tool_summary():
    got = items([{"role": "user", "content": "q"},
                 {"role": "assistant", "content": [
                     {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {"query": "x"}},
                     {"type": "text", "text": "Found it."},
                     {"type": "redacted_thinking", "data": "abc"},
                     {"type": "text", "text": ""}]}])
    assert got[1] == assistant('[server tool web_search called with {"query": "x"}]\n\nFound it.')
    assert len(got) == 2
    assert items([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]) == [user(text("q"))]
    assert items([{"role": "user", "content": "q"}, {"role": "assistant", "content": "prefill"}])[-1] == \
        assistant("prefill")


# ---------------------------------------------------------------------------------------------
# tool calls and results
# ---------------------------------------------------------------------------------------------

def test_tool_use_and_result_become_function_call_items():
    got = items([{"role": "user", "content": "open a.py"},
                 {"role": "assistant", "content": [{"type": "text", "text": "Reading."},
                                                   tool_use("toolu_01A", inp={"file_path": "a.py"}),
                                                   tool_use("toolu_01B", "Bash", {"command": "ls"})]},
                 {"role": "user", "content": [{"type": "text", "text": "also b.py"},
                                              tool_result("toolu_01B", "x.py"),
                                              tool_result("toolu_01A", [{"type": "text", "text": "print(1)"},
                                                                        {"type": "text", "text": "print(2)"}])]}])
    assert got == [user(text("open a.py")), assistant("Reading."),
                   fcall("toolu_01A", args='{"file_path": "a.py"}'),
                   fcall("toolu_01B", "Bash", '{"command": "ls"}'),
                   fout("toolu_01B", "x.py"), fout("toolu_01A", "print(1)\nprint(2)"),
                   user(text("also b.py"))]


def test_tool_result_error_empty_missing_orphan_and_duplicate():
    got = items([{"role": "user", "content": "go"},
                 {"role": "assistant", "content": [tool_use("a"), tool_use("b"), tool_use("c")]},
                 {"role": "user", "content": [tool_result("a", "boom", is_error=True), tool_result("b", []),
                                              tool_result("a", "again"), tool_result("zzz", "orphan")]},
                 {"role": "user", "content": [tool_result("c", "late")]}])
    assert got == [user(text("go")), fcall("a"), fcall("b"), fcall("c"),
                   fout("a", TOOL_ERROR_PREFIX + "boom"), fout("b", EMPTY_RESULT), fout("c", INTERRUPTED_RESULT)]


def test_interrupted_calls_closed_before_next_assistant_and_at_end():
    got = items([{"role": "user", "content": "go"},
                 {"role": "assistant", "content": [tool_use("a")]},
                 {"role": "assistant", "content": [tool_use("b")]}])
    assert got == [user(text("go")), fcall("a"), fout("a", INTERRUPTED_RESULT), fcall("b"),
                   fout("b", INTERRUPTED_RESULT)]


def test_long_ids_mapped_identically_and_mistral_ids():
    long_id = "toolu_" + "x" * 60
    got = items([{"role": "user", "content": "go"}, {"role": "assistant", "content": [tool_use(long_id)]},
                 {"role": "user", "content": [tool_result(long_id)]}])
    assert got[1]["call_id"] == got[2]["call_id"] == upstream_tool_id(long_id)
    got = items([{"role": "user", "content": "go"}, {"role": "assistant", "content": [tool_use("toolu_01")]},
                 {"role": "user", "content": [tool_result("toolu_01")]}], Capabilities(mistral_ids=True))
    assert got[1]["call_id"] == got[2]["call_id"] == upstream_tool_id("toolu_01", True)


def test_tool_result_with_images_is_a_part_list_in_block_order():
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    got = items([{"role": "user", "content": "shot"},
                 {"role": "assistant", "content": [tool_use("a"), tool_use("b"), tool_use("c")]},
                 {"role": "user", "content": [
                     tool_result("a", [{"type": "text", "text": "before"}, {"type": "image", "source": png},
                                       {"type": "text", "text": "after"}]),
                     tool_result("b", [{"type": "image", "source": png}], is_error=True),
                     tool_result("c", [{"type": "document", "source": {"type": "base64", "data": "JVBERi0x"}},
                                       {"type": "image", "source": {"type": "file", "file_id": "f"}}])]}])
    image_part = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}
    assert got[4:] == [
        fout("a", [text("before"), image_part, text("after")]),
        fout("b", [text(TOOL_ERROR_PREFIX.rstrip()), image_part]),
        fout("c", [{"type": "input_file", "filename": "document.pdf",
                    "file_data": "data:application/pdf;base64,JVBERi0x"}, text("[file f omitted]")])]
    out, _ = tr(messages=[{"role": "user", "content": "shot"},
                          {"role": "assistant", "content": [tool_use("a")]},
                          {"role": "user", "content": [tool_result("a", [{"type": "image", "source": png}])]}])
    assert_valid_responses_body(out)


# ---------------------------------------------------------------------------------------------
# tools and tool_choice
# ---------------------------------------------------------------------------------------------

def test_tools_flat_strict_false_sanitized_and_memoized():
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"url": {"type": "string", "format": "uri"}}}
    tools = [READ, {"name": "Fetch", "input_schema": schema, "cache_control": {"type": "ephemeral"}},
             {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    out, _ = tr(tools=tools)
    assert out["tools"] == [
        {"type": "function", "name": "Read", "description": "Read a file",
         "parameters": READ["input_schema"], "strict": False},
        {"type": "function", "name": "Fetch", "parameters": sanitize_schema(schema), "strict": False}]
    again, _ = tr(tools=copy.deepcopy(tools))
    assert all(a is b for a, b in zip(out["tools"], again["tools"]))     # memoized, not rebuilt
    assert responses_tool(READ, gemini=True)["parameters"] == sanitize_schema(READ["input_schema"], gemini=True)
    assert "tools" not in tr(tools=[tools[2]], tool_choice={"type": "any"})[0]     # no tools: no tool_choice


def test_memoized_tools_splice_into_the_payload_bytes():
    out, _ = tr(tools=[READ, {"name": LONG_MCP, "input_schema": {"type": "object"}}])
    assert json.loads(payload_bytes(out)) == json.loads(json_bytes(out))
    assert payload_bytes(out) == json_bytes(out)


def test_long_tool_names_shortened_everywhere_and_restored_through_name_map():
    out, ctx = tr(tools=[{"name": LONG_MCP, "input_schema": {"type": "object"}}],
                  tool_choice={"type": "tool", "name": LONG_MCP},
                  messages=[{"role": "user", "content": "go"},
                            {"role": "assistant", "content": [tool_use("t1", LONG_MCP, {"a": 1})]},
                            {"role": "user", "content": [tool_result("t1")]}])
    short = upstream_tool_name(LONG_MCP)
    assert short != LONG_MCP and len(short) <= 64
    assert out["tools"][0]["name"] == short and out["input"][1]["name"] == short
    assert out["tool_choice"] == {"type": "function", "name": short}
    assert ctx.name_map == {short: LONG_MCP}
    assert_valid_responses_body(out)


@pytest.mark.parametrize("choice,caps,expected", [
    ({"type": "auto"}, CAPS, "auto"),
    ({"type": "none"}, CAPS, "none"),
    ({"type": "any"}, CAPS, "required"),
    ({"type": "any"}, Capabilities(no_forced_tool_choice=True), "auto"),
    ({"type": "tool", "name": "Read"}, CAPS, {"type": "function", "name": "Read"}),
    ({"type": "tool", "name": "Read"}, Capabilities(no_forced_tool_choice=True), "auto"),
    ({"type": "tool", "name": "web_search"}, CAPS, "auto"),            # a dropped server tool
])
def test_tool_choice_mapping(choice, caps, expected):
    tools = [READ, {"name": "Bash", "input_schema": {"type": "object"}},
             {"type": "web_search_20250305", "name": "web_search"}]
    out, _ = tr(caps, tools=tools, tool_choice=choice)
    assert out["tool_choice"] == expected
    assert [t["name"] for t in out["tools"]] == ["Read", "Bash"]
    assert "parallel_tool_calls" not in out


def test_forced_tool_with_string_tool_choice_is_required_over_only_that_tool():
    tools = [READ, {"name": "Bash", "input_schema": {"type": "object"}}]
    out, _ = tr(Capabilities(string_tool_choice=True), tools=tools, tool_choice={"type": "tool", "name": "Bash"})
    assert out["tool_choice"] == "required" and [t["name"] for t in out["tools"]] == ["Bash"]
    out, _ = tr(Capabilities(string_tool_choice=True), tools=tools, tool_choice={"type": "any"})
    assert out["tool_choice"] == "required" and len(out["tools"]) == 2


def test_parallel_tool_calls_and_absent_tool_choice():
    out, _ = tr(tools=[READ])
    assert "tool_choice" not in out and "parallel_tool_calls" not in out
    out, _ = tr(tools=[READ], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert out["parallel_tool_calls"] is False
    out, _ = tr(Capabilities(no_parallel_param=True), tools=[READ],
                tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert "parallel_tool_calls" not in out


# ---------------------------------------------------------------------------------------------
# thinking / effort -> reasoning
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,expected", [
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, {"effort": "low", "summary": "auto"}),
    ({"thinking": {"type": "enabled", "budget_tokens": 16000}}, {"effort": "medium", "summary": "auto"}),
    ({"thinking": {"type": "enabled", "budget_tokens": 32000}}, {"effort": "high", "summary": "auto"}),
    ({"thinking": {"type": "adaptive"}}, {"summary": "auto"}),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, {"effort": "low", "summary": "auto"}),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}, "output_config": {"effort": "max"}},
     {"effort": "high", "summary": "auto"}),                                   # effort wins over budget
    ({"output_config": {"effort": "medium"}}, {"effort": "medium"}),
    ({"thinking": {"type": "disabled"}}, None),
    ({}, None),
])
def test_reasoning_mapping(fields, expected):
    out, _ = tr(REASONING, **fields)
    assert out.get("reasoning") == expected
    assert out["include"] == ["reasoning.encrypted_content"]


def test_reasoning_not_sent_to_non_reasoning_models():
    out, ctx = tr(capabilities_for("openai", "gpt-4.1"), thinking={"type": "enabled", "budget_tokens": 2000},
                  output_config={"effort": "high"})
    assert "reasoning" not in out and "include" not in out
    assert ctx.show_thinking is True                     # the client asked: show what comes back
    out, _ = tr(Capabilities(reasoning=True, reasoning_style="none"), thinking={"type": "adaptive"})
    assert "reasoning" not in out and out["include"] == ["reasoning.encrypted_content"]
    _, ctx = tr(REASONING)
    assert ctx.show_thinking is False


# ---------------------------------------------------------------------------------------------
# reasoning round trip over three turns
# ---------------------------------------------------------------------------------------------

def test_reasoning_round_trip_over_three_turns():
    tools = [READ]
    turn1 = [{"role": "user", "content": "read a.py"}]
    out1, _ = tr(REASONING, tools=tools, messages=turn1, thinking={"type": "adaptive"})
    assert out1["input"] == [user(text("read a.py"))] and out1["include"] == ["reasoning.encrypted_content"]

    # The upstream answered with [reasoning rs_1, function_call]: the client got a thinking block
    # carrying clasp's signature and a tool_use, and now sends them back with the tool_result.
    sig = encode_reasoning_signature("rs_1", "gAAAAencrypted==")
    reply1 = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "**Reading the file**", "signature": sig},
        tool_use("call_1", inp={"file_path": "a.py"})]}
    turn2 = turn1 + [reply1, {"role": "user", "content": [tool_result("call_1", "print(1)")]}]
    out2, _ = tr(REASONING, tools=tools, messages=turn2, thinking={"type": "adaptive"})
    reasoning_item = {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAAencrypted==", "summary": []}
    assert out2["input"] == [user(text("read a.py")), reasoning_item,
                             fcall("call_1", args='{"file_path": "a.py"}'), fout("call_1", "print(1)")]
    assert_valid_responses_body(out2)

    # Turn 3: the next reply carried a reasoning item and text; an older turn of the same
    # conversation came from Anthropic itself (a real signature): that one is dropped.
    sig2 = encode_reasoning_signature("rs_2", "gAAAAsecond==")
    reply2 = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "done", "signature": sig2}, {"type": "text", "text": "It prints 1."}]}
    anthropic_turn = [{"role": "user", "content": "hello"},
                      {"role": "assistant", "content": [
                          {"type": "thinking", "thinking": "greeting", "signature": "EqQBCkgIAhABGAIiQL..."},
                          {"type": "text", "text": "Hi!"}]}]
    turn3 = anthropic_turn + turn2 + [reply2, {"role": "user", "content": "thanks"}]
    out3, _ = tr(REASONING, tools=tools, messages=turn3, thinking={"type": "adaptive"})
    assert out3["input"] == [
        user(text("hello")), assistant("Hi!"),
        user(text("read a.py")), reasoning_item, fcall("call_1", args='{"file_path": "a.py"}'),
        fout("call_1", "print(1)"),
        {"type": "reasoning", "id": "rs_2", "encrypted_content": "gAAAAsecond==", "summary": []},
        assistant("It prints 1."), user(text("thanks"))]
    assert "EqQBCkgIAhABGAIiQL" not in json.dumps(out3)
    assert_valid_responses_body(out3)


def test_reasoning_without_following_item_and_damaged_signatures_dropped():
    sig = encode_reasoning_signature("rs_1", "enc")
    got = items([{"role": "user", "content": "q"},
                 {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": sig}]},
                 {"role": "user", "content": "more"},
                 {"role": "assistant", "content": [
                     {"type": "thinking", "thinking": "t", "signature": sig[:-4]},
                     {"type": "thinking", "thinking": "t"},
                     {"type": "thinking", "thinking": "t", "signature": encode_reasoning_signature("", "enc2")},
                     {"type": "text", "text": "answer"},
                     {"type": "thinking", "thinking": "t", "signature": sig}]}], REASONING)
    # a lone reasoning item would be rejected upstream; an empty id is left out
    assert got == [user(text("q"), text("more")),
                   {"type": "reasoning", "encrypted_content": "enc2", "summary": []}, assistant("answer")]


# ---------------------------------------------------------------------------------------------
# validation: the same as translate_request, message for message
# ---------------------------------------------------------------------------------------------

M = [{"role": "user", "content": "x"}]


def user_with(*blocks):
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "x"}]}]


INVALID = [
    [],
    {"messages": M},
    {"model": " ", "messages": M},
    {"model": "m"},
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": 5}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    {"model": "m", "messages": M, "max_tokens": 0},
    {"model": "m", "messages": M, "max_tokens": True},
    {"model": "m", "messages": M, "stop_sequences": "END"},
    {"model": "m", "messages": M, "stop_sequences": ["s"] * 1025},
    {"model": "m", "messages": M, "temperature": float("nan")},
    {"model": "m", "messages": M, "top_k": "5"},
    {"model": "m", "messages": M, "stream": "yes"},
    {"model": "m", "messages": M, "thinking": {"type": "enabled", "budget_tokens": 10}},
    {"model": "m", "messages": M, "tool_choice": {"type": "tool"}},
    {"model": "m", "messages": M, "tool_choice": {"type": "any", "disable_parallel_tool_use": 1}},
    {"model": "m", "messages": M, "tools": {"name": "T"}},
    {"model": "m", "messages": M, "tools": [{"name": ""}]},
    {"model": "m", "messages": M, "tools": [{"name": "T", "input_schema": []}]},
    {"model": "m", "system": [{"type": "text", "text": 5}], "messages": M},
    {"model": "m", "system": 5, "messages": M},
    {"model": "m", "messages": [{"role": "system", "content": [{"type": "text"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": [{"type": "text", "text": None}]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "R"}]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": ""}]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": [tool_use("t")]},
                                {"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
    {"model": "m", "messages": user_with(image(type="base64", media_type="image/png", data="a b="))},
    {"model": "m", "messages": user_with(image(type="base64", media_type="image/bmp", data="Qk0="))},
    {"model": "m", "messages": user_with(image(type="url", url="ftp://host/x.png"))},
    {"model": "m", "messages": user_with(image(type="url", url="data:image/png,raw"))},
    {"model": "m", "messages": user_with({"type": "image"})},
    {"model": "m", "messages": user_with({"type": "document", "source": {"type": "base64", "data": "JVBERi0"}})},
    {"model": "m", "messages": [{"role": "assistant", "content": [tool_use("t")]},
                                {"role": "user", "content": [tool_result("t", [
                                    {"type": "image", "source": {"type": "base64", "data": "!!"}}])]}]},
]


def _error(translate, body, caps):
    with pytest.raises(InvalidRequest) as info:
        translate(copy.deepcopy(body), "up", caps)
    return info.value.message


@pytest.mark.parametrize("body", INVALID)
@pytest.mark.parametrize("caps", [CAPS, REASONING], ids=["generic", "gpt-5"])
def test_invalid_input_rejected_exactly_like_translate_request(body, caps):
    assert _error(translate_responses_request, body, caps) == _error(translate_request, body, caps)


def test_valid_edge_values_pass_both_translators():
    body = {"model": "m", "max_tokens": 1_000_000, "stop_sequences": ["a"] * 1024, "stream": None,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tool_choice": {"type": "none", "disable_parallel_tool_use": True},
            "messages": user_with(image(type="url", url="HTTPS://example.com/a.png"),
                                  image(type="url", url="data:image/png;base64,iVBORw0KGgo="))}
    translate_request(copy.deepcopy(body), "up", CAPS)
    out, ctx = translate_responses_request(body, "up", CAPS)
    assert out["max_output_tokens"] == 1_000_000 and len(ctx.stop_sequences) == 1024
    assert [p["image_url"] for p in out["input"][0]["content"] if p["type"] == "input_image"] == \
        ["HTTPS://example.com/a.png", "data:image/png;base64,iVBORw0KGgo="]


# ---------------------------------------------------------------------------------------------
# real Claude Code requests
# ---------------------------------------------------------------------------------------------

def load_fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.parametrize("fixture", ["first_request.json", "tool_result_request.json"])
@pytest.mark.parametrize("provider,model", [("openai", "gpt-5"), ("openai", "gpt-4.1"), ("openai", "o3"),
                                            ("openrouter", "openai/gpt-5"), ("custom", "gemini-2.5-flash"),
                                            ("mistral", "devstral-medium")])
def test_fixture_replay(fixture, provider, model):
    body = load_fixture(fixture)
    before = copy.deepcopy(body)
    caps = capabilities_for(provider, model)
    out, ctx = translate_responses_request(body, model, caps)
    assert body == before
    assert_valid_responses_body(out)
    assert json.dumps(out) == json.dumps(translate_responses_request(load_fixture(fixture), model, caps)[0])

    assert out["model"] == model and ctx.requested_model == "claude-opus-5-5" and ctx.upstream_model == model
    expected = min(128000, caps.max_output_cap or 128000)
    assert out["max_output_tokens"] == expected and ctx.max_tokens == expected
    assert out["stream"] is True and ctx.stream and "stream_options" not in out
    assert ctx.show_thinking is True and ctx.name_map == {} and ctx.estimated_input_tokens > 10000
    if caps.reasoning:
        assert out["reasoning"] == {"effort": "medium", "summary": "auto"}       # effort medium, adaptive
        assert out["include"] == ["reasoning.encrypted_content"]
    else:
        assert "reasoning" not in out and "include" not in out

    assert [t["name"] for t in out["tools"]] == [t["name"] for t in body["tools"]]
    placeholder = next(t for t in out["tools"] if t["name"] == "DeferredToolPlaceholder")
    assert placeholder["parameters"] == {"type": "object", "properties": {}}

    dumped = json.dumps(out)
    assert "x-anthropic-billing-header" not in dumped and "cache_control" not in dumped
    assert out["instructions"].startswith("You are a Claude agent")
    first, inline_system = out["input"][0], out["input"][1]
    assert first["role"] == "user" and first["content"][-1] == text("create a file out.txt containing hello")
    assert inline_system["role"] == "system" and inline_system["content"][0]["text"].startswith("# Environment")


def test_fixture_tool_result_turn_pairs_the_call():
    out, _ = translate_responses_request(load_fixture("tool_result_request.json"), "gpt-5", REASONING)
    assert out["input"][2:] == [
        fcall("toolu_5baba808d9ec4e1f845c8e9e", "Bash",
              '{"command": "echo hello > out.txt", "description": "Create out.txt containing hello"}'),
        fout("toolu_5baba808d9ec4e1f845c8e9e", "(Bash completed with no output)")]
