from __future__ import annotations

import hashlib

import pytest

from clasp.ops.auth import ANONYMOUS, AuthPolicy

KEY = "proxy-secret-key-123"
FP = "key:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]


def policy(**kw) -> AuthPolicy:
    return AuthPolicy(True, KEY, **kw)


def test_endpoint_table_defaults():
    p = policy()
    assert p.requires_auth("/") is False
    assert p.requires_auth("/health") is False
    assert p.requires_auth("/metrics") is True
    assert p.requires_auth("/metrics/prometheus") is True
    assert p.requires_auth("/v1/messages") is True
    assert p.requires_auth("/v1/messages/count_tokens") is True
    # Claude Code appends ?beta=true; the query must not change the decision.
    assert p.requires_auth("/v1/messages?beta=true") is True
    assert p.requires_auth("/health?x=1") is False
    # Anything unknown fails closed, including near-misses of the open paths.
    for path in ("/api/hello", "/health/", "/healthz", "/metricsx", "/metrics/other", "//", "/v1/models"):
        assert p.requires_auth(path) is True, path


def test_anonymous_switches():
    p = policy(allow_anonymous_health=False, allow_anonymous_metrics=True)
    assert p.requires_auth("/health") is True
    assert p.requires_auth("/metrics") is False
    assert p.requires_auth("/metrics/prometheus") is False
    assert p.requires_auth("/") is False
    assert p.requires_auth("/v1/messages") is True


def test_disabled_policy_opens_everything():
    p = AuthPolicy(False, None)
    assert not p.requires_auth("/v1/messages")
    assert not p.requires_auth("/metrics")
    assert p.check({}) == ANONYMOUS
    assert p.check({"x-api-key": "anything"}) == ANONYMOUS


def test_enabled_without_key_is_a_config_error():
    with pytest.raises(ValueError):
        AuthPolicy(True, "")
    with pytest.raises(ValueError):
        AuthPolicy(True, None)


def test_check_x_api_key_and_bearer():
    p = policy()
    assert p.check({"x-api-key": KEY}) == FP
    assert p.check({"authorization": f"Bearer {KEY}"}) == FP
    assert p.check({"authorization": f"bearer   {KEY}  "}) == FP
    assert p.check({"X-Api-Key": KEY}) == FP  # names not lower-cased by the caller
    assert p.check({"Authorization": f"Bearer {KEY}"}) == FP


def test_check_either_header_may_match():
    p = policy()
    # Claude Code can send both: ANTHROPIC_API_KEY in x-api-key and ANTHROPIC_AUTH_TOKEN as Bearer.
    assert p.check({"x-api-key": "stale", "authorization": f"Bearer {KEY}"}) == FP
    assert p.check({"x-api-key": KEY, "authorization": "Bearer stale"}) == FP


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": ""},
        {"x-api-key": KEY[:-1]},
        {"x-api-key": KEY + "x"},
        {"x-api-key": KEY.upper()},
        {"authorization": KEY},                 # no scheme
        {"authorization": f"Basic {KEY}"},      # wrong scheme
        {"authorization": "Bearer"},
        {"authorization": f"Bearer {KEY} extra"},
        {"x-api-key": "nope", "authorization": "Bearer nope"},
        {"x-api-key": "\udcff"},                # undecodable garbage must not raise
    ],
)
def test_check_rejects(headers):
    assert policy().check(headers) is None


def test_identity_is_a_short_fingerprint_not_the_key():
    ident = policy().check({"x-api-key": KEY})
    assert ident is not None and ident.startswith("key:") and len(ident) == 16
    assert KEY not in ident


def test_key_never_in_repr_or_str():
    p = policy()
    for text in (repr(p), str(p), f"{p}", repr([p])):
        assert KEY not in text
        assert "AuthPolicy" in text
