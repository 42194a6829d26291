"""JSON-schema sanitizer for tool input schemas, and the memoized tool converter (PROTOCOL §1.7).

Claude Code sends the same ~30 KB tool list on every turn, so `function_tool` caches the
converted entry by the tool's content. Cached results are shared between requests:
callers MUST NOT mutate what `function_tool` returns (the request translator only places it
into the upstream body, which is serialized and discarded).
"""
from __future__ import annotations

import json
import marshal
import threading
from collections import OrderedDict
from typing import Any, Mapping

from clasp.translate.names import upstream_tool_name

__all__ = ["sanitize_schema", "function_tool", "responses_tool", "encoded_tools", "ALLOWED_FORMATS"]

# String formats OpenAI's function schemas accept; others (e.g. "uri") are rejected.
ALLOWED_FORMATS = frozenset(
    ("date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"))
_GEMINI_FORMATS = frozenset(("enum", "date-time"))

_ALWAYS_DROP = frozenset(("$schema", "$id", "$comment"))
_GEMINI_DROP = frozenset((
    "additionalProperties", "propertyNames", "patternProperties", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "const", "default", "examples", "$ref", "$defs",
    "definitions",
))
# Keywords whose value is a schema, a list of schemas, or a name -> schema map. Only these are
# recursed into, so a *property* called "format" or "$id" is never mistaken for a keyword.
_SCHEMA_KEYS = frozenset((
    "items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties",
))
_SCHEMA_LIST_KEYS = frozenset(("anyOf", "oneOf", "allOf", "prefixItems"))
_SCHEMA_MAP_KEYS = frozenset(("properties", "patternProperties", "$defs", "definitions",
                              "dependentSchemas"))
_MAX_REF_DEPTH = 16


def _copy_json(value: Any) -> Any:
    """Copy of plain JSON data (enum values, defaults): the result must not alias the input."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


class _Sanitizer:
    __slots__ = ("gemini", "root", "ref_stack")

    def __init__(self, root: Mapping[str, Any], gemini: bool) -> None:
        self.gemini = gemini
        self.root = root
        self.ref_stack: list[str] = []

    def _resolve(self, ref: str) -> Any:
        """Target of a local JSON pointer ("#/$defs/X"), or None."""
        if not ref.startswith("#"):
            return None
        node: Any = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif (isinstance(node, list) and part.isascii() and part.isdigit()
                  and len(part) <= 18 and int(part) < len(node)):
                node = node[int(part)]
            else:
                return None
        return node

    def schema(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return _copy_json(node)          # boolean schemas (true/false) and oddities
        gemini = self.gemini
        if gemini and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            target = self._resolve(ref)
            if ref in self.ref_stack or len(self.ref_stack) >= _MAX_REF_DEPTH:
                inlined: Any = {"type": "object"}  # recursive type: stop expanding, stay permissive
            elif isinstance(target, dict):
                self.ref_stack.append(ref)
                try:
                    inlined = self.schema(target)
                finally:
                    self.ref_stack.pop()
            else:
                inlined = {}                   # unresolvable: accept anything rather than fail
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if not siblings:
                return inlined
            merged = dict(inlined) if isinstance(inlined, dict) else {}
            merged.update(self.schema(siblings))
            return merged

        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _ALWAYS_DROP or (gemini and key in _GEMINI_DROP):
                continue
            if key == "format" and isinstance(value, str):
                if value not in (_GEMINI_FORMATS if gemini else ALLOWED_FORMATS):
                    continue
                out[key] = value
            elif key in _SCHEMA_MAP_KEYS and isinstance(value, dict):
                out[key] = {name: self.schema(sub) for name, sub in value.items()}
            elif key in _SCHEMA_LIST_KEYS and isinstance(value, list):
                out[key] = [self.schema(sub) for sub in value]
            elif key in _SCHEMA_KEYS:
                if isinstance(value, list):    # legacy tuple form of "items"
                    out[key] = [self.schema(sub) for sub in value]
                else:
                    out[key] = self.schema(value)
            else:
                out[key] = _copy_json(value)
        return out


def sanitize_schema(schema: Any, gemini: bool = False) -> dict:
    """A new, sanitized copy of a tool input_schema (the input is never mutated).

    The top level is always {"type": "object", "properties": {...}}; $schema/$id/$comment are
    removed at every level; `format` is kept only for formats upstreams accept. gemini=True also
    inlines local $ref/$defs and removes keywords Gemini rejects."""
    if not isinstance(schema, dict):
        return {"type": "object", "properties": {}}
    out = _Sanitizer(schema, gemini).schema(schema)
    top_type = out.get("type")
    if top_type != "object":
        # ["object", "null"] or a missing type: the upstream requires a plain object schema.
        out["type"] = "object"
    if not isinstance(out.get("properties"), dict):
        out["properties"] = {}
    return out


def content_key(value: Any) -> bytes | str:
    """An exact, hashable key for parsed JSON: equal keys mean equal content, with key order and
    the distinctions between true, 1 and 1.0 kept (unlike ==).

    marshal format 2 is ~4x faster than json.dumps and depends on content only (formats 3 and
    up add back-references that depend on object identity and reference counts); values it
    cannot encode (objects other than JSON types, very deep nesting) fall back to json.dumps,
    whose str keys can never equal marshal's bytes."""
    try:
        return marshal.dumps(value, 2)
    except (ValueError, TypeError):
        return json.dumps(value, sort_keys=False, default=str)


