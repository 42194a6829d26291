"""Which dialect a request speaks upstream (Chat Completions or Responses), and where it goes."""

from __future__ import annotations

import pytest

from clasp.config import ConfigError, load_config
from clasp.routing.providers import Router, build_target
from clasp.translate.capabilities import responses_only, upstream_api

HOME = {"HOME": "/nonexistent-clasp-test-home"}


def router(*argv, **env) -> Router:
    cfg, _ = load_config(list(argv), {**HOME, **env})
    return Router(cfg)


@pytest.mark.parametrize("model", ["gpt-5-codex", "gpt-5.1-codex", "gpt-5.1-codex-max", "gpt-5.1-codex-mini",
                                   "codex-mini-latest", "openai/gpt-5.1-codex", "o1-pro", "o3-pro",
                                   "o3-pro-2025-06-10", "gpt-5-pro", "gpt-5.2-pro"])
def test_models_served_only_by_the_responses_api(model):
    assert responses_only(model) and upstream_api("auto", model) == "responses"


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-5", "gpt-5.1", "o3", "o4-mini", "google/gemini-2.5-pro",
                                   "qwen2.5-coder:7b", "deepseek-chat", "gpt-5-chat-latest", "product-model"])
def test_everything_else_speaks_chat_completions(model):
    assert not responses_only(model) and upstream_api("auto", model) == "chat"
    assert upstream_api("responses", model) == "responses"  # the setting wins over the table
    assert upstream_api("chat", "gpt-5.1-codex") == "chat"


def test_targets_know_both_urls():
    cfg, _ = load_config(["-provider", "custom"], {**HOME, "CUSTOM_BASE_URL": "http://h:1/v1?api-version=x"})
    t = build_target("custom", cfg)
    assert (t.url, t.responses_url) == ("http://h:1/v1/chat/completions?api-version=x", "http://h:1/v1/responses?api-version=x")
    cfg, _ = load_config(["-provider", "custom"], {**HOME, "CUSTOM_BASE_URL": "http://h:1/v1/chat/completions"})
    assert build_target("custom", cfg).responses_url == "http://h:1/v1/responses"
    cfg, _ = load_config(["-provider", "azure"], {**HOME, "AZURE_API_KEY": "k", "AZURE_DEPLOYMENT_NAME": "dep",
                                                  "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"})
    t = build_target("azure", cfg)
    assert t.responses_url == "https://r.openai.azure.com/openai/v1/responses"
    assert "/openai/deployments/dep/chat/completions?api-version=" in t.url
    assert build_target("openai", load_config([], {**HOME, "OPENAI_API_KEY": "k"})[0]).responses_url == \
        "https://api.openai.com/v1/responses"


def test_routes_carry_their_dialect():
    r = router("-model", "gpt-5.1-codex", "-model-haiku", "gpt-4o-mini", OPENAI_API_KEY="k")
    codex, mini = r.resolve("claude-sonnet-4-5")[0], r.resolve("claude-haiku-4-5")[0]
    assert (codex.api, codex.url) == ("responses", "https://api.openai.com/v1/responses")
    assert (mini.api, mini.url) == ("chat", "https://api.openai.com/v1/chat/completions")
    forced = router("-model", "gpt-4o", "-openai-api", "responses", OPENAI_API_KEY="k").resolve("claude-x")[0]
    assert forced.api == "responses"


def test_tiers_fallbacks_and_aliases_choose_their_own_dialect():
    r = router("-provider", "openai", "-model", "gpt-5.1-codex", "-multi-provider", "-fallback",
               OPENAI_API_KEY="k", OPENROUTER_API_KEY="k2", CLASP_HAIKU_PROVIDER="openrouter",
               CLASP_HAIKU_MODEL="openai/gpt-5-codex", CLASP_HAIKU_API="chat", CLASP_FALLBACK_API="chat",
               CLASP_MODEL_ALIASES="big=openai@responses:gpt-4.1;small=openai@chat:gpt-5-codex")
    assert r.resolve("claude-haiku-4-5")[0].api == "chat"
    chain = r.resolve("claude-sonnet-4-5")
    # one fallback chain mixes a Responses target and a Chat Completions target
    assert [(x.target.name, x.api) for x in chain] == [("openai", "responses"), ("fallback:openrouter", "chat")]
    assert r.resolve("big")[0].api == "responses" and r.resolve("small")[0].api == "chat"


def test_invalid_dialects_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="CLASP_OPUS_API"):
        load_config([], {**HOME, "CLASP_OPUS_API": "soap"})
    with pytest.raises(ConfigError, match="API after '@'"):
        router(OPENAI_API_KEY="k", CLASP_MODEL_ALIASES="x=openai@soap:gpt-4o")
