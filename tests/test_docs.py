"""The documentation matches the code: clasp.example.toml and README.md cover every setting."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from clasp.config import SETTINGS, Config, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "clasp.example.toml"
README = ROOT / "README.md"

_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)


def _example_keys() -> list[str]:
    # Active (uncommented) top-level keys; works on 3.10, which has no tomllib.
    return _KEY_LINE.findall(EXAMPLE.read_text(encoding="utf-8"))


def test_example_config_has_every_setting_once() -> None:
    keys = _example_keys()
    missing = [s.name for s in SETTINGS if s.name not in keys]
    assert not missing, f"clasp.example.toml lacks: {missing}"
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicated, f"clasp.example.toml repeats: {duplicated}"
    unknown = sorted(set(keys) - {s.name for s in SETTINGS})
    assert not unknown, f"clasp.example.toml has keys clasp rejects: {unknown}"


def test_example_config_comments_name_env_and_flag() -> None:
    # Each key is preceded by a comment naming its variable and flag, so the file is a reference.
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for s in SETTINGS:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{s.name} ="))
        comment = lines[index - 1]
        assert comment.startswith("#"), s.name
        assert s.env[0] in comment, (s.name, comment)
        if s.flag:
            assert f"-{s.flag})" in comment, (s.name, comment)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML config files need tomllib (3.11+)")
def test_example_config_loads_and_states_the_defaults() -> None:
    env = {"HOME": "/nonexistent-clasp-test-home"}  # no credentials: ${VAR} expand to ""
    cfg, actions = load_config(["-config", str(EXAMPLE)], env)
    assert actions == {"config": str(EXAMPLE)}
    assert cfg.config_file == str(EXAMPLE)
    default = Config()
    differs = {f.name: getattr(cfg, f.name) for f in fields(Config)
               if f.name not in ("config_file", "sources") and getattr(cfg, f.name) != getattr(default, f.name)}
    assert differs == {}, "clasp.example.toml must show the real defaults"
    # Every setting was read from the file (none fell through to the built-in default).
    assert {name for name, origin in cfg.sources if origin == "file"} == {s.name for s in SETTINGS}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML config files need tomllib (3.11+)")
def test_example_config_secrets_come_from_the_environment() -> None:
    env = {"HOME": "/nonexistent-clasp-test-home", "OPENAI_API_KEY": "sk-from-env"}
    cfg, _ = load_config(["-config", str(EXAMPLE)], env)
    assert cfg.openai_api_key == "sk-from-env"
    text = EXAMPLE.read_text(encoding="utf-8")
    for s in SETTINGS:
        if s.secret:
            assert re.search(rf'^{s.name} = "\$\{{{s.env[0]}\}}"$', text, re.MULTILINE), s.name


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_readme_documents_every_env_var_and_flag() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [e for s in SETTINGS for e in s.env if not _mentions(text, e)]
    missing += [f"-{s.flag}" for s in SETTINGS if s.flag and not _mentions(text, f"-{s.flag}")]
    assert not missing, f"README.md does not mention: {missing}"


def test_readme_documents_distribution() -> None:
    text = README.read_text(encoding="utf-8")
    for needle in ("make zipapp", "python3 -I dist/clasp.pyz", "docker compose up", ".env.example",
                   "python3 -m clasp claude", "npm install -g @anthropic-ai/claude-code",
                   "claude-proxy.log", "clasp.example.toml", "healthcheck"):
        assert needle in text, f"README.md does not mention {needle!r}"


def test_makefile_test_target_is_the_readme_command() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^test:\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe is not None
    assert recipe.group(1) == "$(PYTHON) -m pytest tests"
    assert re.search(r"^PYTHON \?= python3$", makefile, re.MULTILINE)
    assert "python3 -m pytest tests" in README.read_text(encoding="utf-8")
