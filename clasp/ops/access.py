"""What a client key may do: enabled and not expired, its own rate limit, its allowed models and
its budgets. Each check raises the Anthropic error Claude Code shows without retrying (the rate
limit's 429 carries retry-after, as the global limiter's does). Messages name the key's ``name``,
never the key.
"""

from __future__ import annotations

import time
from fnmatch import fnmatchcase
from typing import Callable

from clasp.config import TIERS
from clasp.ops.keys import ApiKey
from clasp.ops.ratelimit import rate_limit_headers
from clasp.ops.spend import SpendLedger, next_month_start
from clasp.routing.providers import Route, Router
from clasp.translate.errors import ProxyError

__all__ = ["AccessControl", "check_key_state", "allowed_routes"]

_NO_RETRY = {"x-should-retry": "false"}


def check_key_state(key: ApiKey | None, now: float) -> None:
    """401 for a disabled or expired key."""
    if key is None:
        return
    if not key.enabled:
        raise ProxyError(401, "authentication_error", f"API key {key.name!r} is disabled", dict(_NO_RETRY), False)
    if key.expires_at is not None and now >= key.expires_at:
        raise ProxyError(401, "authentication_error", f"API key {key.name!r} expired on {key.expires_text}",
                         dict(_NO_RETRY), False)


def _route_names(route: Route) -> tuple[str, ...]:
    t = route.target
    return (f"{t.provider},{route.model}", f"{t.name},{route.model}")


def allowed_routes(key: ApiKey | None, requested: str, routes: list[Route]) -> list[Route]:
    """The routes ``key`` may use for ``requested``; 403 when none.

    A pattern allows a request when it is a tier word (opus, sonnet, haiku) of the requested name,
    or (with * and ? globs) matches the requested name; then every route the proxy chose is allowed.
    Otherwise a pattern matching a route's upstream model, or its "provider,model", allows that route
    (and only those: a fallback to another provider stays closed unless allowed too)."""
    if key is None or not key.models:
        return routes
    name = requested[:-4] if requested.endswith("[1m]") else requested
    tier = Router.tier_of(name)
    for pattern in key.models:
        if pattern in TIERS:
            if pattern == tier:
                return routes
        elif "," not in pattern and fnmatchcase(name, pattern):
            return routes
    allowed = [r for r in routes if any(
        fnmatchcase(r.model, p) if "," not in p else any(fnmatchcase(n, p) for n in _route_names(r))
        for p in key.models if p not in TIERS)]
    if not allowed:
        raise ProxyError(403, "permission_error",
                         f"model {requested!r} is not allowed for key {key.name!r} "
                         f"(allowed: {', '.join(key.models)})", dict(_NO_RETRY), False)
    return allowed


class AccessControl:
    """Per-key enforcement through the Store (so replicas and workers share buckets and spend)."""

    def __init__(self, store, spend: SpendLedger, *, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.spend = spend
        self.wall = wall

    async def admit(self, key: ApiKey | None) -> list[tuple[str, str]]:
        """The key's own rate limit: its headers, or 429 rate_limit_error with retry-after."""
        if key is None or not key.rate_limit:
            return []
        burst = key.burst or key.rate_limit
        decision = await self.store.take(f"ratelimit:key:{key.name}", key.rate_limit / 60.0, burst)
        headers = rate_limit_headers(decision, self.wall())
        if not decision.allowed:
            raise ProxyError(429, "rate_limit_error",
                             f"rate limit of {key.rate_limit} requests per minute for key {key.name!r} exceeded",
                             dict(headers), False)
        return headers

    async def check_budget(self, key: ApiKey | None) -> None:
        """402 billing_error (not retried by Claude Code) once a budget is spent."""
        if key is None or not key.has_budget:
            return
        day, month = await self.spend.key_spend(key.name)
        if key.daily_budget_usd is not None and day >= key.daily_budget_usd:
            raise ProxyError(402, "billing_error",
                             f"daily budget of ${key.daily_budget_usd:.2f} for key {key.name!r} is spent "
                             f"(${day:.2f}); resets at 00:00 UTC", dict(_NO_RETRY), False)
        if key.monthly_budget_usd is not None and month >= key.monthly_budget_usd:
            raise ProxyError(402, "billing_error",
                             f"monthly budget of ${key.monthly_budget_usd:.2f} for key {key.name!r} is spent "
                             f"(${month:.2f}); resets on {next_month_start(self.wall())} 00:00 UTC",
                             dict(_NO_RETRY), False)
