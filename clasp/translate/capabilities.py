"""Capability flags per provider and model family (PROTOCOL §1.3, Appendix A).

The request and response translators never test model names themselves: they read these
flags, so a user can fix any misdetection with a per-provider/per-model override in config.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Capabilities", "capabilities_for", "TOKEN_FIELDS", "REASONING_STYLES"]

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
REASONING_STYLES = ("openai", "openrouter", "deepseek", "none")


@dataclass(frozen=True)
class Capabilities:
    token_field: str = "max_tokens"          # or "max_completion_tokens"
    max_output_cap: int | None = None        # clamp max_tokens to this
    no_sampling: bool = False                # omit temperature/top_p
    no_stop: bool = False
    reasoning: bool = False
    reasoning_style: str = "openai"          # openai|openrouter|deepseek|none
    reasoning_roundtrip: bool = False
    think_tags: bool = False
    always_show_reasoning: bool = False
    no_stream_options: bool = False
    no_forced_tool_choice: bool = False
    # The server takes tool_choice only as a string (llama.cpp): a forced tool is sent as
    # "required" with the tool list narrowed to that tool.
    string_tool_choice: bool = False
    no_parallel_param: bool = False
    gemini_schema: bool = False
    mistral_ids: bool = False
    pdf_file_parts: bool = False
    assistant_empty_string: bool = False
    strip_billing_header: bool = True
    send_user: bool = False
    buffer_tool_args: bool = False
    single_system: bool = False              # merge inline role:"system" messages into the leading one
    pass_top_k: bool = False


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Capabilities)}

# o1, o1-mini, o3-mini-2025-01-31, o4-mini ... (not "omni-foo", not "o10x")
_O_SERIES = re.compile(r"^o(\d)(?:$|[-_.:])")
# Model families OpenAI serves only through the Responses API: `-openai-api auto` sends them there
# (README lists them). Codex models (gpt-5-codex, gpt-5.1-codex-max, codex-mini-latest, ...) and
# the -pro reasoning models (o1-pro, o3-pro, gpt-5-pro, gpt-5.2-pro, ...).
_RESPONSES_ONLY = re.compile(r"codex|^(?:o\d+|gpt-5(?:\.\d+)?)-pro(?:$|[-_.:])")
_MISTRAL_FAMILY = ("mistral", "mixtral", "codestral", "devstral", "magistral", "ministral", "pixtral")
# Published output-token limits of well-known models, longest prefix first. Claude Code asks for
# 32k-128k output tokens; sending that to gpt-4o (16k) is a 400, so clamp by default
# (override with max_output_cap; unknown models are not clamped).
_OUTPUT_CAPS: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini", 16384), ("gpt-4o", 16384), ("chatgpt-4o", 16384), ("gpt-4.1", 32768),
    ("gpt-4-turbo", 4096), ("gpt-4-", 4096), ("gpt-3.5-turbo", 4096), ("o1-mini", 65536),
    ("o1", 100000), ("o3", 100000), ("o4-mini", 100000), ("gpt-5", 128000),
    ("deepseek-chat", 8192), ("deepseek-reasoner", 65536),
)
_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))


def _family_name(model: str) -> str:
    """Lower-case model id without vendor prefix ("openai/o3-mini" -> "o3-mini")."""
    name = model.strip().lower()
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    return name


def _coerce(field: str, value: object) -> object:
    """Validate an override value; config files and env vars may hand us strings."""
    ftype = _FIELD_TYPES[field]
    if ftype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"capability override {field!r} must be a boolean, got {value!r}")
    if field == "max_output_cap":
        if value is None:
            return None
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise ValueError(f"capability override 'max_output_cap' must be a positive integer, got {value!r}")
    if field == "token_field":
        if value in TOKEN_FIELDS:
            return value
        raise ValueError(f"capability override 'token_field' must be one of {TOKEN_FIELDS}, got {value!r}")
    if field == "reasoning_style":
        if value in REASONING_STYLES:
            return value
        raise ValueError(
            f"capability override 'reasoning_style' must be one of {REASONING_STYLES}, got {value!r}")
    raise ValueError(f"unsupported capability field {field!r}")  # pragma: no cover - all fields handled


def responses_only(model: str) -> bool:
    """True for a model that only exists behind the Responses API."""
    return bool(_RESPONSES_ONLY.search(_family_name(model or "")))


def upstream_api(configured: str, model: str) -> str:
    """The dialect a request for `model` uses: "chat" or "responses" (`configured` may be "auto")."""
    if configured in ("chat", "responses"):
        return configured
    return "responses" if responses_only(model) else "chat"


def capabilities_for(provider: str, model: str, overrides: Mapping[str, object] = {}) -> Capabilities:
    """Flags for `model` served by `provider` (openai, azure, openrouter, deepseek, ollama, vllm,
    lmstudio, mistral, gemini, custom, ...), then `overrides` applied field by field.

    Raises ValueError naming the field for an unknown override key or an invalid value."""
    prov = (provider or "").strip().lower()
    name = _family_name(model or "")
    flags: dict[str, object] = {}

    openai_like = prov in ("openai", "azure")
    if openai_like:
        # max_tokens is deprecated on OpenAI/Azure and rejected by reasoning models; the
        # replacement is accepted by every current chat model there.
        flags["token_field"] = "max_completion_tokens"
        flags["pdf_file_parts"] = prov == "openai"

    o_match = _O_SERIES.match(name)
    if o_match:
        # o1 / o3 / o3-mini / o4-mini: "Unsupported parameter: 'parallel_tool_calls' is not
        # supported with this model", even when false.
        flags.update(no_sampling=True, reasoning=True, no_parallel_param=True)
        if o_match.group(1) in ("3", "4"):
            flags["no_stop"] = True          # o3 / o4-mini reject `stop`
    elif name.startswith("gpt-5"):
        flags.update(no_sampling=True, no_stop=True, reasoning=True)
        if "-chat" in name:
            # gpt-5-chat-latest, gpt-5.1-chat-latest ...: the ChatGPT models are not reasoning
            # models (400 on reasoning_effort) and write at most 16k tokens.
            flags.update(reasoning=False, max_output_cap=16384)
    if (o_match or name.startswith("gpt-5")) and prov != "openrouter":
        # Wherever the model is hosted directly it rejects max_tokens; OpenRouter normalizes.
        flags["token_field"] = "max_completion_tokens"

    if prov == "deepseek" or (name.startswith("deepseek-reasoner") and prov != "openrouter"):
        # DeepSeek thinking mode: the reasoning text of tool-calling turns must come back.
        flags.update(reasoning=True, reasoning_style="deepseek", reasoning_roundtrip=True)
    if name.startswith("deepseek-reasoner"):
        flags["no_forced_tool_choice"] = True  # rejects forced tool_choice [DS-606]
        if prov == "openrouter":
            flags["reasoning"] = True

    if prov == "openrouter":
        flags.update(reasoning_style="openrouter", pdf_file_parts=True)
        flags["token_field"] = "max_tokens"

    if prov == "mistral" or (prov != "openrouter" and name.startswith(_MISTRAL_FAMILY)):
        flags["mistral_ids"] = True          # Mistral wants 9-alphanumeric tool-call ids
    if prov == "gemini" or "gemini" in name:
        flags["gemini_schema"] = True

    for prefix, cap in _OUTPUT_CAPS if "max_output_cap" not in flags else ():
        if name.startswith(prefix) or name == prefix.rstrip("-"):
            flags["max_output_cap"] = cap
            break

    for key, value in overrides.items():
        if key not in _FIELD_TYPES:
            raise ValueError(f"unknown capability override {key!r}")
        flags[key] = _coerce(key, value)
    return Capabilities(**flags)  # type: ignore[arg-type]
