"""Client keys: parsing, SHA-256 entries, expiry, disabled keys, model patterns, hot reload."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys

import pytest

from clasp.config import ConfigError, load_config
from clasp.ops.access import allowed_routes, check_key_state
from clasp.ops.auth import AuthPolicy
from clasp.ops.keys import KeyFile, parse_keys
from clasp.routing.providers import Router
from clasp.translate.errors import ProxyError

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-9876543210"
HAS_TOML = sys.version_info >= (3, 11)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write(path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def ring_of(entries):
    return parse_keys(entries, "keys file k.json")


# ------------------------------------------------------------------ parsing

def test_parse_plain_and_sha256_entries():
    ring = ring_of([{"name": "alice", "key": ALICE, "rate_limit": 30, "models": ["sonnet"],
                     "daily_budget_usd": 5, "monthly_budget_usd": 50.5},
                    {"name": "bob", "key_sha256": sha(BOB).upper()}])
    alice = ring.by_digest[hashlib.sha256(ALICE.encode()).digest()]
    assert (alice.name, alice.rate_limit, alice.burst, alice.models) == ("alice", 30, 30, ("sonnet",))
    assert (alice.daily_budget_usd, alice.monthly_budget_usd, alice.enabled) == (5.0, 50.5, True)
    assert ring.by_digest[hashlib.sha256(BOB.encode()).digest()].name == "bob"
    assert ALICE not in repr(alice) and sha(ALICE) not in repr(alice)


@pytest.mark.parametrize("entry,message", [
    ({"key": ALICE}, "keys entry #1: name is required"),
    ({"name": "a b", "key": ALICE}, "name is required"),
    ({"name": "alice"}, "exactly one of key or key_sha256"),
    ({"name": "alice", "key": ALICE, "key_sha256": sha(ALICE)}, "exactly one of key or key_sha256"),
    ({"name": "alice", "key_sha256": "abc"}, "key_sha256 must be 64 hex digits"),
    ({"name": "alice", "key": "short"}, "at least 8 characters"),
    ({"name": "alice", "key": ALICE, "rate_limit": 0}, "rate_limit must be a whole number"),
    ({"name": "alice", "key": ALICE, "burst": 5}, "burst needs rate_limit"),
    ({"name": "alice", "key": ALICE, "daily_budget_usd": "5"}, "daily_budget_usd must be a number"),
    ({"name": "alice", "key": ALICE, "expires": "next week"}, "expires must be a date"),
    ({"name": "alice", "key": ALICE, "enabled": "no"}, "enabled must be true or false"),
    ({"name": "alice", "key": ALICE, "daily_budget": 5}, "unknown field 'daily_budget'"),
    ({"name": "alice", "key": ALICE, "models": "sonnet"}, None),
])
def test_invalid_entries_name_the_file_and_entry_never_the_key(entry, message):
    if message is None:
        ring_of([entry])
        return
    with pytest.raises(ConfigError) as e:
        ring_of([entry])
    text = str(e.value)
    assert text.startswith("keys file k.json: keys entry #1") and message in text
    if entry.get("name") == "alice":
        assert "'alice'" in text
    assert ALICE not in text and "short" not in text.replace("at least", "")


def test_duplicate_names_and_keys_are_errors():
    with pytest.raises(ConfigError, match="name 'alice' is used twice"):
        ring_of([{"name": "alice", "key": ALICE}, {"name": "alice", "key": BOB}])
    with pytest.raises(ConfigError, match=r"entry #2 \('bob'\): the same key as 'alice'"):
        ring_of([{"name": "alice", "key": ALICE}, {"name": "bob", "key_sha256": sha(ALICE)}])


def test_expiry_date_is_valid_through_that_day_utc_and_datetime_exact():
    ring = ring_of([{"name": "d", "key": ALICE, "expires": "2027-01-31"},
                    {"name": "t", "key": BOB, "expires": "2027-01-31T12:00:00Z"}])
    d, t = ring.by_name["d"], ring.by_name["t"]
    end_of_day = 1801440000.0  # 2027-02-01T00:00:00Z
    check_key_state(d, end_of_day - 1)
    with pytest.raises(ProxyError) as e:
        check_key_state(d, end_of_day)
    assert e.value.status == 401 and e.value.error_type == "authentication_error"
    assert "'d' expired on 2027-01-31" in e.value.message
    assert e.value.headers["x-should-retry"] == "false"
    check_key_state(t, end_of_day - 12 * 3600 - 1)
    with pytest.raises(ProxyError, match="expired on 2027-01-31 12:00:00 UTC"):
        check_key_state(t, end_of_day - 12 * 3600)


def test_disabled_key_is_a_401_naming_it():
    key = ring_of([{"name": "carol", "key": ALICE, "enabled": False}]).by_name["carol"]
    with pytest.raises(ProxyError) as e:
        check_key_state(key, 0)
    assert e.value.status == 401 and "API key 'carol' is disabled" in e.value.message
    assert ALICE not in e.value.message


# ------------------------------------------------------------------ models

def _routes(model: str, *extra: str):
    cfg, _ = load_config(["-provider", "openai", "-model-haiku", "gpt-4o-mini", "-model", "gpt-4.1", *extra],
                         {"OPENAI_API_KEY": "sk-up", "HOME": "/nonexistent",
                          "CLASP_FALLBACK_BASE_URL": "http://127.0.0.1:9/v1"})
    return Router(cfg).resolve(model)


@pytest.mark.parametrize("patterns,requested,allowed", [
    (["sonnet"], "claude-sonnet-4-5", True),
    (["sonnet"], "claude-haiku-4-5", False),
    (["Haiku"], "claude-haiku-4-5", True),                  # tier words in any case
    (["claude-haiku-4-5"], "claude-haiku-4-5", True),
    (["claude-haiku-*"], "claude-haiku-4-5-20251001", True),
    (["gpt-4o-mini"], "claude-haiku-4-5", True),           # the resolved upstream model
    (["gpt-4o-mini"], "claude-sonnet-4-5", False),
    (["openai,gpt-4o*"], "claude-haiku-4-5", True),         # provider,model of the route
    (["openrouter,*"], "claude-haiku-4-5", False),
    (["openai,*"], "claude-opus-4-1", True),
    ([], "anything", True),
])
def test_model_patterns(patterns, requested, allowed):
    ring = ring_of([{"name": "alice", "key": ALICE, "models": patterns}] if patterns else
                   [{"name": "alice", "key": ALICE}])
    key = ring.by_name["alice"]
    routes = _routes(requested)
    if allowed:
        assert allowed_routes(key, requested, routes) == routes
    else:
        with pytest.raises(ProxyError) as e:
            allowed_routes(key, requested, routes)
        assert e.value.status == 403 and e.value.error_type == "permission_error"
        assert f"model {requested!r} is not allowed for key 'alice'" in e.value.message
        assert e.value.headers["x-should-retry"] == "false"


def test_model_pattern_keeps_only_the_allowed_fallback_routes():
    routes = _routes("claude-sonnet-4-5", "-fallback", "-fallback-provider", "custom",
                     "-fallback-model", "local-model")
    assert [r.target.provider for r in routes] == ["openai", "custom"]
    key = ring_of([{"name": "alice", "key": ALICE, "models": ["openai,*"]}]).by_name["alice"]
    assert [r.target.provider for r in allowed_routes(key, "claude-sonnet-4-5", routes)] == ["openai"]


# ------------------------------------------------------------------ auth

def test_auth_policy_finds_keys_by_digest_and_keeps_the_single_key():
    kf = KeyFile("", parse_keys([{"name": "alice", "key": ALICE}], "cfg").by_name.values())
    auth = AuthPolicy(True, "sk-single-key", keys=kf)
    assert auth.authenticate({"x-api-key": ALICE}).name == "alice"
    assert auth.authenticate({"authorization": f"Bearer {ALICE}"}).name == "alice"
    assert auth.authenticate({"x-api-key": "sk-single-key"}).name == "default"
    assert auth.check({"x-api-key": "sk-single-key"}).startswith("key:")   # the identity as before
    assert auth.authenticate({"x-api-key": BOB}) is None
    assert auth.authenticate({}) is None
    off = KeyFile("", parse_keys([{"name": "carol", "key": BOB, "enabled": False},
                                  {"name": "dave", "key": "sk-dave-123456", "expires": "2020-01-01"}], "c")
                  .by_name.values())
    assert AuthPolicy(True, "", keys=off).authenticate({"x-api-key": BOB}).name == "carol"  # the caller says why
    assert AuthPolicy(True, "", keys=off).check({"x-api-key": BOB}) is None               # check() refuses it
    assert AuthPolicy(True, "", keys=off).check({"x-api-key": "sk-dave-123456"}) is None
    keys_only = AuthPolicy(True, "", keys=kf)
    assert keys_only.authenticate({"x-api-key": ALICE}).name == "alice"
    assert keys_only.authenticate({"x-api-key": ""}) is None


# ------------------------------------------------------------------ files and reload

def test_keys_file_json_and_toml(tmp_path):
    ring = KeyFile(write(tmp_path / "k.json", {"keys": [{"name": "alice", "key": ALICE}]})).ring
    assert list(ring.by_name) == ["alice"]
    ring = KeyFile(write(tmp_path / "list.json", [{"name": "bob", "key": BOB}])).ring
    assert list(ring.by_name) == ["bob"]
    toml = tmp_path / "k.toml"
    toml.write_text(f'[[keys]]\nname = "alice"\nkey_sha256 = "{sha(ALICE)}"\nexpires = 2027-01-31\n'
                    f'models = ["sonnet", "openai,gpt-4o*"]\n')
    if HAS_TOML:
        assert KeyFile(str(toml)).ring.by_name["alice"].models == ("sonnet", "openai,gpt-4o*")
    else:
        with pytest.raises(ConfigError, match="TOML needs Python 3.11"):
            KeyFile(str(toml))


def test_broken_keys_file_at_startup_is_a_config_error_without_values(tmp_path):
    path = write(tmp_path / "k.json", '{"keys": [{"name": "alice", "key": "' + ALICE + '",}]}')
    with pytest.raises(ConfigError) as e:
        KeyFile(path)
    assert path in str(e.value) and "invalid JSON" in str(e.value) and ALICE not in str(e.value)
    with pytest.raises(ConfigError, match="cannot read keys file"):
        KeyFile(str(tmp_path / "missing.json"))


def test_hot_reload_by_mtime_checked_at_most_every_interval(tmp_path, caplog):
    now = [100.0]
    path = write(tmp_path / "k.json", {"keys": [{"name": "alice", "key": ALICE}]})
    kf = KeyFile(path, check_interval=5.0, clock=lambda: now[0])
    alice, bob = (hashlib.sha256(k.encode()).digest() for k in (ALICE, BOB))
    assert kf.lookup(alice).name == "alice" and kf.lookup(bob) is None
    write(tmp_path / "k.json", {"keys": [{"name": "bob", "key": BOB, "rate_limit": 3}]})
    os.utime(path, ns=(1, 1))  # a different mtime even within the clock's resolution
    now[0] += 4.9
    assert kf.lookup(bob) is None                      # not checked yet
    now[0] += 0.2
    with caplog.at_level(logging.INFO, logger="clasp.keys"):
        assert kf.lookup(bob).name == "bob" and kf.lookup(alice) is None
    assert "reloaded: 1 keys" in caplog.text and BOB not in caplog.text
    # a broken file keeps the keys in force and says why (never a key)
    write(tmp_path / "k.json", {"keys": [{"name": "carol", "key": "sk-carol-secret-1"}, {"name": "x"}]})
    os.utime(path, ns=(2, 2))
    now[0] += 10
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clasp.keys"):
        assert kf.lookup(bob).name == "bob"
    assert "keys entry #2 ('x')" in caplog.text and "keeping the 1 keys in force" in caplog.text
    assert "sk-carol-secret-1" not in caplog.text and kf.failures == 1
    # a deleted file too
    os.unlink(path)
    now[0] += 10
    assert kf.lookup(bob).name == "bob"


def test_sighup_handler_reloads_now(tmp_path, lt):
    from clasp.app import App
    path = write(tmp_path / "k.json", {"keys": [{"name": "alice", "key": ALICE}]})
    cfg, _ = load_config(["-keys-file", path, "-keys-check-interval", "3600"],
                         {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", "PROVIDER": "custom", "HOME": "/nonexistent"})
    app = App(cfg)
    try:
        assert app.auth.requires_auth("/v1/messages")     # a keys file turns authentication on
        write(tmp_path / "k.json", {"keys": [{"name": "bob", "key": BOB}]})
        assert app.auth.authenticate({"x-api-key": BOB}) is None   # the interval has not passed
        assert app.reload_keys() is True                            # what SIGHUP calls
        assert app.auth.authenticate({"x-api-key": BOB}).name == "bob"
        assert app.auth.authenticate({"x-api-key": ALICE}) is None
    finally:
        lt.run(app.close())


def test_config_file_keys_table_and_reserved_default_name(tmp_path):
    from clasp.app import App
    conf = write(tmp_path / "clasp.json", {"provider": "custom", "keys": [{"name": "alice", "key": ALICE}]})
    env = {"CUSTOM_BASE_URL": "http://127.0.0.1:9/v1", "HOME": "/nonexistent"}
    cfg, _ = load_config(["-config", conf], env)
    assert [k.name for k in cfg.keys] == ["alice"] and cfg.auth_required and not cfg.client_chooses_model
    bad = write(tmp_path / "bad.json", {"keys": [{"name": "alice", "key": "tiny"}]})
    with pytest.raises(ConfigError, match=r"config file .*bad.json: keys entry #1 \('alice'\)"):
        load_config(["-config", bad], env)
    taken = write(tmp_path / "taken.json", {"provider": "custom", "keys": [{"name": "default", "key": ALICE}]})
    cfg, _ = load_config(["-config", taken, "-auth", "-auth-api-key", "sk-single-key"], env)
    with pytest.raises(ConfigError, match="'default' is CLASP_AUTH_API_KEY's"):
        App(cfg)