_TOOL_CACHE: OrderedDict[tuple, dict] = OrderedDict()
_TOOL_CACHE_MAX = 512
_TOOL_CACHE_LOCK = threading.Lock()


def function_tool(tool: Mapping[str, Any], gemini: bool = False) -> dict:
    """Chat Completions function tool for an Anthropic custom tool (caller checked it is one).

    {"type": "function", "function": {"name": upstream_tool_name(name), "description": ...,
    "parameters": sanitize_schema(input_schema)}}; `strict` is deliberately not set. The result
    is memoized by (name, description, input_schema) and shared: do not mutate it."""
    name = tool["name"]
    description = tool.get("description")
    schema = tool.get("input_schema")
    # Key on the content that affects the output, not on cache_control / defer_loading noise.
    key = (gemini, name, description if isinstance(description, str) else None, content_key(schema))
    with _TOOL_CACHE_LOCK:
        hit = _TOOL_CACHE.get(key)
        if hit is not None:
            _TOOL_CACHE.move_to_end(key)
            return hit
    function: dict[str, Any] = {"name": upstream_tool_name(name)}
    if isinstance(description, str):
        function["description"] = description
    function["parameters"] = sanitize_schema(schema, gemini=gemini)
    return _remember(key, {"type": "function", "function": function})


def _remember(key: tuple, entry: dict) -> dict:
    """Store a converted entry in the memo (and in _SHARED, for encoded_tools); returns it."""
    with _TOOL_CACHE_LOCK:
        old = _TOOL_CACHE.get(key)  # another thread converted the same tool meanwhile
        if old is not None:
            _SHARED.pop(id(old), None)
        _TOOL_CACHE[key] = entry
        _SHARED[id(entry)] = entry
        if len(_TOOL_CACHE) > _TOOL_CACHE_MAX:
            _SHARED.pop(id(_TOOL_CACHE.popitem(last=False)[1]), None)
    return entry


def responses_tool(tool: Mapping[str, Any], gemini: bool = False) -> dict:
    """Responses API function tool for an Anthropic custom tool: the flat
    {"type": "function", "name", "description", "parameters", "strict": false}, with the same
    name shortening and sanitized schema as function_tool (whose memoized entry it is built
    from). `strict` is set because the Responses API defaults it to true, which rejects
    ordinary schemas (optional properties, no additionalProperties: false). Memoized and
    shared like function_tool: do not mutate it."""
    description = tool.get("description")
    key = ("responses", gemini, tool["name"], description if isinstance(description, str) else None,
           content_key(tool.get("input_schema")))
    with _TOOL_CACHE_LOCK:
        hit = _TOOL_CACHE.get(key)
        if hit is not None:
            _TOOL_CACHE.move_to_end(key)
            return hit
    function = function_tool(tool, gemini)["function"]
    entry: dict[str, Any] = {"type": "function", "name": function["name"]}
    if "description" in function:
        entry["description"] = function["description"]
    entry["parameters"] = function["parameters"]   # shared with the chat entry: never mutated
    entry["strict"] = False
    return _remember(key, entry)


# id -> entry for every entry in _TOOL_CACHE (the map holds the entry, so an id found here
# belongs to that very object); and the compact JSON of recent tool lists made of such entries.
_SHARED: dict[int, dict] = {}
_LISTS: OrderedDict[tuple[int, ...], tuple[tuple[dict, ...], bytes]] = OrderedDict()
_LISTS_MAX = 32


def encoded_tools(tools: list) -> bytes | None:
    """The compact UTF-8 JSON of a tools list built from `function_tool` (or `responses_tool`)
    entries, exactly as ``json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode()``
    would make it, or None when an entry is not one of the shared, memoized ones.

    Claude Code sends the same tools on every turn, so the same entry objects come back in the
    same order: their ~30 KB of JSON is serialized once, and the bytes object is shared by every
    request that carries the list (less CPU, and one copy in memory however many are in flight).
    Keyed by the entries' identities: safe because the memo holds the entries (an id cannot be
    reused while they live) and shared entries are never mutated."""
    ids = tuple(map(id, tools))
    with _TOOL_CACHE_LOCK:
        hit = _LISTS.get(ids)
        if hit is not None:
            _LISTS.move_to_end(ids)
            return hit[1]
        if any(_SHARED.get(i) is not t for i, t in zip(ids, tools)):
            return None
    try:
        data = json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError):  # lone surrogates in a name: let the caller's dumps raise
        return None
    with _TOOL_CACHE_LOCK:
        _LISTS[ids] = (tuple(tools), data)
        if len(_LISTS) > _LISTS_MAX:
            _LISTS.popitem(last=False)
    return data
