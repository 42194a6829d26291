"""Tool-name shortening and tool-call id mapping (PROTOCOL §1.6.6, §1.7).

Both are pure functions of their input, so every turn maps the same history the same way
without any per-session state, and upstream prefix caches keep hitting. Claude Code repeats
the same ~20 names and ids on every request, hence the small memo caches.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache

__all__ = ["upstream_tool_name", "upstream_tool_id"]

_NAME_OK = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_ID_OK = re.compile(r"[A-Za-z0-9_-]{1,40}")
_MISTRAL_ID_OK = re.compile(r"[A-Za-z0-9]{9}")


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@lru_cache(maxsize=2048)
def upstream_tool_name(name: str) -> str:
    """Name valid for OpenAI-style function names (^[a-zA-Z0-9_-]{1,64}$).

    Valid names pass through; others become name[:55] (invalid characters -> "_") + "_" +
    the first 8 hex digits of sha256(name): at most 64 characters, and the hash keeps
    names that share a 55-character prefix (long mcp__ names) apart."""
    if _NAME_OK.fullmatch(name):
        return name
    return _NAME_BAD_CHARS.sub("_", name[:55]) + "_" + _sha256_hex(name)[:8]


@lru_cache(maxsize=4096)
def upstream_tool_id(tool_id: str, mistral: bool = False) -> str:
    """Tool-call id accepted upstream, applied identically to tool_calls[].id and tool_call_id.

    Default: ids matching ^[A-Za-z0-9_-]{1,40}$ are kept (OpenAI rejects longer ones), others
    become "call_" + sha256(id)[:24]. mistral=True: exactly 9 alphanumerics, so anything else
    is replaced by the first 9 hex digits of the hash."""
    if mistral:
        if _MISTRAL_ID_OK.fullmatch(tool_id):
            return tool_id
        return _sha256_hex(tool_id)[:9]
    if _ID_OK.fullmatch(tool_id):
        return tool_id
    return "call_" + _sha256_hex(tool_id)[:24]
