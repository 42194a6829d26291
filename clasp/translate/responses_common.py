"""Helpers shared by the Responses API translators (responses_request / responses_response /
responses_stream).

The reasoning round trip: a Responses `reasoning` output item (id + encrypted_content) is handed
to the client as a `thinking` block whose signature carries both values; when the client sends
that block back in a later request it becomes a `reasoning` input item again. The signature is
recognisably clasp's ("clasp.r1." prefix) so real Anthropic signatures in the same history are
told apart and dropped. Encode and decode live here only, so both directions agree.
Pure functions, standard library only.
"""
from __future__ import annotations

import base64
import binascii
import json

__all__ = ["REASONING_SIGNATURE_PREFIX", "encode_reasoning_signature", "decode_reasoning_signature"]

REASONING_SIGNATURE_PREFIX = "clasp.r1."


def encode_reasoning_signature(item_id: str, encrypted: str) -> str:
    """The thinking-block signature for a Responses reasoning item:
    "clasp.r1." + base64url(JSON {"id": item_id, "enc": encrypted}), unpadded."""
    payload = json.dumps({"id": item_id, "enc": encrypted}, separators=(",", ":"), ensure_ascii=True)
    return REASONING_SIGNATURE_PREFIX + base64.urlsafe_b64encode(payload.encode("ascii")).rstrip(b"=").decode("ascii")


def decode_reasoning_signature(sig: object) -> tuple[str, str] | None:
    """(item_id, encrypted_content) from a signature made by encode_reasoning_signature, or None
    for anything else (another issuer's signature, a damaged or hostile value). Never raises."""
    if not isinstance(sig, str) or not sig.startswith(REASONING_SIGNATURE_PREFIX):
        return None
    data = sig[len(REASONING_SIGNATURE_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        obj = json.loads(raw.decode("ascii"))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    item_id = obj.get("id")
    encrypted = obj.get("enc")
    if not isinstance(item_id, str) or not isinstance(encrypted, str) or not encrypted:
        return None
    return item_id, encrypted
