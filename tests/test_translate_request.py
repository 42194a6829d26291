"""Request translation (PROTOCOL §1, §8): capabilities, names, schema sanitizer, translate_request.

One test per rule with a small input and the exact expected output, plus replay of the real
Claude Code captures in /work/shared/fixtures/claude-code.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re

import pytest

from clasp.translate.capabilities import Capabilities, capabilities_for
from clasp.translate.errors import InvalidRequest
from clasp.translate.names import upstream_tool_id, upstream_tool_name
from clasp.translate.request import RequestContext, translate_request
from clasp.translate.schema import function_tool, sanitize_schema

FIXTURES = os.environ.get("CLASP_FIXTURES", "/work/shared/fixtures/claude-code")
CAPS = Capabilities()
LONG_MCP = "mcp__my_really_long_server_name_for_testing__and_an_even_longer_tool_name_here"


def tr(caps: Capabilities = CAPS, **fields):
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return translate_request(body, "up-model", caps)


def msgs(messages, caps: Capabilities = CAPS, **fields):
    out, _ = tr(caps, messages=messages, **fields)
    return out["messages"]


def tool_use(tid, name="Read", inp=None):
    return {"type": "tool_use", "id": tid, "name": name, "input": inp if inp is not None else {}}


def tool_result(tid, content="ok", **extra):
    return {"type": "tool_result", "tool_use_id": tid, "content": content, **extra}


def call(tid, name="Read", args="{}"):
    return {"id": tid, "type": "function", "function": {"name": name, "arguments": args}}


# ---------------------------------------------------------------------------------------------
# §1.10 example, exact
# ---------------------------------------------------------------------------------------------

EXAMPLE_IN = json.loads("""{"model":"claude-sonnet-4-5","max_tokens":32000,"stream":true,
 "system":[{"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],
 "tools":[{"name":"Read","description":"Read a file","input_schema":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}}],
 "messages":[{"role":"user","content":"open a.py"},
  {"role":"assistant","content":[{"type":"text","text":"Reading."},{"type":"tool_use","id":"toolu_01A","name":"Read","input":{"file_path":"a.py"}}]},
  {"role":"user","content":[{"type":"text","text":"also b.py"},{"type":"tool_result","tool_use_id":"toolu_01A","content":"print(1)"}]}]}""")
EXAMPLE_OUT = json.loads(r"""{"model":"gpt-4.1","max_completion_tokens":32000,"stream":true,"stream_options":{"include_usage":true},
 "messages":[{"role":"system","content":"You are Claude Code."},
  {"role":"user","content":"open a.py"},
  {"role":"assistant","content":"Reading.","tool_calls":[{"id":"toolu_01A","type":"function","function":{"name":"Read","arguments":"{\"file_path\": \"a.py\"}"}}]},
  {"role":"tool","tool_call_id":"toolu_01A","content":"print(1)"},
  {"role":"user","content":"also b.py"}],
 "tools":[{"type":"function","function":{"name":"Read","description":"Read a file","parameters":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}}}]}""")


def test_protocol_example_translates_exactly():
    before = copy.deepcopy(EXAMPLE_IN)
    out, ctx = translate_request(EXAMPLE_IN, "gpt-4.1", capabilities_for("openai", "gpt-4.1"))
    assert out == EXAMPLE_OUT
    assert json.dumps(out) == json.dumps(EXAMPLE_OUT)          # same key order too
    assert EXAMPLE_IN == before                                 # input not mutated
    assert ctx == RequestContext(
        requested_model="claude-sonnet-4-5", upstream_model="gpt-4.1", stream=True, name_map={},
        stop_sequences=[], show_thinking=False, estimated_input_tokens=ctx.estimated_input_tokens,
        max_tokens=32000)
    assert ctx.estimated_input_tokens > 300                      # tools overhead alone is 300


# ---------------------------------------------------------------------------------------------
# capabilities (§1.3)
# ---------------------------------------------------------------------------------------------

def test_caps_o_series():
    o1 = capabilities_for("openai", "o1-mini")
    assert (o1.token_field, o1.no_sampling, o1.no_stop, o1.reasoning) == ("max_completion_tokens", True, False, True)
    for model in ("o3", "o3-mini-2025-01-31", "o4-mini"):
        c = capabilities_for("openai", model)
        assert (c.token_field, c.no_sampling, c.no_stop, c.reasoning) == ("max_completion_tokens", True, True, True)


def test_caps_gpt5():
    c = capabilities_for("azure", "gpt-5-mini")
    assert (c.token_field, c.no_sampling, c.no_stop, c.reasoning, c.reasoning_style) == \
        ("max_completion_tokens", True, True, True, "openai")


def test_caps_other_openai_models():
    c = capabilities_for("openai", "gpt-4.1")
    assert c.token_field == "max_completion_tokens" and c.pdf_file_parts
    assert not (c.no_sampling or c.no_stop or c.reasoning)
    assert capabilities_for("azure", "gpt-4o").token_field == "max_completion_tokens"
    assert capabilities_for("azure", "gpt-4o").pdf_file_parts is False


def test_caps_deepseek():
    c = capabilities_for("deepseek", "deepseek-reasoner")
    assert (c.token_field, c.reasoning, c.reasoning_style, c.reasoning_roundtrip, c.no_forced_tool_choice) == \
        ("max_tokens", True, "deepseek", True, True)
    chat = capabilities_for("deepseek", "deepseek-chat")
    assert chat.reasoning_style == "deepseek" and chat.reasoning_roundtrip and not chat.no_forced_tool_choice


def test_caps_openrouter():
    c = capabilities_for("openrouter", "anthropic/claude-3.5-sonnet")
    assert (c.token_field, c.reasoning_style, c.pdf_file_parts, c.reasoning) == ("max_tokens", "openrouter", True, False)
    o3 = capabilities_for("openrouter", "openai/o3-mini")
    assert (o3.token_field, o3.reasoning, o3.reasoning_style, o3.no_sampling) == ("max_tokens", True, "openrouter", True)


def test_caps_generic_defaults():
    for provider, model in (("custom", "my-model"), ("ollama", "qwen3:8b"), ("vllm", "meta/llama-3")):
        assert capabilities_for(provider, model) == Capabilities()
    assert Capabilities().max_output_cap is None and Capabilities().strip_billing_header is True


def test_caps_families_for_ids():
    assert capabilities_for("mistral", "mistral-large").mistral_ids
    assert capabilities_for("custom", "gemini-2.5-pro").gemini_schema


def test_caps_overrides():
    c = capabilities_for("custom", "x", {"max_output_cap": 8192, "no_stream_options": True,
                                         "reasoning_style": "none", "single_system": "true"})
    assert (c.max_output_cap, c.no_stream_options, c.reasoning_style, c.single_system) == (8192, True, "none", True)
    # overrides win over family detection
    assert capabilities_for("openai", "gpt-5", {"no_sampling": False}).no_sampling is False


def test_caps_unknown_override_names_field():
    with pytest.raises(ValueError, match="no_such_flag"):
        capabilities_for("openai", "gpt-4o", {"no_such_flag": True})


@pytest.mark.parametrize("field,value", [("token_field", "max_len"), ("max_output_cap", 0),
                                         ("no_stop", "maybe"), ("reasoning_style", "anthropic")])
def test_caps_bad_override_value(field, value):
    with pytest.raises(ValueError, match=field):
        capabilities_for("openai", "gpt-4o", {field: value})


# ---------------------------------------------------------------------------------------------
# names (§1.6.6, §1.7)
# ---------------------------------------------------------------------------------------------

def test_tool_name_valid_passes_through():
    assert upstream_tool_name("mcp__github__create_issue") == "mcp__github__create_issue"
    assert upstream_tool_name("a" * 64) == "a" * 64


def test_tool_name_long_is_shortened_deterministically():
    short = upstream_tool_name(LONG_MCP)
    assert short == LONG_MCP[:55] + "_" + hashlib.sha256(LONG_MCP.encode()).hexdigest()[:8]
    assert len(short) == 64 and re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", short)
    assert upstream_tool_name(LONG_MCP + "2") != short          # shared prefix, different names


def test_tool_name_invalid_chars_replaced():
    assert upstream_tool_name("my.tool") == "my_tool_" + hashlib.sha256(b"my.tool").hexdigest()[:8]


def test_tool_id_mapping():
    assert upstream_tool_id("toolu_01A") == "toolu_01A"
    long_id = "toolu_" + "x" * 40
    assert upstream_tool_id(long_id) == "call_" + hashlib.sha256(long_id.encode()).hexdigest()[:24]
    assert upstream_tool_id("bad id!") == "call_" + hashlib.sha256(b"bad id!").hexdigest()[:24]


def test_tool_id_mistral():
    assert upstream_tool_id("abcDEF123", mistral=True) == "abcDEF123"
    mapped = upstream_tool_id("toolu_01A", mistral=True)
    assert mapped == hashlib.sha256(b"toolu_01A").hexdigest()[:9]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", mapped)


# ---------------------------------------------------------------------------------------------
# schema sanitizer (§1.7)
# ---------------------------------------------------------------------------------------------

def test_schema_removes_meta_keys_and_bad_formats():
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "$comment": "c",
              "type": "object",
              "properties": {"url": {"type": "string", "format": "uri"},
                             "when": {"type": "string", "format": "date-time"},
                             "format": {"type": "string", "$comment": "a property called format"},
                             "list": {"type": "array", "items": {"type": "string", "format": "email", "$id": "i"}}},
              "additionalProperties": False}
    before = copy.deepcopy(schema)
    out = sanitize_schema(schema)
    assert out == {"type": "object",
                   "properties": {"url": {"type": "string"},
                                  "when": {"type": "string", "format": "date-time"},
                                  "format": {"type": "string"},
                                  "list": {"type": "array", "items": {"type": "string", "format": "email"}}},
                   "additionalProperties": False}
    assert schema == before


def test_schema_top_level_object_with_properties():
    assert sanitize_schema({}) == {"type": "object", "properties": {}}
    assert sanitize_schema(None) == {"type": "object", "properties": {}}
    assert sanitize_schema({"properties": {"a": {"type": "string"}}}) == \
        {"properties": {"a": {"type": "string"}}, "type": "object"}


def test_schema_output_does_not_alias_input():
    schema = {"type": "object", "properties": {"m": {"enum": ["a", "b"], "default": {"k": [1]}}}}
    out = sanitize_schema(schema)
    out["properties"]["m"]["enum"].append("c")
    out["properties"]["m"]["default"]["k"].append(2)
    assert schema["properties"]["m"] == {"enum": ["a", "b"], "default": {"k": [1]}}


def test_schema_gemini():
    schema = {"type": "object", "additionalProperties": False,
              "$defs": {"Pos": {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 1}},
              "properties": {"n": {"$ref": "#/$defs/Pos", "description": "count"},
                             "k": {"const": "x", "default": "x", "examples": ["x"], "type": "string"},
                             "d": {"type": "string", "format": "date"},
                             "t": {"type": "string", "format": "date-time"},
                             "m": {"type": "object", "propertyNames": {"pattern": "^a"},
                                   "patternProperties": {"^a": {"type": "string"}}}}}
    assert sanitize_schema(schema, gemini=True) == {
        "type": "object",
        "properties": {"n": {"type": "integer", "description": "count"},
                       "k": {"type": "string"},
                       "d": {"type": "string"},
                       "t": {"type": "string", "format": "date-time"},
                       "m": {"type": "object"}}}


def test_schema_gemini_recursive_ref_terminates():
    schema = {"type": "object", "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
              "properties": {"root": {"$ref": "#/$defs/Node"}}}
    out = sanitize_schema(schema, gemini=True)
    assert out["properties"]["root"] == {"type": "object", "properties": {"next": {"type": "object"}}}


def test_schema_gemini_ref_with_non_ascii_or_huge_index_is_unresolvable_not_a_crash():
    # "²".isdigit() is True (int() rejects it); 5000 digits exceed int()'s limit on 3.11+.
    for index in ("²", "9" * 5000):
        schema = {"type": "object", "$defs": {"L": [{"type": "string"}]},
                  "properties": {"a": {"$ref": f"#/$defs/L/{index}"}, "b": {"$ref": "#/$defs/L/0"}}}
        out = sanitize_schema(schema, gemini=True)
        assert out["properties"] == {"a": {}, "b": {"type": "string"}}


def test_function_tool_memoized_and_strips_extras():
    tool = {"name": "Placeholder", "description": "d", "input_schema": {"type": "object", "properties": {}},
            "defer_loading": True, "cache_control": {"type": "ephemeral"}}
    entry = function_tool(tool)
    assert entry == {"type": "function", "function": {"name": "Placeholder", "description": "d",
                                                      "parameters": {"type": "object", "properties": {}}}}
    assert function_tool(copy.deepcopy(tool)) is entry                     # same content -> cached
    changed = dict(tool, description="other")
    assert function_tool(changed)["function"]["description"] == "other"


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,needle", [
    ([], "JSON object"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0"),
    ({"model": "m", "messages": [{"role": "user", "content": ["str"]}]}, "messages.0.content.0"),
    ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": "100", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": None, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "stop_sequences": "END", "messages": [{"role": "user", "content": "x"}]}, "stop_sequences"),
    ({"model": "m", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}, "temperature"),
    ({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "R", "input": {}}]}]},
     "messages.0.content.0.id"),
])
def test_invalid_requests_raise(body, needle):
    with pytest.raises(InvalidRequest, match=re.escape(needle)):
        translate_request(body, "up", CAPS)


def test_tool_choice_invalid():
    tools = [{"name": "R", "input_schema": {"type": "object"}}]
    with pytest.raises(InvalidRequest, match="tool_choice"):
        tr(tools=tools, tool_choice={"type": "tool"})
    with pytest.raises(InvalidRequest, match="tool_choice"):
        tr(tools=tools, tool_choice={"type": "sometimes"})


def user_with(*blocks):
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "x"}]}]


def image_source(**source):
    return {"type": "image", "source": source}


@pytest.mark.parametrize("fields,needle", [
    ({"stream": "yes"}, "stream: must be a boolean"),
    ({"thinking": True}, "thinking: must be an object"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type:"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1023}}, "thinking.budget_tokens:"),
    ({"thinking": {"type": "enabled", "budget_tokens": 10 ** 9}}, "thinking.budget_tokens:"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type:"),          # checked even without tools
    ({"tool_choice": ["auto"]}, "tool_choice: must be an object"),
    ({"tool_choice": {"type": "tool", "name": ""}}, "tool_choice.name:"),
    ({"tool_choice": {"type": "any", "disable_parallel_tool_use": 1}}, "tool_choice.disable_parallel_tool_use:"),
    ({"tools": [{"name": "T", "input_schema": []}]}, "tools.0.input_schema: must be an object"),
    ({"max_tokens": 1_000_001}, "max_tokens: must be an integer from 1 to 1000000"),
    ({"stop_sequences": ["s"] * 1025}, "stop_sequences: at most 1024"),
    ({"temperature": float("nan")}, "temperature: must be a finite number"),
    ({"top_p": float("inf")}, "top_p: must be a finite number"),
    ({"messages": user_with(image_source(type="base64", media_type="image/png", data="a b="))},
     "messages.0.content.0.source.data: invalid base64"),
    ({"messages": user_with(image_source(type="base64", media_type="image/png", data="AAAA=A=="))},
     "messages.0.content.0.source.data: invalid base64"),
    ({"messages": user_with(image_source(type="base64", media_type="image/png", data="A==="))},
     "messages.0.content.0.source.data: invalid base64"),
    ({"messages": user_with(image_source(type="base64", media_type="image/png", data=""))},
     "messages.0.content.0.source.data: must be a non-empty base64 string"),
    ({"messages": user_with(image_source(type="base64", media_type="image/bmp", data="Qk0="))},
     "messages.0.content.0.source.media_type:"),
    ({"messages": user_with(image_source(type="url", url="ftp://host/x.png"))}, "messages.0.content.0.source.url:"),
    ({"messages": user_with(image_source(type="url", url="data:image/png,rawbytes"))},
     "messages.0.content.0.source.url: a data URL must be"),
    ({"messages": user_with(image_source(type="url"))}, "messages.0.content.0.source.url: must be a non-empty"),
    ({"messages": user_with({"type": "image"})}, "messages.0.content.0.source: must be an object"),
    ({"messages": user_with({"type": "document", "source": {"type": "base64", "data": "JVBERi0"}})},
     "messages.0.content.0.source.data: invalid base64"),
])
def test_invalid_field_values_name_the_field(fields, needle):
    with pytest.raises(InvalidRequest, match=re.escape(needle)):
        tr(**fields)


def test_valid_field_values_pass():
    out, _ = tr(messages=user_with(image_source(type="base64", media_type="image/webp", data="UklGRg=="),
                                   image_source(type="base64", data="R0lGOA=="),      # media type defaults
                                   image_source(type="url", url="HTTPS://example.com/a.png"),
                                   image_source(type="url", url="data:image/png;base64,iVBORw0KGgo=")),
                stream=None, thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=1_000_000,
                tool_choice={"type": "none", "disable_parallel_tool_use": True}, stop_sequences=["a"] * 1024)
    urls = [p["image_url"]["url"] for p in out["messages"][0]["content"] if p["type"] == "image_url"]
    assert urls == ["data:image/webp;base64,UklGRg==", "data:image/png;base64,R0lGOA==",
                    "HTTPS://example.com/a.png", "data:image/png;base64,iVBORw0KGgo="]


# ---------------------------------------------------------------------------------------------
# §1.1 top-level fields
# ---------------------------------------------------------------------------------------------

def test_allowlist_drops_anthropic_only_fields():
    out, _ = tr(context_management={"edits": []}, service_tier="auto", container="c", mcp_servers=[],
                metadata={"user_id": "u"}, output_config={"format": {"type": "json"}},
                cache_control={"type": "ephemeral"}, anthropic_beta=["x"], stream=False)
    assert out == {"model": "up-model", "messages": [{"role": "user", "content": "hi"}]}


def test_max_tokens_absent_sends_no_token_field():
    out, ctx = tr()
    assert "max_tokens" not in out and "max_completion_tokens" not in out and ctx.max_tokens == 0


def test_max_tokens_field_and_clamp():
    out, ctx = tr(Capabilities(token_field="max_completion_tokens", max_output_cap=16384), max_tokens=128000)
    assert out["max_completion_tokens"] == 16384 and "max_tokens" not in out and ctx.max_tokens == 16384
    out, ctx = tr(Capabilities(max_output_cap=16384), max_tokens=1000)
    assert out["max_tokens"] == 1000 and ctx.max_tokens == 1000


def test_max_tokens_reasoning_minimum():
    assert tr(Capabilities(reasoning=True), max_tokens=5)[0]["max_tokens"] == 16
    assert tr(Capabilities(reasoning=False), max_tokens=5)[0]["max_tokens"] == 5
    assert tr(Capabilities(reasoning=True, max_output_cap=8), max_tokens=5)[0]["max_tokens"] == 8


def test_stop_sequences_first_four():
    out, ctx = tr(stop_sequences=["a", "b", "c", "d", "e"])
    assert out["stop"] == ["a", "b", "c", "d"] and "stop_sequences" not in out
    assert ctx.stop_sequences == ["a", "b", "c", "d"]


def test_stop_sequences_omitted_for_no_stop():
    out, ctx = tr(Capabilities(no_stop=True), stop_sequences=["END"])
    assert "stop" not in out and ctx.stop_sequences == []


def test_sampling_pass_and_omit():
    out, _ = tr(temperature=0.2, top_p=0.9, top_k=40)
    assert (out["temperature"], out["top_p"]) == (0.2, 0.9) and "top_k" not in out
    out, _ = tr(Capabilities(no_sampling=True), temperature=0.2, top_p=0.9)
    assert "temperature" not in out and "top_p" not in out
    assert tr(Capabilities(pass_top_k=True), top_k=40)[0]["top_k"] == 40


def test_stream_options():
    out, ctx = tr(stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True} and ctx.stream
    out, _ = tr(Capabilities(no_stream_options=True), stream=True)
    assert out["stream"] is True and "stream_options" not in out
    out, ctx = tr(stream=False)
    assert "stream" not in out and ctx.stream is False


def test_metadata_user_id():
    uid = '{"device_id":"abc","session_id":"s"}'
    assert "user" not in tr(metadata={"user_id": uid})[0]
    out, _ = tr(Capabilities(send_user=True), metadata={"user_id": uid})
    assert out["user"] == hashlib.sha256(uid.encode()).hexdigest() and len(out["user"]) == 64


# ---------------------------------------------------------------------------------------------
# §1.4 system
# ---------------------------------------------------------------------------------------------

def test_system_string():
    assert msgs([{"role": "user", "content": "hi"}], system="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_system_blocks_joined_billing_header_dropped():
    system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli;"},
              {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "\nB"}]
    assert msgs([{"role": "user", "content": "hi"}], system=system)[0] == {"role": "system", "content": "A\n\n\nB"}
    kept = msgs([{"role": "user", "content": "hi"}], Capabilities(strip_billing_header=False), system=system)
    assert kept[0]["content"].startswith("x-anthropic-billing-header:")


def test_system_empty_omitted():
    assert msgs([{"role": "user", "content": "hi"}], system=[{"type": "text", "text": "  "}]) == \
        [{"role": "user", "content": "hi"}]
    assert msgs([{"role": "user", "content": "hi"}], system="") == [{"role": "user", "content": "hi"}]


def test_inline_system_message_kept_in_place():
    out = msgs([{"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "# Env"}]},
                {"role": "assistant", "content": "ok"}], system="S")
    assert out == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                   {"role": "system", "content": "# Env"}, {"role": "assistant", "content": "ok"}]


def test_inline_system_merged_when_single_system():
    out = msgs([{"role": "user", "content": "hi"}, {"role": "system", "content": "# Env"},
                {"role": "user", "content": "more"}], Capabilities(single_system=True), system="S")
    assert out == [{"role": "system", "content": "S\n\n# Env"}, {"role": "user", "content": "hi\n\nmore"}]
    # no top-level system: the inline one becomes the leading message
    out = msgs([{"role": "user", "content": "hi"}, {"role": "system", "content": "# Env"}],
               Capabilities(single_system=True))
    assert out == [{"role": "system", "content": "# Env"}, {"role": "user", "content": "hi"}]


def test_inline_system_does_not_break_tool_pairing():
    out = msgs([{"role": "user", "content": "go"},
                {"role": "assistant", "content": [tool_use("t1")]},
                {"role": "system", "content": "reminder"},
                {"role": "user", "content": [tool_result("t1", "done"), {"type": "text", "text": "next"}]}])
    assert out == [{"role": "user", "content": "go"},
                   {"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                   {"role": "tool", "tool_call_id": "t1", "content": "done"},
                   {"role": "system", "content": "reminder"},
                   {"role": "user", "content": "next"}]


# ---------------------------------------------------------------------------------------------
# §1.5 content blocks
# ---------------------------------------------------------------------------------------------

def test_user_all_text_joined_and_blank_text_dropped():
    out = msgs([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": " \n"},
                                             {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]}])
    assert out == [{"role": "user", "content": "a\n\nb"}]


def test_user_images():
    content = [{"type": "text", "text": "see"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
               {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
               {"type": "image", "source": {"type": "file", "file_id": "file_123"}}]
    assert msgs([{"role": "user", "content": content}]) == [{"role": "user", "content": [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "text", "text": "[file file_123 omitted]"}]}]


def test_document_pdf_file_part_or_placeholder():
    doc = {"type": "document", "title": "spec.pdf",
           "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    assert msgs([{"role": "user", "content": [doc]}], Capabilities(pdf_file_parts=True)) == [
        {"role": "user", "content": [{"type": "file", "file": {"filename": "spec.pdf",
                                                                "file_data": "data:application/pdf;base64,JVBERi0="}}]}]
    untitled = {k: v for k, v in doc.items() if k != "title"}
    part = msgs([{"role": "user", "content": [untitled]}], Capabilities(pdf_file_parts=True))[0]["content"][0]
    assert part["file"]["filename"] == "document.pdf"
    assert msgs([{"role": "user", "content": [doc]}]) == \
        [{"role": "user", "content": "[PDF omitted: upstream cannot read PDFs]"}]


def test_document_text_and_content_sources():
    text_doc = {"type": "document", "title": "T", "context": "C",
                "source": {"type": "text", "media_type": "text/plain", "data": "body"}}
    content_doc = {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "x"},
                                                                                 {"type": "text", "text": "y"}]}}
    file_doc = {"type": "document", "source": {"type": "file", "file_id": "file_9"}}
    assert msgs([{"role": "user", "content": [text_doc, content_doc, file_doc]}]) == \
        [{"role": "user", "content": "T\nC\nbody\n\nx\ny\n\n[file file_9 omitted]"}]


def test_search_result_and_tool_reference_become_text():
    sr = {"type": "search_result", "title": "Doc", "source": "https://d", "content": [{"type": "text", "text": "hit"}]}
    ref = {"type": "tool_reference", "tool_name": "WebFetch"}
    assert msgs([{"role": "user", "content": [sr, ref]}]) == \
        [{"role": "user", "content": "Doc\nhttps://d\nhit\n\n[tool_reference: WebFetch]"}]


def test_unknown_and_thinking_blocks_dropped_from_user():
    content = [{"type": "mystery_block", "x": 1}, {"type": "thinking", "thinking": "t", "signature": "s"},
               {"type": "text", "text": "hi"}]
    assert msgs([{"role": "user", "content": content}]) == [{"role": "user", "content": "hi"}]


def test_assistant_text_concatenated_thinking_dropped():
    content = [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
               {"type": "redacted_thinking", "data": "xx"},
               {"type": "text", "text": "one"}, {"type": "text", "text": ""}, {"type": "text", "text": "two"}]
    assert msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": content}])[1] == \
        {"role": "assistant", "content": "one\n\ntwo"}


def test_assistant_thinking_roundtrip():
    content = [{"type": "thinking", "thinking": "need file", "signature": ""}, tool_use("t1")]
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": content},
                {"role": "user", "content": [tool_result("t1")]}], Capabilities(reasoning_roundtrip=True))
    assert out[1] == {"role": "assistant", "content": None, "reasoning_content": "need file",
                      "tool_calls": [call("t1")]}


def test_server_tool_use_summarized_for_assistant():
    content = [{"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {"query": "x"}},
               {"type": "web_search_tool_result", "tool_use_id": "srv_1",
                "content": [{"type": "web_search_result", "title": "X", "url": "https://x"}]},
               {"type": "text", "text": "found"}]
    assert msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": content}])[1] == {
        "role": "assistant",
        "content": '[server tool web_search called with {"query": "x"}]\n\n[web search results: X <https://x>]\n\nfound'}


def test_tool_use_arguments_deterministic_json():
    inp = {"b": "é", "a": [1, {"z": None}]}
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1", "Write", inp)]},
                {"role": "user", "content": [tool_result("t1")]}])
    assert out[1]["tool_calls"][0]["function"]["arguments"] == '{"b": "é", "a": [1, {"z": null}]}'
    again = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1", "Write", inp)]},
                  {"role": "user", "content": [tool_result("t1")]}])
    assert again == out


# ---------------------------------------------------------------------------------------------
# §1.6 ordering and normalization
# ---------------------------------------------------------------------------------------------

def test_assistant_tool_calls_only_content_null_or_empty_string():
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1")]},
               {"role": "user", "content": [tool_result("t1")]}]
    assert msgs(history)[1]["content"] is None
    assert msgs(history, Capabilities(assistant_empty_string=True))[1]["content"] == ""


def test_empty_assistant_dropped():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "text", "text": " "}]},
                {"role": "user", "content": "again"}])
    assert out == [{"role": "user", "content": "q\n\nagain"}]


def test_tool_messages_first_then_user_text():
    out = msgs([{"role": "user", "content": "q"},
                {"role": "assistant", "content": [tool_use("t1"), tool_use("t2", "Bash")]},
                {"role": "user", "content": [{"type": "text", "text": "note"}, tool_result("t2", "B"),
                                             tool_result("t1", "A")]}])
    assert out[2:] == [{"role": "tool", "tool_call_id": "t2", "content": "B"},
                       {"role": "tool", "tool_call_id": "t1", "content": "A"},
                       {"role": "user", "content": "note"}]


def test_tool_result_list_content_and_images_lifted():
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}
    result = tool_result("t1", [{"type": "text", "text": "line1"}, img, {"type": "text", "text": "line2"}])
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1")]},
                {"role": "user", "content": [result, {"type": "text", "text": "look"}]}])
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "line1\n[image returned; see next message]\nline2"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]}]


def test_tool_result_error_and_empty():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1"), tool_use("t2")]},
                {"role": "user", "content": [tool_result("t1", "boom", is_error=True), tool_result("t2", [])]}])
    assert out[2:] == [{"role": "tool", "tool_call_id": "t1", "content": "[tool error] boom"},
                       {"role": "tool", "tool_call_id": "t2", "content": "(no content)"}]


def test_missing_tool_result_gets_placeholder():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1"), tool_use("t2")]},
                {"role": "user", "content": [tool_result("t1", "A"), {"type": "text", "text": "stop"}]}])
    assert out[2:] == [{"role": "tool", "tool_call_id": "t1", "content": "A"},
                       {"role": "tool", "tool_call_id": "t2", "content": "(no result: tool call was interrupted)"},
                       {"role": "user", "content": "stop"}]


def test_interrupted_call_followed_by_assistant_or_end():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1")]},
                {"role": "assistant", "content": "resumed"}])
    assert out[1:] == [{"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                       {"role": "tool", "tool_call_id": "t1", "content": "(no result: tool call was interrupted)"},
                       {"role": "assistant", "content": "resumed"}]
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t9")]}])
    assert out[-1] == {"role": "tool", "tool_call_id": "t9", "content": "(no result: tool call was interrupted)"}


def test_orphan_and_duplicate_tool_results_dropped():
    out = msgs([{"role": "user", "content": [tool_result("ghost"), {"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [tool_use("t1")]},
                {"role": "user", "content": [tool_result("t1", "A"), tool_result("t1", "again"), tool_result("zz")]}])
    assert out == [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                   {"role": "tool", "tool_call_id": "t1", "content": "A"}]


def test_consecutive_user_messages_merged_not_across_tools():
    out = msgs([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [tool_use("t1")]},
                {"role": "user", "content": [tool_result("t1")]}, {"role": "user", "content": "c"}])
    assert out == [{"role": "user", "content": "a\n\nb"},
                   {"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                   {"role": "tool", "tool_call_id": "t1", "content": "ok"},
                   {"role": "user", "content": "c"}]


def test_long_ids_mapped_identically():
    long_id = "toolu_" + "9" * 50
    mapped = "call_" + hashlib.sha256(long_id.encode()).hexdigest()[:24]
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use(long_id)]},
                {"role": "user", "content": [tool_result(long_id, "A")]}])
    assert out[1]["tool_calls"][0]["id"] == mapped and out[2] == {"role": "tool", "tool_call_id": mapped, "content": "A"}


def test_mistral_ids_mapped_identically():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("toolu_01A")]},
                {"role": "user", "content": [tool_result("toolu_01A", "A")]}], Capabilities(mistral_ids=True))
    expect = hashlib.sha256(b"toolu_01A").hexdigest()[:9]
    assert out[1]["tool_calls"][0]["id"] == expect and out[2]["tool_call_id"] == expect


def test_trailing_assistant_prefill_forwarded():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is"}])
    assert out[-1] == {"role": "assistant", "content": "The answer is"}


# ---------------------------------------------------------------------------------------------
# §1.7 tools, §1.8 tool_choice
# ---------------------------------------------------------------------------------------------

READ_TOOL = {"name": "Read", "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}}}
SERVER_TOOLS = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "str_replace"}]


def test_server_tools_dropped():
    out, _ = tr(tools=SERVER_TOOLS + [READ_TOOL])
    assert [t["function"]["name"] for t in out["tools"]] == ["Read"]


def test_empty_tool_list_omits_tools_and_tool_choice():
    out, _ = tr(tools=SERVER_TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & out.keys()
    out, _ = tr(tools=[], tool_choice={"type": "auto"})
    assert not {"tools", "tool_choice"} & out.keys()


def test_tool_without_description_and_no_strict():
    out, _ = tr(tools=[READ_TOOL])
    assert out["tools"] == [{"type": "function", "function": {
        "name": "Read", "parameters": {"type": "object", "properties": {"p": {"type": "string"}}}}}]


def test_long_tool_names_shortened_everywhere_and_mapped_back():
    short = upstream_tool_name(LONG_MCP)
    out, ctx = tr(tools=[{"name": LONG_MCP, "input_schema": {"type": "object", "properties": {}}}, READ_TOOL],
                  tool_choice={"type": "tool", "name": LONG_MCP},
                  messages=[{"role": "user", "content": "q"},
                            {"role": "assistant", "content": [tool_use("t1", LONG_MCP)]},
                            {"role": "user", "content": [tool_result("t1")]}])
    assert out["tools"][0]["function"]["name"] == short
    assert out["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert out["tool_choice"] == {"type": "function", "function": {"name": short}}
    assert ctx.name_map == {short: LONG_MCP}


def test_gemini_schema_flag_applied_to_tools():
    tool = {"name": "T", "input_schema": {"type": "object", "additionalProperties": False,
                                          "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}}}
    out, _ = tr(Capabilities(gemini_schema=True), tools=[tool])
    assert out["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {"n": {"type": "integer"}}}


@pytest.mark.parametrize("choice,caps,expected", [
    ({"type": "auto"}, CAPS, "auto"),
    ({"type": "any"}, CAPS, "required"),
    ({"type": "any"}, Capabilities(no_forced_tool_choice=True), "auto"),
    ({"type": "tool", "name": "Read"}, CAPS, {"type": "function", "function": {"name": "Read"}}),
    ({"type": "tool", "name": "Read"}, Capabilities(no_forced_tool_choice=True), "auto"),
    ({"type": "none"}, CAPS, "none"),
])
def test_tool_choice_mapping(choice, caps, expected):
    out, _ = tr(caps, tools=[READ_TOOL], tool_choice=choice)
    assert out["tool_choice"] == expected and "parallel_tool_calls" not in out


def test_tool_choice_absent_and_parallel():
    assert "tool_choice" not in tr(tools=[READ_TOOL])[0]
    out, _ = tr(tools=[READ_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is False
    out, _ = tr(Capabilities(no_parallel_param=True), tools=[READ_TOOL],
                tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert "parallel_tool_calls" not in out


# ---------------------------------------------------------------------------------------------
# §1.9 reasoning and show_thinking
# ---------------------------------------------------------------------------------------------

OPENAI_R = Capabilities(reasoning=True, reasoning_style="openai")
OPENROUTER_R = Capabilities(reasoning=True, reasoning_style="openrouter")
DEEPSEEK_R = Capabilities(reasoning=True, reasoning_style="deepseek")
REASONING_KEYS = ("reasoning_effort", "reasoning", "thinking")


def reasoning_of(caps, **fields):
    out, _ = tr(caps, **fields)
    return {k: out[k] for k in REASONING_KEYS if k in out}


@pytest.mark.parametrize("budget,effort", [(1024, "low"), (3999, "low"), (4000, "medium"), (16000, "medium"),
                                           (16001, "high")])
def test_openai_budget_thresholds(budget, effort):
    assert reasoning_of(OPENAI_R, thinking={"type": "enabled", "budget_tokens": budget}) == {"reasoning_effort": effort}


def test_openai_effort_and_adaptive():
    assert reasoning_of(OPENAI_R, thinking={"type": "adaptive"}) == {}
    assert reasoning_of(OPENAI_R) == {}
    for effort, expected in (("low", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "high"),
                             ("max", "high")):
        assert reasoning_of(OPENAI_R, thinking={"type": "enabled", "budget_tokens": 1024},
                            output_config={"effort": effort}) == {"reasoning_effort": expected}


def test_reasoning_not_sent_to_non_reasoning_models():
    assert reasoning_of(Capabilities(), thinking={"type": "enabled", "budget_tokens": 20000},
                        output_config={"effort": "high"}) == {}
    assert reasoning_of(Capabilities(reasoning=True, reasoning_style="none"), output_config={"effort": "high"}) == {}


def test_openrouter_reasoning():
    assert reasoning_of(OPENROUTER_R, thinking={"type": "enabled", "budget_tokens": 5000}) == \
        {"reasoning": {"max_tokens": 5000}}
    assert reasoning_of(OPENROUTER_R, thinking={"type": "adaptive"}) == {"reasoning": {"enabled": True}}
    assert reasoning_of(OPENROUTER_R, thinking={"type": "adaptive"}, output_config={"effort": "xhigh"}) == \
        {"reasoning": {"effort": "high"}}
    assert reasoning_of(OPENROUTER_R) == {}
    assert reasoning_of(OPENROUTER_R, thinking={"type": "disabled"}, output_config={"effort": "low"}) == {}


def test_deepseek_reasoning():
    assert reasoning_of(DEEPSEEK_R, thinking={"type": "enabled", "budget_tokens": 5000}) == \
        {"thinking": {"type": "enabled"}}
    assert reasoning_of(DEEPSEEK_R, thinking={"type": "adaptive"}, output_config={"effort": "medium"}) == \
        {"thinking": {"type": "enabled"}, "reasoning_effort": "high"}
    assert reasoning_of(DEEPSEEK_R, output_config={"effort": "low"}) == {"reasoning_effort": "low"}
    assert reasoning_of(DEEPSEEK_R, output_config={"effort": "max"}) == {"reasoning_effort": "max"}
    assert reasoning_of(DEEPSEEK_R) == {}


def test_show_thinking():
    assert tr(thinking={"type": "adaptive", "display": "omitted"})[1].show_thinking is True
    assert tr(thinking={"type": "enabled", "budget_tokens": 2000})[1].show_thinking is True
    assert tr()[1].show_thinking is False
    assert tr(thinking={"type": "disabled"})[1].show_thinking is False
    assert tr(Capabilities(always_show_reasoning=True))[1].show_thinking is True
    assert tr(Capabilities(reasoning_roundtrip=True))[1].show_thinking is True


# ---------------------------------------------------------------------------------------------
# replay of real Claude Code captures (§8)
# ---------------------------------------------------------------------------------------------

CHAT_TOP_KEYS = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "tools",
                 "tool_choice", "parallel_tool_calls", "stop", "temperature", "top_p", "top_k",
                 "reasoning_effort", "reasoning", "thinking", "user"}
ANTHROPIC_ONLY = {"cache_control", "tool_use_id", "input_schema", "stop_sequences", "context_management",
                  "output_config", "metadata", "defer_loading", "is_error", "budget_tokens", "signature",
                  "tool_use", "tool_result", "system"}


def walk_keys(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k
            yield from walk_keys(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_keys(v, f"{path}/{i}")


def assert_valid_chat_body(out):
    assert set(out) <= CHAT_TOP_KEYS
    for path, key in walk_keys(out):
        assert key != "cache_control", path
        if "/parameters" not in path:
            assert key not in ANTHROPIC_ONLY, (path, key)
    messages = out["messages"]
    i = 0
    while i < len(messages):
        m = messages[i]
        assert m["role"] in ("system", "user", "assistant", "tool")
        if m["role"] == "user" and isinstance(m["content"], list):
            assert {p["type"] for p in m["content"]} <= {"text", "image_url", "file"}
        if m["role"] in ("system", "tool"):
            assert isinstance(m["content"], str) and m["content"]
        if m["role"] == "tool":
            raise AssertionError(f"tool message at {i} without a preceding tool_calls message")
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = [c["id"] for c in m["tool_calls"]]
            answers = messages[i + 1:i + 1 + len(ids)]
            assert [a["role"] for a in answers] == ["tool"] * len(ids)
            assert sorted(a["tool_call_id"] for a in answers) == sorted(ids)
            for c in m["tool_calls"]:
                assert isinstance(json.loads(c["function"]["arguments"]), dict)
            i += len(ids)
        i += 1


def load_fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.parametrize("fixture", ["first_request.json", "tool_result_request.json"])
@pytest.mark.parametrize("provider,model", [("openai", "gpt-4.1"), ("openai", "gpt-5"), ("openai", "o3"),
                                            ("deepseek", "deepseek-reasoner"), ("openrouter", "openai/gpt-4o"),
                                            ("ollama", "qwen3:8b"), ("custom", "gemini-2.5-flash")])
def test_fixture_replay(fixture, provider, model):
    body = load_fixture(fixture)
    before = copy.deepcopy(body)
    caps = capabilities_for(provider, model)
    out, ctx = translate_request(body, model, caps)
    assert body == before
    assert_valid_chat_body(out)

    assert out["model"] == model and ctx.requested_model == "claude-opus-5-5" and ctx.upstream_model == model
    expected = min(128000, caps.max_output_cap or 128000)   # known models are clamped to their limit
    assert out[caps.token_field] == expected and ctx.max_tokens == expected
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert ctx.show_thinking is True                      # adaptive thinking, display "omitted"
    assert ctx.name_map == {}
    assert ctx.estimated_input_tokens > 10000             # ~49 KB of prompt and tools

    # every custom tool translated, in order, none dropped
    assert [t["function"]["name"] for t in out["tools"]] == [t["name"] for t in body["tools"]]
    for tool in out["tools"]:
        params = tool["function"]["parameters"]
        assert params["type"] == "object" and isinstance(params["properties"], dict)
        assert "$schema" not in json.dumps(params)
    placeholder = next(t for t in out["tools"] if t["function"]["name"] == "DeferredToolPlaceholder")
    assert placeholder["function"]["parameters"] == {"type": "object", "properties": {}}

    # system: billing header gone, the rest kept; inline system message present in place
    dumped = json.dumps(out)
    assert "x-anthropic-billing-header" not in dumped
    first = out["messages"][0]
    assert first["role"] == "system" and first["content"].startswith("You are a Claude agent")
    roles = [m["role"] for m in out["messages"]]
    assert roles[:3] == ["system", "user", "system"]
    assert out["messages"][2]["content"].startswith("# Environment")
    assert "create a file out.txt containing hello" in out["messages"][1]["content"]


def test_fixture_tool_result_turn_pairs_tool_call():
    out, _ = translate_request(load_fixture("tool_result_request.json"), "gpt-4.1",
                               capabilities_for("openai", "gpt-4.1"))
    assert out["messages"][3:] == [
        {"role": "assistant", "content": None, "tool_calls": [call(
            "toolu_5baba808d9ec4e1f845c8e9e", "Bash",
            '{"command": "echo hello > out.txt", "description": "Create out.txt containing hello"}')]},
        {"role": "tool", "tool_call_id": "toolu_5baba808d9ec4e1f845c8e9e", "content": "(Bash completed with no output)"}]


def test_fixture_effort_mapping_and_single_system():
    body = load_fixture("first_request.json")
    out, _ = translate_request(body, "gpt-5", capabilities_for("openai", "gpt-5"))
    assert out["reasoning_effort"] == "medium" and "temperature" not in out
    assert "reasoning_effort" not in translate_request(body, "gpt-4.1", capabilities_for("openai", "gpt-4.1"))[0]
    out, _ = translate_request(body, "m", capabilities_for("custom", "m", {"single_system": True}))
    assert [m["role"] for m in out["messages"]] == ["system", "user"]
    assert "# Environment" in out["messages"][0]["content"]


def test_fixture_send_user_and_clamp():
    body = load_fixture("first_request.json")
    out, ctx = translate_request(body, "m", capabilities_for("custom", "m", {"send_user": True, "max_output_cap": 8192}))
    assert out["max_tokens"] == 8192 and ctx.max_tokens == 8192
    assert out["user"] == hashlib.sha256(body["metadata"]["user_id"].encode()).hexdigest()


@pytest.mark.parametrize("model, cap", [("gpt-4o", 16384), ("openai/gpt-4o-mini", 16384), ("gpt-4.1", 32768),
                                        ("o3-mini", 100000), ("deepseek-chat", 8192), ("llama3.1", None)])
def test_known_models_get_their_output_cap(model, cap):
    caps = capabilities_for("openai", model)
    assert caps.max_output_cap == cap
    out, ctx = translate_request({"model": "claude-opus-4-1", "max_tokens": 128000,
                                  "messages": [{"role": "user", "content": "hi"}]}, model, caps)
    assert out[caps.token_field] == (cap or 128000)
    assert capabilities_for("openai", model, {"max_output_cap": 1000}).max_output_cap == 1000


# ---------------------------------------------------------------------------------------------
# regressions found by the request-side audit
# ---------------------------------------------------------------------------------------------

def test_billing_line_dropped_but_prompt_after_it_kept():
    header = "x-anthropic-billing-header: cc_version=2.1.330; cc_entrypoint=cli;"
    # string system prompt (and inline system message) whose first line is the attribution line
    out = msgs([{"role": "user", "content": "hi"}, {"role": "system", "content": header + "\n# Env"}],
               system=header + "\nYou are helpful.")
    assert out == [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hi"},
                   {"role": "system", "content": "# Env"}]
    # a block carrying the header line plus prompt text keeps the prompt text
    out = msgs([{"role": "user", "content": "hi"}], system=[{"type": "text", "text": header + "\n\nA"},
                                                            {"type": "text", "text": "B"}])
    assert out[0] == {"role": "system", "content": "A\n\nB"}
    # the header alone still disappears entirely
    assert msgs([{"role": "user", "content": "hi"}], system=header) == [{"role": "user", "content": "hi"}]


def test_forced_tool_choice_of_dropped_server_tool_becomes_auto():
    tools = [READ_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    out, _ = tr(tools=tools, tool_choice={"type": "tool", "name": "web_search"})
    assert [t["function"]["name"] for t in out["tools"]] == ["Read"]
    assert out["tool_choice"] == "auto"          # never a function the body does not define
    out, _ = tr(tools=tools, tool_choice={"type": "tool", "name": "Read"})
    assert out["tool_choice"] == {"type": "function", "function": {"name": "Read"}}


def test_reasoning_roundtrip_tool_call_turn_without_thinking_gets_empty_reasoning_content():
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1")]},
               {"role": "user", "content": [tool_result("t1")]}, {"role": "assistant", "content": "done"}]
    out = msgs(history, Capabilities(reasoning_roundtrip=True))
    assert out[1] == {"role": "assistant", "content": None, "reasoning_content": "", "tool_calls": [call("t1")]}
    assert out[3] == {"role": "assistant", "content": "done"}     # only tool-calling turns need it
    assert "reasoning_content" not in msgs(history)[1]            # other providers never see the field


def test_tool_result_empty_text_parts_skipped():
    out = msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": [tool_use("t1")]},
                {"role": "user", "content": [tool_result("t1", [{"type": "text", "text": ""},
                                                                {"type": "text", "text": "a"},
                                                                {"type": "text", "text": " "}])]}])
    assert out[2] == {"role": "tool", "tool_call_id": "t1", "content": "a"}


def test_caps_o_series_never_sent_parallel_tool_calls():
    for model in ("o1", "o3-mini", "o3", "o4-mini"):
        caps = capabilities_for("openai", model)
        assert caps.no_parallel_param, model
        out, _ = tr(caps, tools=[READ_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
        assert "parallel_tool_calls" not in out
    assert not capabilities_for("openai", "gpt-4o").no_parallel_param
    assert not capabilities_for("openai", "gpt-5").no_parallel_param


@pytest.mark.parametrize("model", ["gpt-5-chat-latest", "gpt-5.1-chat-latest", "openai/gpt-5-chat"])
def test_caps_gpt5_chat_models_are_not_reasoning_and_capped(model):
    caps = capabilities_for("openrouter" if "/" in model else "openai", model)
    assert (caps.reasoning, caps.max_output_cap) == (False, 16384)
    body = load_fixture("first_request.json")     # effort medium, max_tokens 128000
    out, _ = translate_request(body, model, caps)
    assert not set(REASONING_KEYS) & set(out) and out[caps.token_field] == 16384
    assert capabilities_for("openai", "gpt-5-mini").reasoning is True


@pytest.mark.parametrize("provider,model,flags", [
    ("openai", "gpt-4o", {}), ("openai", "o3-mini", {}), ("openai", "gpt-5", {}), ("azure", "my-deployment", {}),
    ("openrouter", "openai/gpt-4o", {}), ("openrouter", "deepseek/deepseek-r1", {}), ("custom", "llama3.1", {}),
    ("custom", "deepseek-reasoner", {}), ("custom", "qwen3:8b", {"think_tags": True}),
    ("custom", "m", {"single_system": True})])
def test_fixture_replay_deterministic_and_pure(provider, model, flags):
    caps = capabilities_for(provider, model, flags)
    for name in ("first_request.json", "tool_result_request.json"):
        body = load_fixture(name)
        pristine = json.dumps(body)
        first = json.dumps(translate_request(body, model, caps)[0])
        again = json.dumps(translate_request(load_fixture(name), model, caps)[0])
        assert first == again                       # byte-identical: upstream prefix caches hit
        assert json.dumps(body) == pristine         # input never mutated
        out, _ = translate_request(body, model, caps)
        assert_valid_chat_body(out)
        # the output shares no mutable object with the input
        ids = set()
        def collect(node):
            if isinstance(node, (dict, list)):
                ids.add(id(node))
                for v in node.values() if isinstance(node, dict) else node:
                    collect(v)
        collect(body)
        def check(node):
            if isinstance(node, (dict, list)):
                assert id(node) not in ids
                for v in node.values() if isinstance(node, dict) else node:
                    check(v)
        check(out)


# ---------------------------------------------------------------------------------------------
# forced tool choice for servers that take tool_choice only as a string (llama.cpp)

TWO_TOOLS = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}},
             {"name": "get_time", "description": "t", "input_schema": {"type": "object", "properties": {}}}]


def test_forced_tool_is_an_object_by_default():
    out, _ = tr(tools=TWO_TOOLS, tool_choice={"type": "tool", "name": "get_time"})
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather", "get_time"]


def test_forced_tool_becomes_required_over_only_that_tool_for_string_only_servers(caplog):
    caps = Capabilities(string_tool_choice=True)
    with caplog.at_level("DEBUG", logger="clasp"):
        out, _ = tr(caps, tools=TWO_TOOLS, tool_choice={"type": "tool", "name": "get_time"})
    assert out["tool_choice"] == "required"
    assert [t["function"]["name"] for t in out["tools"]] == ["get_time"]
    assert any("get_time" in r.getMessage() and "required" in r.getMessage() for r in caplog.records)
    # the other choices are strings already and keep every tool
    for choice, sent in (({"type": "any"}, "required"), ({"type": "auto"}, "auto"), ({"type": "none"}, "none")):
        out, _ = tr(caps, tools=TWO_TOOLS, tool_choice=choice)
        assert out["tool_choice"] == sent and len(out["tools"]) == 2


def test_string_tool_choice_is_a_model_flag():
    assert capabilities_for("custom", "m", {"string_tool_choice": "true"}).string_tool_choice is True
    assert capabilities_for("custom", "m").string_tool_choice is False
