"""Local token estimator (PROTOCOL §6.2): exact values for small inputs, sane values for the
real Claude Code captures, and no crash on malformed count_tokens bodies."""
from __future__ import annotations

import base64
import json
import os
import struct

import pytest

from clasp.translate.tokens import estimate_tokens, image_tokens

FIXTURES = os.environ.get("CLASP_FIXTURES", "/work/shared/fixtures/claude-code")


def user(content):
    return {"messages": [{"role": "user", "content": content}]}


def test_ascii_four_chars_per_token_plus_message_overhead():
    assert estimate_tokens(user("abcd" * 10)) == 10 + 4
    assert estimate_tokens(user("abcde")) == 2 + 4                 # ceil(5/4)


def test_non_ascii_one_and_a_half_chars_per_token():
    assert estimate_tokens(user("é" * 3)) == 2 + 4
    assert estimate_tokens(user("ab日本")) == 2 + 4                 # ceil(2/4 + 2/1.5)


def test_per_message_overhead():
    body = {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": []},
                         {"role": "user", "content": "abcd"}]}
    assert estimate_tokens(body) == 3 * 4 + 1


def test_system_string_and_blocks():
    assert estimate_tokens({"system": "a" * 8, **user("")}) == 2 + 4
    blocks = [{"type": "text", "text": "a" * 8}, {"type": "text", "text": "b" * 4, "cache_control": {}}]
    assert estimate_tokens({"system": blocks, **user("")}) == 3 + 4


def test_tool_use_input_and_tool_result_and_thinking():
    content = [{"type": "thinking", "thinking": "t" * 8, "signature": "s" * 400},
               {"type": "redacted_thinking", "data": "x" * 400},
               {"type": "tool_use", "id": "toolu_1", "name": "Rd", "input": {"a": 1}}]   # '{"a": 1}' = 8
    body = {"messages": [{"role": "assistant", "content": content},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                       "content": [{"type": "text", "text": "r" * 6}]}]}]}
    assert estimate_tokens(body) == (8 + 2 + 8 + 6) // 4 + 2 * 4


def test_images_default_and_png_size():
    default = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    assert estimate_tokens(user([default])) == 1600 + 4
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", 100, 75) + b"\x08\x06\x00\x00\x00"
           + b"\x00" * 30)
    small = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png).decode()}}
    assert estimate_tokens(user([small])) == 10 + 4                # 100*75/750
    gif = b"GIF89a" + struct.pack("<HH", 3000, 3000) + b"\x00" * 30
    assert image_tokens({"type": "base64", "data": base64.b64encode(gif).decode()}) == 1600   # capped


def test_image_inside_tool_result_counted():
    content = [{"type": "tool_result", "tool_use_id": "t",
                "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}]
    assert estimate_tokens(user(content)) == 1600 + 4


def test_documents_and_search_results():
    doc = {"type": "document", "title": "tt", "source": {"type": "text", "media_type": "text/plain", "data": "dddddd"}}
    assert estimate_tokens(user([doc])) == 2 + 4
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    assert estimate_tokens(user([pdf])) == 1600 + 4
    sr = {"type": "search_result", "title": "ab", "source": "cd", "content": [{"type": "text", "text": "efgh"}]}
    assert estimate_tokens(user([sr])) == 2 + 4


def test_tools_overhead_and_schema():
    schema = {"type": "object"}                                     # '{"type": "object"}' = 18 chars
    tool = {"name": "Read", "description": "abcdef", "input_schema": schema}
    assert estimate_tokens({"tools": [tool], **user("")}) == 300 + 4 + 7   # ceil((4+6+18)/4)
    assert estimate_tokens({"tools": [], **user("")}) == 4


@pytest.mark.parametrize("body", [[], None, "x", {}, {"messages": "x"}, {"messages": [None, 5]},
                                  {"system": 7, "tools": [None, {"name": 3}], "messages": [{"content": [1, None]}]}])
def test_malformed_bodies_do_not_crash(body):
    assert estimate_tokens(body) >= 0
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        overhead = 300 if body.get("tools") else 0      # a non-empty tools list still costs its overhead
        assert estimate_tokens(body) == 4 * len(body["messages"]) + overhead


def test_count_tokens_minimal_body():
    # Claude Code may send exactly this to /v1/messages/count_tokens
    assert estimate_tokens({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "foo"}]}) == 5


@pytest.mark.parametrize("name", ["first_request.json", "tool_result_request.json"])
def test_fixture_estimates_are_plausible(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as fh:
        raw = fh.read()
    body = json.loads(raw)
    estimate = estimate_tokens(body)
    # Roughly a quarter of the payload's characters; never zero, never wildly off.
    assert len(raw) / 8 < estimate < len(raw) / 2
    no_tools = dict(body, tools=[])
    assert estimate - estimate_tokens(no_tools) > 300 + 30000 / 4 * 0.8   # the ~31 KB of tools count
