"""OpenRouter gets its app-attribution title (X-Title: clasp) by default, and an HTTP-Referer when
one is configured (clasp has no public project URL to send); both overridable, and none when the
config file says "" (an empty environment variable counts as unset)."""

from __future__ import annotations

import json
from pathlib import Path

from clasp.config import load_config
from clasp.routing.providers import build_target
from harness import Proxy

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
BASE = {"HOME": "/nonexistent-clasp-test-home", "OPENROUTER_API_KEY": "sk-or-test"}


def attribution(env: dict, argv: list[str] = ()) -> dict:
    cfg, _ = load_config(["-provider", "openrouter", *argv], env)
    headers = dict(build_target("openrouter", cfg).headers)
    return {k: v for k, v in headers.items() if k in ("HTTP-Referer", "X-Title")}


def test_openrouter_attribution_is_sent_by_default_to_a_running_proxy(lt, upstream, proxies):
    p = Proxy(lt, ["-provider", "openrouter", "-model", "openai/gpt-4o"],
              {**BASE, "OPENROUTER_BASE_URL": upstream.url})
    proxies.append(p)
    status, _, _ = p.post(HELLO)
    assert status == 200
    seen = upstream.requests[-1].headers
    assert seen["x-title"] == "clasp" and "http-referer" not in seen


def test_environment_overrides_the_attribution():
    env = {**BASE, "OPENROUTER_HTTP_REFERER": "https://example.org/app", "OPENROUTER_X_TITLE": "My App"}
    assert attribution(env) == {"HTTP-Referer": "https://example.org/app", "X-Title": "My App"}


def test_empty_environment_variable_keeps_the_default():
    env = {**BASE, "OPENROUTER_HTTP_REFERER": "", "OPENROUTER_X_TITLE": ""}
    assert attribution(env) == {"X-Title": "clasp"}


def test_empty_value_in_the_config_file_sends_no_attribution(tmp_path: Path):
    path = tmp_path / "clasp.json"
    path.write_text(json.dumps({"openrouter_referer": "", "openrouter_title": ""}))
    assert attribution(BASE, ["-config", str(path)]) == {}


def test_other_providers_get_no_attribution():
    cfg, _ = load_config(["-provider", "custom"], {"HOME": "/nonexistent-clasp-test-home",
                                                   "CUSTOM_BASE_URL": "http://127.0.0.1:9/v1"})
    names = {k for k, _ in build_target("custom", cfg).headers}
    assert not names & {"HTTP-Referer", "X-Title"}
