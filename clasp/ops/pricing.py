"""What a request costs: list prices in USD per million tokens (input, cached input, output).

Table date: 2026-12-04. Sources: the providers' published list prices (OpenAI's API pricing page,
OpenRouter's model pages, DeepSeek's pricing page, GitHub's Copilot model price table). Prices
change: override any of them, or add your own models, in the config file::

    [prices."my-model"]
    input = 0.5            # USD per million input tokens
    cached_input = 0.05    # per million input tokens read from the provider's prompt cache
    output = 1.5           # per million output tokens

or with ``CLASP_PRICES`` / ``-prices`` ("my-model=0.5/0.05/1.5,other=1/0.1/4").

Lookup of an upstream model name: an override, else the table, trying the name as given, in lower
case, without an OpenRouter vendor prefix for OpenAI models ("openai/gpt-4o"), and without a date
suffix ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-5-20250929"). OpenRouter's ":free" variants cost 0.
A model found nowhere is *unpriced*: its tokens are counted, its cost is unknown (never 0).
Azure deployments are priced by the OpenAI model name; name a deployment after its model or add a
price for the deployment name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clasp.config import ConfigError

__all__ = ["Price", "PriceTable", "PRICES", "parse_prices", "TABLE_DATE"]

TABLE_DATE = "2026-12-04"


@dataclass(frozen=True)
class Price:
    input: float          # USD per million uncached input tokens
    cached_input: float   # USD per million input tokens read from cache
    output: float         # USD per million output tokens

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """USD for a request: ``input_tokens`` excludes ``cached_tokens`` (Anthropic's usage)."""
        return (input_tokens * self.input + cached_tokens * self.cached_input
                + output_tokens * self.output) / 1_000_000


def _p(inp: float, cached: float | None, out: float) -> Price:
    return Price(inp, inp if cached is None else cached, out)


PRICES: dict[str, Price] = {
    # OpenAI (also Azure OpenAI, by model name)
    "gpt-4o": _p(2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": _p(5.00, None, 15.00),
    "chatgpt-4o-latest": _p(5.00, None, 15.00),
    "gpt-4o-mini": _p(0.15, 0.075, 0.60),
    "gpt-4.1": _p(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _p(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _p(0.10, 0.025, 0.40),
    "gpt-4-turbo": _p(10.00, None, 30.00),
    "gpt-3.5-turbo": _p(0.50, None, 1.50),
    "gpt-5": _p(1.25, 0.125, 10.00),
    "gpt-5-mini": _p(0.25, 0.025, 2.00),
    "gpt-5-nano": _p(0.05, 0.005, 0.40),
    "gpt-5-chat-latest": _p(1.25, 0.125, 10.00),
    "gpt-5-codex": _p(1.25, 0.125, 10.00),
    "gpt-5-pro": _p(15.00, None, 120.00),
    "gpt-5.1": _p(1.25, 0.125, 10.00),
    "gpt-5.1-codex": _p(1.25, 0.125, 10.00),
    "gpt-5.1-codex-mini": _p(0.25, 0.025, 2.00),
    "gpt-5.1-codex-max": _p(1.25, 0.125, 10.00),
    "gpt-5.2": _p(1.75, 0.175, 14.00),
    "gpt-5.2-codex": _p(1.75, 0.175, 14.00),
    "o1": _p(15.00, 7.50, 60.00),
    "o1-pro": _p(150.00, None, 600.00),
    "o3": _p(2.00, 0.50, 8.00),
    "o3-pro": _p(20.00, None, 80.00),
    "o3-mini": _p(1.10, 0.55, 4.40),
    "o4-mini": _p(1.10, 0.275, 4.40),
    "codex-mini-latest": _p(1.50, 0.375, 6.00),
    "gpt-oss-120b": _p(0.10, None, 0.50),
    "gpt-oss-20b": _p(0.05, None, 0.20),
    # OpenRouter ids (cached input: the provider's cache-read price)
    "anthropic/claude-opus-4.5": _p(5.00, 0.50, 25.00),
    "anthropic/claude-opus-4.1": _p(15.00, 1.50, 75.00),
    "anthropic/claude-opus-4": _p(15.00, 1.50, 75.00),
    "anthropic/claude-sonnet-4.5": _p(3.00, 0.30, 15.00),
    "anthropic/claude-sonnet-4": _p(3.00, 0.30, 15.00),
    "anthropic/claude-3.7-sonnet": _p(3.00, 0.30, 15.00),
    "anthropic/claude-haiku-4.5": _p(1.00, 0.10, 5.00),
    "anthropic/claude-3.5-haiku": _p(0.80, 0.08, 4.00),
    "google/gemini-2.5-pro": _p(1.25, 0.125, 10.00),
    "google/gemini-2.5-flash": _p(0.30, 0.03, 2.50),
    "google/gemini-2.5-flash-lite": _p(0.10, 0.01, 0.40),
    "deepseek/deepseek-chat": _p(0.27, 0.07, 1.10),
    "deepseek/deepseek-chat-v3-0324": _p(0.27, None, 1.10),
    "deepseek/deepseek-chat-v3.1": _p(0.20, None, 0.80),
    "deepseek/deepseek-v3.2-exp": _p(0.27, None, 0.40),
    "deepseek/deepseek-r1": _p(0.55, 0.14, 2.19),
    "qwen/qwen3-coder": _p(0.22, None, 0.95),
    "qwen/qwen3-235b-a22b-2507": _p(0.13, None, 0.60),
    "meta-llama/llama-3.3-70b-instruct": _p(0.13, None, 0.40),
    "meta-llama/llama-4-maverick": _p(0.15, None, 0.60),
    "meta-llama/llama-4-scout": _p(0.08, None, 0.30),
    "x-ai/grok-code-fast-1": _p(0.20, 0.02, 1.50),
    "moonshotai/kimi-k2": _p(0.50, None, 2.40),
    "z-ai/glm-4.6": _p(0.60, 0.11, 2.20),
    "mistralai/devstral-medium": _p(0.40, None, 2.00),
    # DeepSeek's own API (a custom target at api.deepseek.com)
    "deepseek-chat": _p(0.27, 0.07, 1.10),
    "deepseek-reasoner": _p(0.55, 0.14, 2.19),
}
# OpenAI models under OpenRouter's vendor prefix have the same price.
_VENDOR = "openai/"
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_FREE = Price(0.0, 0.0, 0.0)


def parse_prices(text: str, origin: str = "CLASP_PRICES") -> dict[str, Price]:
    """'model=input/cached_input/output,...' (USD per million tokens; cached_input may be empty:
    the input price)."""
    out: dict[str, Price] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, eq, numbers = item.rpartition("=")
        parts = numbers.split("/")
        if not eq or not name.strip() or len(parts) != 3:
            raise ConfigError(f"{origin}: {item!r} should be model=input/cached_input/output (USD per million tokens)")
        try:
            inp, cached, outp = (float(p) if p.strip() else None for p in parts)
        except ValueError:
            raise ConfigError(f"{origin}: {item!r}: prices must be numbers") from None
        if inp is None or outp is None or any(v is not None and (v < 0 or v != v or v == float("inf"))
                                              for v in (inp, cached, outp)):
            raise ConfigError(f"{origin}: {item!r}: input and output prices must be numbers >= 0")
        out[name.strip()] = _p(inp, cached, outp)
    return out


def prices_from_table(table: object, origin: str) -> str:
    """The config file's [prices."model"] tables as the CLASP_PRICES text."""
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: prices must be a table of models ([prices.\"model\"] input = ...)")
    items = []
    for model, entry in table.items():
        if not isinstance(entry, dict) or set(entry) - {"input", "cached_input", "output"} \
                or "input" not in entry or "output" not in entry:
            raise ConfigError(f"{origin}: prices.{model!r} needs input and output (and optionally cached_input), "
                              f"USD per million tokens")
        if "," in model or "=" in model:
            raise ConfigError(f"{origin}: prices.{model!r}: a model name here cannot hold ',' or '='")
        values = []
        for k in ("input", "cached_input", "output"):
            v = entry.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{origin}: prices.{model!r}.{k} must be a number")
            values.append("" if v is None else repr(float(v)))
        items.append(f"{model}={'/'.join(values)}")
    return ",".join(items)


class PriceTable:
    """Price lookup with overrides; answers are remembered per name (bounded)."""

    _MAX_REMEMBERED = 1024

    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self.overrides = dict(overrides or {})
        self._memo: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        memo = self._memo
        if model in memo:
            return memo[model]
        price = self._find(model)
        if len(memo) >= self._MAX_REMEMBERED:
            memo.clear()
        memo[model] = price
        return price

    def _find(self, model: str) -> Price | None:
        names = _candidates(model)
        for name in names:
            if name in self.overrides:
                return self.overrides[name]
        if model.lower().endswith(":free"):
            return _FREE
        for name in names:
            if name in PRICES:
                return PRICES[name]
        return None


def _candidates(model: str) -> list[str]:
    names = [model]
    low = model.lower()
    for suffix in (":free", ":floor", ":nitro", ":exacto"):
        if low.endswith(suffix):
            low = low[: -len(suffix)]
    names.append(low)
    if low.startswith(_VENDOR):
        names.append(low[len(_VENDOR):])
    for n in list(names[1:]):
        undated = _DATED.sub("", n)
        if undated != n:
            names.append(undated)
    return names
