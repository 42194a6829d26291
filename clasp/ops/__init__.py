"""Operational building blocks: proxy auth, rate limiting, response cache, metrics, logs.

Each module is self-contained and I/O-free apart from the log streams; time-dependent classes take
an injectable ``clock`` (and ``wall`` where a wall-clock timestamp is produced). ``clasp.app`` wires
them into the request pipeline.
"""

from __future__ import annotations

from .auth import AuthPolicy
from .cache import ResponseCache, cache_key, is_cacheable
from .logs import AccessLog, DebugLog, redact, redact_headers
from .metrics import Metrics
from .ratelimit import RateDecision, RateLimiter

__all__ = [
    "AuthPolicy",
    "RateLimiter",
    "RateDecision",
    "ResponseCache",
    "cache_key",
    "is_cacheable",
    "Metrics",
    "AccessLog",
    "DebugLog",
    "redact",
    "redact_headers",
]
