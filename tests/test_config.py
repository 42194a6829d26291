"""Configuration: flags > env > file > defaults, file formats, errors users see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clasp.config import ConfigError, load_config, parse_model_flags, split_command
from clasp.routing.providers import Router

ROOT = Path(__file__).resolve().parent.parent
NOHOME = {"HOME": "/nonexistent-clasp-test-home"}


def test_defaults():
    cfg, _ = load_config([], NOHOME)
    assert (cfg.host, cfg.port, cfg.provider, cfg.max_body_size) == ("127.0.0.1", 8080, "openai", 32 * 1024 * 1024)
    assert cfg.queue_max_size == 100 and cfg.cb_threshold == 5 and cfg.cache_ttl == 3600


@pytest.mark.parametrize("argv", [["-port", "9001"], ["--port", "9001"], ["-port=9001"], ["--port=9001"]])
def test_flag_spellings(argv):
    cfg, _ = load_config(argv, NOHOME)
    assert cfg.port == 9001


def test_bool_flags_go_style():
    cfg, _ = load_config(["-queue", "-debug=false", "--cache=true"], {**NOHOME, "CLASP_DEBUG": "true"})
    assert cfg.queue is True and cfg.debug is False and cfg.cache is True


def test_precedence_flags_over_env_over_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"port": 7000, "model": "file-model", "cache_ttl": 5, "provider": "custom",
                             "custom_base_url": "http://127.0.0.1:1/v1"}))
    env = {**NOHOME, "CLASP_PORT": "7100", "CLASP_MODEL": "env-model"}
    cfg, _ = load_config(["-config", str(f), "-port", "7200"], env)
    assert cfg.port == 7200             # flag
    assert cfg.model == "env-model"     # env beats file
    assert cfg.cache_ttl == 5           # file beats default
    assert cfg.provider == "custom"


def test_config_file_from_env_and_var_expansion(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"openai_api_key": "${MY_KEY}", "model": "${NOPE:-gpt-4.1}",
                             "queue": {"enabled": True, "max_size": 7}}))
    cfg, _ = load_config([], {**NOHOME, "CLASP_CONFIG_FILE": str(f), "MY_KEY": "sk-abc"})
    assert cfg.openai_api_key == "sk-abc" and cfg.model == "gpt-4.1"
    assert cfg.queue is True and cfg.queue_max_size == 7


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is 3.11+")
def test_toml_file(tmp_path):
    f = tmp_path / "clasp.toml"
    f.write_text('provider = "openrouter"\nopenrouter_api_key = "k"\n[rate_limit]\nenabled = true\nburst = 3\n')
    cfg, _ = load_config(["-config", str(f)], NOHOME)
    assert cfg.provider == "openrouter" and cfg.rate_limit and cfg.rate_limit_burst == 3


def test_unknown_file_key_is_an_error_naming_it(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"cache_tll": 5}))
    with pytest.raises(ConfigError, match="cache_tll"):
        load_config(["-config", str(f)], NOHOME)


@pytest.mark.parametrize("argv, env, match", [
    (["-nope"], {}, "unknown flag -nope"),
    (["-port", "abc"], {}, "invalid int"),
    (["-port"], {}, "needs a value"),
    ([], {"CLASP_QUEUE": "maybe"}, "CLASP_QUEUE"),
    (["-provider", "bogus"], {}, "unknown provider"),
    (["-auth"], {}, "CLASP_AUTH_API_KEY"),
    (["-read-timeout", "nan"], {}, "invalid float"),
    ([], {"CLASP_MEMORY_TRIM_AFTER": "inf"}, "CLASP_MEMORY_TRIM_AFTER"),
    (["-memory-trim-after", "-1"], {}, "memory_trim_after"),
    (["-port", "\u0668\u0660\u0668\u0660"], {}, "invalid int"),   # Arabic-Indic 8080
    (["-cache-ttl", "\u0663"], {}, "invalid float"),
])
def test_config_errors(argv, env, match):
    with pytest.raises(ConfigError, match=match):
        load_config(argv, {**NOHOME, **env})


@pytest.mark.parametrize("provider, env, variable", [
    ("openai", {}, "OPENAI_API_KEY"),
    ("openrouter", {}, "OPENROUTER_API_KEY"),
    ("custom", {}, "CUSTOM_BASE_URL"),
    ("azure", {}, "AZURE_API_KEY"),
    ("azure", {"AZURE_API_KEY": "k"}, "AZURE_OPENAI_ENDPOINT"),
    ("azure", {"AZURE_API_KEY": "k", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"},
     "AZURE_DEPLOYMENT_NAME"),
])
def test_missing_provider_settings_name_the_variable(provider, env, variable):
    cfg, _ = load_config(["-provider", provider], {**NOHOME, **env})
    with pytest.raises(ConfigError, match=variable):
        Router(cfg)


def test_missing_key_exits_2_without_traceback():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent-clasp-test-home", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "clasp", "-provider", "openai", "-port", "0"], env=env,
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert p.returncode == 2
    assert "OPENAI_API_KEY" in p.stderr and "Traceback" not in p.stderr


def test_secrets_never_in_repr():
    cfg, _ = load_config([], {**NOHOME, "OPENAI_API_KEY": "sk-secret-123", "CLASP_AUTH_API_KEY": "proxy-key"})
    assert "sk-secret-123" not in repr(cfg) and "proxy-key" not in repr(cfg)
    assert set(cfg.secrets()) == {"sk-secret-123", "proxy-key"}


def test_model_flags_parsing():
    assert parse_model_flags("no_stream_options, max_output_cap=16384,reasoning_style=deepseek,reasoning=false") == {
        "no_stream_options": True, "max_output_cap": 16384, "reasoning_style": "deepseek", "reasoning": False}


def test_model_flags_non_ascii_digits_are_a_config_error_not_a_crash():
    # "²".isdigit() is True but int("²") raises: the value must stay text and be rejected by name.
    assert parse_model_flags("max_output_cap=²,a=--5,b=-5") == {"max_output_cap": "²", "a": "--5", "b": -5}
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent-clasp-test-home", "PYTHONPATH": str(ROOT),
           "OPENAI_API_KEY": "sk-test", "CLASP_MODEL_FLAGS": "max_output_cap=²"}
    p = subprocess.run([sys.executable, "-m", "clasp", "-port", "0"], env=env,
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert p.returncode == 2, p.stderr
    assert "max_output_cap" in p.stderr and "positive integer" in p.stderr and "Traceback" not in p.stderr


def test_url_credentials_and_bad_ports_are_config_errors_without_echo():
    cfg, _ = load_config(["-provider", "custom"], {**NOHOME, "CUSTOM_BASE_URL": "htps://user:hunter2@host/v1"})
    with pytest.raises(ConfigError) as e:
        Router(cfg)
    assert "hunter2" not in str(e.value)
    cfg, _ = load_config(["-provider", "custom"], {**NOHOME, "CUSTOM_BASE_URL": "http://127.0.0.1:99999/v1"})
    with pytest.raises(ConfigError, match="invalid port"):
        Router(cfg)
    cfg, _ = load_config(["-provider", "custom"], {**NOHOME, "CUSTOM_BASE_URL": "https://user:hunter2@host/v1"})
    assert "hunter2" not in repr(cfg) and "hunter2" not in repr(Router(cfg).primary)


# ---------------------------------------------------------------- clasp flags before a command

@pytest.mark.parametrize("argv,expected", [
    (["claude", "-p", "hi"], ([], "claude", ["-p", "hi"])),
    (["-provider", "custom", "claude", "-p", "hi"], (["-provider", "custom"], "claude", ["-p", "hi"])),
    (["-model", "claude", "claude"], (["-model", "claude"], "claude", [])),      # a value is a value
    (["-model=claude", "-debug", "claude", "-debug"], (["-model=claude", "-debug"], "claude", ["-debug"])),
    (["-config", "claude", "claude"], (["-config", "claude"], "claude", [])),
    (["-debug", "--", "claude", "--", "x"], (["-debug"], "claude", ["--", "x"])),
    (["-port", "9", "-debug"], (["-port", "9", "-debug"], None, [])),             # the server
    ([], ([], None, [])),
])
def test_split_command(argv, expected):
    assert split_command(argv) == expected


def test_dash_dash_must_be_followed_by_the_command():
    with pytest.raises(ConfigError, match="must be followed by claude"):
        split_command(["-debug", "--", "-p"])


def test_no_prefix_turns_a_bool_flag_off():
    env = {"HOME": "/nonexistent-clasp-test-home", "CLASP_STATUSLINE": "true", "CLASP_ACCESS_LOG": "true"}
    cfg, _ = load_config(["-no-statusline", "-no-access-log"], env)
    assert cfg.statusline is False and cfg.access_log is False
    assert load_config(["-statusline=false"], env)[0].statusline is False
    assert load_config([], env)[0].statusline is True
    for bad in (["-no-port"], ["-no-statusline=true"], ["-no-such"]):
        with pytest.raises(ConfigError, match="unknown flag"):
            load_config(bad, env)
