"""What kind of server a custom upstream is, and what it offers beyond Chat Completions.

Local servers differ in ways their Chat Completions API does not say: llama.cpp's llama-server
takes `tool_choice` only as a string (an object is ignored, as if "auto"); llama.cpp and vLLM can
count a prompt's tokens exactly with the model's own tokenizer and chat template. clasp asks a
custom target once, before its first request (GET /props, then GET /version, a short timeout
each) and remembers the answer. Hosted providers (openai, azure, openrouter) are never probed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from clasp.routing.providers import Target
from clasp.upstream.client import UpstreamClient, UpstreamError

log = logging.getLogger("clasp")

PROBE_TIMEOUT_S = 2.0
COUNT_TIMEOUT_S = 3.0
# A probe that could not reach the server is asked again after this long (it may be starting).
RETRY_PROBE_AFTER_S = 30.0
_MAX_PROBE_BODY = 256 * 1024  # llama.cpp's /props carries the chat template: a few KB


@dataclass(frozen=True)
class ServerInfo:
    kind: str = "unknown"               # "llama.cpp", "vllm" or "unknown"
    context_window: int | None = None   # tokens, when the server says

    def capability_defaults(self) -> dict[str, object]:
        """Capability flags this server needs (CLASP_MODEL_FLAGS still wins)."""
        if self.kind == "llama.cpp":
            return {"string_tool_choice": True}
        return {}

    @property
    def counts_tokens(self) -> bool:
        return self.kind in ("llama.cpp", "vllm")


UNKNOWN = ServerInfo()


def root_url(chat_url: str) -> str:
    """The server root of a chat/completions URL: http://h:8080/v1/chat/completions -> http://h:8080."""
    parts = urlsplit(chat_url)
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _json_object(body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def identify_props(status: int, headers: dict, body: bytes) -> ServerInfo | None:
    """llama.cpp from its GET /props answer (or its `server: llama.cpp` header), else None."""
    data = _json_object(body) if status == 200 else None
    said = headers.get("server", "").lower().startswith("llama.cpp")
    if data is None or not (said or "default_generation_settings" in data):
        return None
    settings = data.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    if not (isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0):
        n_ctx = None
    return ServerInfo("llama.cpp", n_ctx)


def identify_version(status: int, headers: dict, body: bytes) -> ServerInfo | None:
    """vLLM from its GET /version answer ({"version": "0.x.y"} and nothing else), else None."""
    data = _json_object(body) if status == 200 else None
    if data is None or set(data) != {"version"} or not isinstance(data["version"], str):
        return None
    return ServerInfo("vllm")


def count_from(kind: str, data: dict) -> int | None:
    """The prompt's token count from a server's counting answer."""
    value = data.get("count") if kind == "vllm" else data.get("tokens")
    if kind == "llama.cpp" and isinstance(value, list):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class ServerRegistry:
    """ServerInfo per custom target, probed once (concurrent first requests share the probe)."""

    def __init__(self, client: UpstreamClient, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.enabled = enabled
        self.clock = clock
        self._known: dict[str, ServerInfo] = {}
        self._failed_at: dict[str, float] = {}
        self._probing: dict[str, asyncio.Future] = {}

    async def info(self, target: Target) -> ServerInfo:
        if not self.enabled or target.provider != "custom":
            return UNKNOWN
        known = self._known.get(target.name)
        if known is not None:
            return known
        failed = self._failed_at.get(target.name)
        if failed is not None and self.clock() - failed < RETRY_PROBE_AFTER_S:
            return UNKNOWN
        pending = self._probing.get(target.name)
        if pending is None:
            pending = self._probing[target.name] = asyncio.ensure_future(self._probe(target))
            pending.add_done_callback(lambda _f, name=target.name: self._probing.pop(name, None))
        return await asyncio.shield(pending)

    async def _probe(self, target: Target) -> ServerInfo:
        root = root_url(target.url)
        reached = False
        for path, identify in (("/props", identify_props), ("/version", identify_version)):
            try:
                status, headers, body = await self._get(target, root + path)
            except (UpstreamError, asyncio.TimeoutError, OSError):
                continue
            if status >= 500:
                continue  # e.g. llama-server still loading its model (503): ask again later
            reached = True
            info = identify(status, headers, body)
            if info is not None:
                log.info("%s: upstream is %s%s", target.name, info.kind,
                         f" (context window {info.context_window} tokens)" if info.context_window else "")
                self._known[target.name] = info
                return info
        if reached:
            self._known[target.name] = UNKNOWN  # answered, just not a server we know: ask no more
        else:
            self._failed_at[target.name] = self.clock()
        return UNKNOWN

    async def _get(self, target: Target, url: str) -> tuple[int, dict, bytes]:
        async def go():
            resp = await self.client.request("GET", url, list(target.headers), b"")
            try:
                return resp.status, resp.headers, await resp.read(_MAX_PROBE_BODY)
            finally:
                resp.close()
        return await asyncio.wait_for(go(), PROBE_TIMEOUT_S)

    async def count_tokens(self, target: Target, info: ServerInfo, upstream_body: dict) -> int | None:
        """The exact prompt tokens of a translated Chat Completions body, or None (then estimate)."""
        if not info.counts_tokens:
            return None
        root = root_url(target.url)
        try:
            return await asyncio.wait_for(self._count(target, info, root, upstream_body), COUNT_TIMEOUT_S)
        except (UpstreamError, asyncio.TimeoutError, OSError, ValueError) as e:
            log.debug("%s: exact token count failed (%s); estimating", target.name, type(e).__name__)
            return None

    async def _count(self, target: Target, info: ServerInfo, root: str, body: dict) -> int | None:
        if info.kind == "llama.cpp":
            # the prompt exactly as the server renders it (chat template, tools), then tokenized
            rendered = await self._post(target, root + "/apply-template",
                                        {k: v for k, v in body.items() if k not in ("stream", "stream_options")})
            prompt = rendered.get("prompt") if rendered else None
            if not isinstance(prompt, str):
                return None
            data = await self._post(target, root + "/tokenize",
                                    {"content": prompt, "add_special": True, "parse_special": True})
        else:
            request: dict[str, Any] = {"model": body.get("model"), "messages": body.get("messages"),
                                       "add_generation_prompt": True}
            if body.get("tools"):
                request["tools"] = body["tools"]
            data = await self._post(target, root + "/tokenize", request)
        return count_from(info.kind, data) if data else None

    async def _post(self, target: Target, url: str, payload: dict) -> dict | None:
        raw = json.dumps(payload, ensure_ascii=False).encode()
        headers = [("content-type", "application/json"), *target.headers]
        resp = await self.client.request("POST", url, headers, raw)
        try:
            if resp.status != 200:
                return None
            return _json_object(await resp.read())
        finally:
            resp.close()
