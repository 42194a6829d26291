"""What the Responses API request and response translators share (issue 13).

The reasoning round trip: an upstream `reasoning` output item (id + encrypted_content) travels
to the client as the `signature` of a thinking block, and comes back in a later request as a
`reasoning` input item. The signature is recognisably clasp's ("clasp.r1." prefix), so a real
Anthropic signature in the history is never mistaken for one. Pure, standard library only.
"""
from __future__ import annotations

import base64
import binascii
import json

__all__ = ["REASONING_SIGNATURE_PREFIX", "encode_reasoning_signature", "decode_reasoning_signature"]

REASONING_SIGNATURE_PREFIX = "clasp.r1."


def encode_reasoning_signature(item_id: str, encrypted: str) -> str:
    """`"clasp.r1." + base64url(json {"id": item_id, "enc": encrypted})`."""
    payload = json.dumps({"id": item_id, "enc": encrypted}, separators=(",", ":")).encode("ascii")
    return REASONING_SIGNATURE_PREFIX + base64.urlsafe_b64encode(payload).decode("ascii")


def decode_reasoning_signature(sig: object) -> tuple[str, str] | None:
    """(item_id, encrypted_content) of a signature encode_reasoning_signature made; None for
    anything else (a real Anthropic signature, "", damaged text)."""
    if not isinstance(sig, str) or not sig.startswith(REASONING_SIGNATURE_PREFIX):
        return None
    data = sig[len(REASONING_SIGNATURE_PREFIX):]
    data += "=" * (-len(data) % 4)  # accept it with or without padding
    try:
        obj = json.loads(base64.b64decode(data, altchars=b"-_", validate=True))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    item_id, enc = obj.get("id"), obj.get("enc")
    if isinstance(item_id, str) and item_id and isinstance(enc, str) and enc:
        return item_id, enc
    return None
