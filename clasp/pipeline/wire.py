"""JSON bodies in and out of the proxy, and Anthropic error responses."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from clasp.redaction import drop_secrets
from clasp.server.http import Responder
from clasp.translate.errors import InvalidRequest, ProxyError, error_response
from clasp.translate.jsontext import (MAX_NESTING, deep_path, finite_float, has_lone_surrogate_escape, json_utf8,
                                      lone_surrogate_path, nesting_exceeds, reject_constant)
from clasp.translate.schema import encoded_tools

JSON_HEADER = ("content-type", "application/json")


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON; always valid and encodable (jsontext.json_utf8)."""
    return json_utf8(obj)


def payload_bytes(body: dict) -> bytes:
    """json_bytes(body) for an upstream request body, with the memoized JSON of its tools list
    spliced in (the same bytes; the ~30 KB of Claude Code tools is not re-serialized per turn)."""
    tools = body.get("tools")
    encoded = encoded_tools(tools) if isinstance(tools, list) and tools else None
    if encoded is None:
        return json_bytes(body)
    before: dict = {}
    after: dict = {}
    part = before
    for key, value in body.items():
        if key == "tools":
            part = after
        else:
            part[key] = value
    parts = [b'"tools":' + encoded]
    if before:
        parts.insert(0, json_bytes(before)[1:-1])
    if after:
        parts.append(json_bytes(after)[1:-1])
    return b"{" + b",".join(parts) + b"}"


_BOM = b"\xef\xbb\xbf"
_decoder = json.JSONDecoder(parse_constant=reject_constant, parse_float=finite_float)


def parse_body(raw: bytes) -> dict:
    """A client's JSON request body; InvalidRequest when it is not a JSON object, or holds what
    the proxy could not pass on intact (jsontext): bytes that are not UTF-8, lone surrogates,
    NaN / Infinity, nesting deeper than MAX_NESTING. Checked here, before anything recursive
    (estimator, translator, cache key) sees the body."""
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    if raw[:3] == _BOM:
        raw = raw[3:]
    try:
        # Strict UTF-8 (json.loads(bytes) would also take UTF-16 and encoded surrogates).
        raw = bytes(raw)  # no copy for bytes
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        body = _decoder.decode(text)
    except RecursionError:
        raise InvalidRequest(f"request body is nested too deeply (more than {MAX_NESTING} levels "
                             "of arrays and objects)") from None
    except ValueError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if nesting_exceeds(body):
        raise InvalidRequest(f"{deep_path(body)}: nested more than {MAX_NESTING} levels deep "
                             "(arrays and objects)")
    if has_lone_surrogate_escape(raw):
        found = lone_surrogate_path(body)
        if found is not None:
            raise InvalidRequest(f"{found[0]}: string contains a lone surrogate ({found[1]}), "
                                 "which is not valid Unicode")
    return body


def invalid(message: str) -> ProxyError:
    """400 invalid_request_error for a client mistake (retrying cannot fix it)."""
    return ProxyError(400, "invalid_request_error", message, {"x-should-retry": "false"}, False)


def scrub(err: ProxyError, secrets: list[str]) -> ProxyError:
    """Drop configured keys from an upstream error message: some servers echo the key they got."""
    message = drop_secrets(err.message, secrets)
    return err if message == err.message else dataclasses.replace(err, message=message)


async def send_json(resp: Responder, status: int, obj: Any) -> None:
    await resp.send(status, [JSON_HEADER], json_bytes(obj))


async def send_error(resp: Responder, err: ProxyError, request_id: str | None = None) -> None:
    status, headers, body = error_response(err, request_id)
    if request_id:
        headers = [*headers, ("request-id", request_id)]
    await resp.send(status, headers, body)
