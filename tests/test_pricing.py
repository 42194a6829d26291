"""The price table: lookups by upstream model name, overrides, unknown models stay unpriced."""

from __future__ import annotations

import pytest

from clasp.config import ConfigError, load_config
from clasp.ops.pricing import PRICES, TABLE_DATE, Price, PriceTable, parse_prices, prices_from_table


@pytest.mark.parametrize("model,expected", [
    ("gpt-4o", Price(2.5, 1.25, 10.0)),
    ("gpt-4o-2024-08-06", Price(2.5, 1.25, 10.0)),          # dated snapshot: its base name
    ("gpt-4o-2024-05-13", Price(5.0, 5.0, 15.0)),           # unless the snapshot has its own price
    ("GPT-4.1-mini", Price(0.4, 0.1, 1.6)),
    ("openai/gpt-5-mini", Price(0.25, 0.025, 2.0)),         # OpenRouter id of an OpenAI model
    ("anthropic/claude-sonnet-4.5", Price(3.0, 0.3, 15.0)),
    ("google/gemini-2.5-pro", Price(1.25, 0.125, 10.0)),
    ("deepseek/deepseek-chat-v3-0324:free", Price(0.0, 0.0, 0.0)),
    ("o4-mini", Price(1.1, 0.275, 4.4)),
    ("gpt-5-codex", Price(1.25, 0.125, 10.0)),
])
def test_lookup(model, expected):
    assert PriceTable().lookup(model) == expected


@pytest.mark.parametrize("model", ["llama3.2:3b", "qwen2.5-coder:32b", "my-azure-deployment", "gpt-4o-turbo-x", ""])
def test_unknown_models_have_no_price_never_zero(model):
    assert PriceTable().lookup(model) is None


def test_every_common_provider_family_is_in_the_table():
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5", "gpt-5-mini",
                 "gpt-5-nano", "o3", "o4-mini", "codex-mini-latest", "anthropic/claude-opus-4.1",
                 "anthropic/claude-haiku-4.5", "google/gemini-2.5-flash", "deepseek/deepseek-chat",
                 "qwen/qwen3-coder", "meta-llama/llama-3.3-70b-instruct"):
        assert name in PRICES, name
    for price in PRICES.values():
        assert 0 <= price.cached_input <= price.input and price.output >= 0
    assert TABLE_DATE.count("-") == 2


def test_cost_counts_cached_input_at_its_own_price():
    price = Price(2.5, 1.25, 10.0)
    assert price.cost(1_000_000, 0, 0) == pytest.approx(2.5)
    assert price.cost(200_000, 800_000, 100_000) == pytest.approx(0.5 + 1.0 + 1.0)


def test_overrides_win_and_add_models():
    table = PriceTable(parse_prices("gpt-4o=1/0.5/2, my-model=0.5//1.5"))
    assert table.lookup("gpt-4o") == Price(1.0, 0.5, 2.0)
    assert table.lookup("gpt-4o-2024-08-06") == Price(1.0, 0.5, 2.0)
    assert table.lookup("my-model") == Price(0.5, 0.5, 1.5)       # no cached price: the input price
    assert table.lookup("gpt-4o-mini") == PRICES["gpt-4o-mini"]


@pytest.mark.parametrize("text", ["gpt-4o=1/2", "gpt-4o", "=1/2/3", "m=a/b/c", "m=-1/0/1", "m=/1/2", "m=1/1/nan"])
def test_bad_price_text_is_a_config_error(text):
    with pytest.raises(ConfigError, match="CLASP_PRICES"):
        parse_prices(text)


def test_prices_from_env_flag_and_config_file_tables(tmp_path):
    env = {"HOME": "/nonexistent", "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", "PROVIDER": "custom"}
    conf = tmp_path / "clasp.json"
    conf.write_text('{"prices": {"my-model": {"input": 0.5, "cached_input": 0.05, "output": 1.5},'
                    ' "other": {"input": 1, "output": 2}}}')
    cfg, _ = load_config(["-config", str(conf)], env)
    table = PriceTable(parse_prices(cfg.prices))
    assert table.lookup("my-model") == Price(0.5, 0.05, 1.5) and table.lookup("other") == Price(1.0, 1.0, 2.0)
    cfg, _ = load_config(["-config", str(conf)], {**env, "CLASP_PRICES": "my-model=9/9/9"})
    assert PriceTable(parse_prices(cfg.prices)).lookup("my-model") == Price(9.0, 9.0, 9.0)
    cfg, _ = load_config(["-prices", "x=1/0.1/3"], env)
    assert PriceTable(parse_prices(cfg.prices)).lookup("x") == Price(1.0, 0.1, 3.0)
    with pytest.raises(ConfigError, match="prices"):
        load_config(["-prices", "x=1"], env)
    with pytest.raises(ConfigError, match="needs input and output"):
        prices_from_table({"m": {"input": 1}}, "config file c")
    with pytest.raises(ConfigError, match="must be a number"):
        prices_from_table({"m": {"input": "1", "output": 2}}, "config file c")
