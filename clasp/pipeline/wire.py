"""JSON bodies in and out of the proxy, and Anthropic error responses."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from clasp.redaction import drop_secrets
from clasp.server.http import Responder
from clasp.translate.errors import InvalidRequest, ProxyError, error_response
from clasp.translate.schema import encoded_tools

JSON_HEADER = ("content-type", "application/json")


def json_bytes(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate, which a client's JSON may escape ("\udc00") but UTF-8 cannot carry:
        # pass it on escaped, as it came (the common case pays nothing for this).
        return json.dumps(obj, separators=(",", ":")).encode()


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


def parse_body(raw: bytes) -> dict:
    """A client's JSON request body; InvalidRequest when it is not a JSON object."""
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
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
