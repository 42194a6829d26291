"""Proxy API-key authentication (CLASP `-auth` / `CLASP_AUTH*`).

Endpoint access when authentication is enabled (CLASP README):

    /                     always accessible
    /health               anonymous unless allow_anonymous_health=False
    /metrics              needs the key unless allow_anonymous_metrics=True
    /metrics/prometheus   same switch as /metrics
    /dashboard            same switch as /metrics (the page reads /metrics with the key it is given)
    /costs                same switch as /metrics
    /v1/messages, /v1/messages/count_tokens and every other path: needs the key

Clients send the key as ``x-api-key`` (ANTHROPIC_API_KEY) or ``Authorization: Bearer``
(ANTHROPIC_AUTH_TOKEN); Claude Code may send both, so either one matching is enough.

Besides the one CLASP_AUTH_API_KEY (the key named "default"), client keys (clasp.ops.keys) may be
configured: ``authenticate`` returns the matching key's record, disabled and expired ones included
(the caller answers those with a 401 that names them).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Mapping

from clasp.ops.keys import ApiKey

__all__ = ["AuthPolicy", "ANONYMOUS", "DEFAULT_KEY_NAME", "fingerprint"]

# Identity returned by check() when authentication is disabled: there is no key to tell clients apart,
# so the caller should bucket by something else (e.g. the peer address) if it needs per-client limits.
ANONYMOUS = "anonymous"
DEFAULT_KEY_NAME = "default"  # the name of CLASP_AUTH_API_KEY in /costs and metrics

_METRICS_PATHS = frozenset(("/metrics", "/metrics/prometheus", "/dashboard", "/costs"))


def fingerprint(key: str) -> str:
    """Short, non-reversible identity for a key: safe for logs and rate-limit buckets."""
    return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class AuthPolicy:
    """Decides which paths need the proxy key and validates the key on a request."""

    __slots__ = ("enabled", "allow_anonymous_health", "allow_anonymous_metrics", "_key", "_identity", "keys",
                 "default_key", "anonymous_key")

    def __init__(
        self,
        enabled: bool,
        api_key: str | None,
        allow_anonymous_health: bool = True,
        allow_anonymous_metrics: bool = False,
        keys=None,
    ) -> None:
        """``keys``: the client keys in force (clasp.ops.keys.KeyFile), or None."""
        if enabled and not api_key and keys is None:
            # Same rule as CLASP: -auth without -auth-api-key is a configuration error, not "open".
            raise ValueError("authentication is enabled but no API key is configured (CLASP_AUTH_API_KEY)")
        self.enabled = bool(enabled)
        self.allow_anonymous_health = bool(allow_anonymous_health)
        self.allow_anonymous_metrics = bool(allow_anonymous_metrics)
        # Only a digest is kept (for the constant-time comparison); never exposed by repr/str.
        self._key = _digest(api_key.encode("utf-8")) if api_key else b""
        self._identity = fingerprint(api_key) if api_key else ANONYMOUS
        self.keys = keys
        self.default_key = ApiKey(DEFAULT_KEY_NAME, identity=self._identity)
        self.anonymous_key = ApiKey(ANONYMOUS, identity=None)  # rate-limited by peer address

    def __repr__(self) -> str:
        return (
            f"AuthPolicy(enabled={self.enabled}, api_key={'<set>' if self._key else '<unset>'}, "
            f"allow_anonymous_health={self.allow_anonymous_health}, "
            f"allow_anonymous_metrics={self.allow_anonymous_metrics})"
        )

    __str__ = __repr__

    def requires_auth(self, path: str) -> bool:
        """True when a request to ``path`` must carry the proxy key.

        The query string is ignored (Claude Code calls ``/v1/messages?beta=true``). Matching is
        exact, so unknown or prefixed paths fail closed (need the key).
        """
        if not self.enabled:
            return False
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        if path == "/" or path == "":
            return False
        if path == "/health":
            return not self.allow_anonymous_health
        if path in _METRICS_PATHS:
            return not self.allow_anonymous_metrics
        return True

    def check(self, headers: Mapping[str, str]) -> str | None:
        """Validate the request's key; return the client identity, or None to reject (401).

        ``headers`` should have lower-case names (server contract); other casings are found too.
        With authentication disabled every request is accepted as ``ANONYMOUS``.
        """
        if not self.enabled:
            return ANONYMOUS
        key = self.authenticate(headers)
        if key is None or not key.enabled or (key.expires_at is not None and time.time() >= key.expires_at):
            return None
        return key.identity

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The ApiKey record of the request's key (CLASP_AUTH_API_KEY is ``default_key``; a client
        key may be disabled or expired: the caller checks), ``anonymous_key`` when authentication
        is off, None for a missing or unknown key."""
        if not self.enabled:
            return self.anonymous_key
        x_api_key = headers.get("x-api-key")
        authorization = headers.get("authorization")
        if x_api_key is None and authorization is None:
            # Tolerate callers that did not lower-case the names.
            for name, value in headers.items():
                low = name.lower()
                if low == "x-api-key":
                    x_api_key = value
                elif low == "authorization":
                    authorization = value
        found = None
        if x_api_key is not None:
            found = self._find(x_api_key.strip())
        if found is None and authorization is not None:
            parts = authorization.strip().split(None, 1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                found = self._find(parts[1].strip())
        return found

    def _find(self, candidate: str) -> ApiKey | None:
        if self._key and self._matches(candidate):
            return self.default_key
        keys = self.keys
        if keys is None:
            return None
        for digest in _digests(candidate):
            key = keys.lookup(digest)  # a dict lookup by digest: no scan over the keys
            if key is not None and hmac.compare_digest(key.digest, digest):
                return key
        return None

    def _matches(self, candidate: str) -> bool:
        # compare_digest of two equal-length digests: the time taken reveals neither the content nor
        # the length of the configured key (compare_digest on the raw strings returns early when
        # the lengths differ). The server decodes header bytes as latin-1, so encoding back to
        # latin-1 gives the bytes the client sent (a UTF-8 key arrives as its UTF-8 bytes); a
        # caller passing the already-decoded key is matched through its UTF-8 form.
        ok = hmac.compare_digest(_digest(candidate.encode("utf-8", "surrogatepass")), self._key)
        if not candidate.isascii():
            try:
                wire = candidate.encode("latin-1")
            except UnicodeEncodeError:
                return ok
            ok = hmac.compare_digest(_digest(wire), self._key) or ok
        return ok


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _digests(candidate: str) -> list[bytes]:
    """The digests a presented key may have been configured as: its UTF-8 form and, for a non-ASCII
    key, the bytes the client sent (headers are decoded as latin-1), as _matches does."""
    out = [_digest(candidate.encode("utf-8", "surrogatepass"))]
    if not candidate.isascii():
        try:
            out.append(_digest(candidate.encode("latin-1")))
        except UnicodeEncodeError:
            pass
    return out
