"""The memoized hot paths give exactly what the plain computations give: the upstream payload
with spliced tools JSON, the tool converter's content key, the memoized schema token counts."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from clasp.pipeline.wire import json_bytes as _json_bytes, payload_bytes as _payload_bytes
from clasp.translate.capabilities import capabilities_for
from clasp.translate.request import translate_request
from clasp.translate.schema import content_key, encoded_tools, function_tool
from clasp.translate.tokens import _Counter, estimate_tokens

FIXTURE = Path("/work/shared/fixtures/claude-code/first_request.json")


def _tool(name: str, schema: dict, description: str = "does things") -> dict:
    return {"name": name, "description": description, "input_schema": schema}


def _body(tools: list, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "tools": tools,
            "messages": [{"role": "user", "content": "héllo \u2603"}], **extra}


def _translated(body: dict, provider: str = "custom", model: str = "gpt-test") -> dict:
    return translate_request(body, model, capabilities_for(provider, model))[0]


SCHEMA = {"type": "object", "properties": {"path": {"type": "string", "description": "ünïcode \u2603"},
                                           "n": {"type": "integer", "minimum": 1}},
          "required": ["path"], "additionalProperties": False}


@pytest.mark.parametrize("extra", [{}, {"tool_choice": {"type": "tool", "name": "Read"}},
                                   {"temperature": 0.5, "stop_sequences": ["x"]}])
def test_payload_is_byte_identical_to_plain_serialization(extra):
    body = _body([_tool("Read", SCHEMA), _tool("Write", {"type": "object"})], **extra)
    for _ in range(3):  # first call fills the memo, later ones splice the cached bytes
        out = _translated(copy.deepcopy(body))
        assert _payload_bytes(out) == _json_bytes(out)
        json.loads(_payload_bytes(out))


def test_payload_of_the_real_claude_code_request_is_identical():
    if not FIXTURE.is_file():
        pytest.skip("Claude Code capture not available")
    raw = FIXTURE.read_bytes()
    for _ in range(2):
        out = _translated(json.loads(raw))
        assert _payload_bytes(out) == _json_bytes(out)


def test_payload_without_tools_or_with_unshared_entries_falls_back():
    out = _translated(_body([]))
    assert "tools" not in out and _payload_bytes(out) == _json_bytes(out)
    # a tools list whose entries are not function_tool's shared ones is serialized normally
    own = {"model": "m", "tools": [{"type": "function", "function": {"name": "x"}}], "n": 1}
    assert encoded_tools(own["tools"]) is None
    assert _payload_bytes(own) == _json_bytes(own)
    own["tools"][0]["function"]["name"] = "y"  # never cached: a change shows up
    assert b'"name":"y"' in _payload_bytes(own)


def test_encoded_tools_follows_the_list_content_and_order():
    a = function_tool(_tool("A", SCHEMA))
    b = function_tool(_tool("B", {"type": "object"}))
    for tools in ([a, b], [b, a], [a], [a, a, b]):
        assert encoded_tools(tools) == json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode()


def test_content_key_keeps_types_and_key_order():
    assert content_key({"a": 1}) == content_key(json.loads('{"a": 1}'))
    keys = {content_key(v) for v in ({"a": 1}, {"a": 1.0}, {"a": True}, {"a": "1"}, {"a": [1]})}
    assert len(keys) == 5
    assert content_key({"a": 1, "b": 2}) != content_key({"b": 2, "a": 1})
    assert isinstance(content_key({"x": object()}), str)  # not marshallable: json.dumps fallback


def test_tool_converter_does_not_confuse_equal_comparing_schemas():
    t1 = function_tool(_tool("T", {"type": "object", "properties": {"n": {"type": "number", "minimum": 1}}}))
    t2 = function_tool(_tool("T", {"type": "object", "properties": {"n": {"type": "number", "minimum": 1.0}}}))
    assert json.dumps(t1) != json.dumps(t2)
    assert t2["function"]["parameters"]["properties"]["n"]["minimum"] == 1.0
    assert isinstance(t2["function"]["parameters"]["properties"]["n"]["minimum"], float)


@pytest.mark.parametrize("schema", [SCHEMA, {"type": "object", "default": True}, {"type": "object", "default": 1},
                                    {"x": "\u2603" * 50}, {"x": object()}, None, [], "text"])
def test_memoized_schema_count_equals_direct_count(schema):
    def direct(body):
        c = _Counter()
        c.fixed += 300 + 4
        c.text("héllo \u2603")
        for tool in body["tools"]:
            c.text(tool["name"])
            c.text(tool["description"])
            c.json(tool["input_schema"])
        return c.total()

    body = {"messages": [{"role": "user", "content": "héllo \u2603"}],
            "tools": [{"name": "T", "description": "d", "input_schema": schema}]}
    assert estimate_tokens(body) == direct(body)
    assert estimate_tokens(body) == direct(body)  # second call served from the memo


def test_estimate_of_a_circular_schema_does_not_fail():
    schema: dict = {"type": "object"}
    schema["self"] = schema
    assert estimate_tokens({"messages": [], "tools": [{"name": "T", "input_schema": schema}]}) > 0
