"""SSE parser (PROTOCOL.md §3.2) and Anthropic SSE encoder (§3.1)."""
from __future__ import annotations

import json
import random

import pytest

from clasp.translate.sse import SSEParser, encode_event, encode_events


def parse(*pieces: bytes) -> list[str]:
    p = SSEParser()
    out: list[str] = []
    for piece in pieces:
        out.extend(p.feed(piece))
    out.extend(p.close())
    return out


def test_basic_events_and_done() -> None:
    raw = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert parse(raw) == ['{"a":1}', '{"b":2}', "[DONE]"]


def test_event_dispatched_only_at_blank_line() -> None:
    p = SSEParser()
    assert p.feed(b'data: {"a":1}\n') == []
    assert p.feed(b"\n") == ['{"a":1}']


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    raw = eol.join([b"data: one", b"", b"data: two", b"data: three", b"", b""])
    assert parse(raw) == ["one", "two\nthree"]


def test_crlf_split_between_cr_and_lf_does_not_make_an_extra_blank_line() -> None:
    # If the LF after a CR in the next read were seen as a second line end, "a" and "b"
    # would be dispatched as two events instead of one two-line event.
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\ndata: b\r") == []
    assert p.feed(b"\n\r") == ["a\nb"]
    assert p.feed(b"\n") == []
    assert p.close() == []


def test_comments_and_other_fields_ignored() -> None:
    raw = (b": OPENROUTER PROCESSING\n\n"
           b"event: completion\nid: 7\nretry: 1000\nfoo: bar\ndata: x\n\n"
           b":keepalive\n\n")
    assert parse(raw) == ["x"]


def test_data_prefix_optional_single_space() -> None:
    assert parse(b"data:x\n\n") == ["x"]
    assert parse(b"data:  two spaces\n\n") == [" two spaces"]
    # A "data" line without a colon is an empty data line; with another line it adds a newline.
    assert parse(b"data\ndata: y\n\n") == ["\ny"]


def test_empty_events_are_not_reported() -> None:
    assert parse(b"data:\n\n\n\nevent: ping\n\n") == []


def test_pending_data_dispatched_at_close() -> None:
    p = SSEParser()
    assert p.feed(b"data: [DONE]") == []
    assert p.close() == ["[DONE]"]
    p = SSEParser()
    assert p.feed(b"data: tail\n") == []
    assert p.close() == ["tail"]


def test_multibyte_character_split_across_reads() -> None:
    raw = 'data: {"t":"é日🎉"}\n\n'.encode("utf-8")
    for i in range(len(raw) + 1):
        assert parse(raw[:i], raw[i:]) == ['{"t":"é日🎉"}']


def test_invalid_utf8_does_not_raise() -> None:
    assert parse(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_utf8_bom_at_start_is_skipped_even_when_split() -> None:
    raw = b"\xef\xbb\xbfdata: x\n\n"
    for i in range(len(raw) + 1):
        assert parse(raw[:i], raw[i:]) == ["x"]


def test_long_line_in_many_reads() -> None:
    body = "x" * 100_000
    raw = f"data: {body}\n\n".encode()
    pieces = [raw[i:i + 1000] for i in range(0, len(raw), 1000)]
    assert parse(*pieces) == [body]


def test_split_anywhere_equals_whole() -> None:
    raw = (b": c\r\n"
           b"data: {\"a\":\"\xc3\xa9\"}\r\n\r\n"
           b"event: x\nid: 1\ndata: l1\ndata: l2\n\n"
           b"data: cr\r\rdata: last")
    whole = parse(raw)
    assert whole == ['{"a":"é"}', "l1\nl2", "cr", "last"]
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert parse(raw[:i], raw[i:j], raw[j:]) == whole
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(raw)), 8))
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        assert parse(*pieces) == whole


def test_feed_empty_bytes_is_harmless() -> None:
    p = SSEParser()
    assert p.feed(b"") == []
    assert p.feed(b"data: a\n") == []
    assert p.feed(b"") == []
    assert p.feed(b"\n") == ["a"]


# ---- encoder

def test_encode_event_exact_bytes() -> None:
    ev = {"type": "content_block_delta", "index": 0,
          "delta": {"type": "text_delta", "text": "héllo \"q\"\n"}}
    assert encode_event(ev) == (
        b'event: content_block_delta\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\xc3\xa9llo \\"q\\"\\n"}}\n\n')


def test_encode_event_ping_and_unknown_type() -> None:
    assert encode_event({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_event({"type": "custom"}) == b'event: custom\ndata: {"type":"custom"}\n\n'


def test_encode_lone_surrogate_becomes_replacement_character() -> None:
    # A lone surrogate cannot be UTF-8; escaping it would let the client store text that the
    # proxy (like the real API) rejects when the conversation is sent back: U+FFFD instead.
    ev = {"type": "content_block_delta", "index": 0,
          "delta": {"type": "text_delta", "text": json.loads('"a\\ud800b"')}}
    out = encode_event(ev)
    assert out.startswith(b"event: content_block_delta\ndata: ")
    data = out.split(b"\n")[1][len(b"data: "):]
    assert json.loads(data.decode("utf-8"))["delta"]["text"] == "a\ufffdb"


def test_encode_non_finite_number_becomes_null() -> None:
    out = encode_event({"type": "message_delta", "usage": {"output_tokens": float("nan")}})
    data = out.split(b"\n")[1][len(b"data: "):]
    assert json.loads(data, parse_constant=lambda c: pytest.fail(c)) == \
        {"type": "message_delta", "usage": {"output_tokens": None}}


def test_encode_events_concatenates_and_round_trips_through_parser() -> None:
    events = [{"type": "message_start", "message": {"id": "msg_1", "content": []}},
              {"type": "ping"},
              {"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "line1\nline2 日本"}},
              {"type": "message_stop"}]
    wire = encode_events(events)
    assert wire == b"".join(encode_event(e) for e in events)
    assert encode_events([]) == b""
    assert [json.loads(p) for p in parse(wire)] == events
    # Every event is named: the client ignores unnamed data lines.
    assert wire.count(b"event: ") == len(events)
