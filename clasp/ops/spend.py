"""Spend per key, model and target: tokens and cost of each finished request, kept in the Store.

Hashes (the store adds its namespace prefix; days and months are UTC)::

    spend:day:YYYY-MM-DD            ttl 35 days    field "<key>|<target>|<model>|<measure>"
    spend:month:YYYY-MM             ttl 400 days   same fields
    spend:all                       no ttl         same fields (since the store began)
    spend:key:day:YYYY-MM-DD:<key>  ttl 35 days    field "<measure>" (the key's totals: budgets)
    spend:key:month:YYYY-MM:<key>   ttl 400 days   same

Measures: requests, input_tokens (not read from cache), cached_input_tokens, output_tokens,
cost_usd (priced models), unpriced_requests (models without a price: their cost is unknown,
never counted as 0).

Budgets are checked before a request against the spend recorded so far, so a key may overshoot by
the cost of the requests in flight when its budget runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from clasp.ops.pricing import PriceTable
from clasp.store.local import LocalStore

__all__ = ["SpendLedger", "MEASURES", "DAY_TTL_S", "MONTH_TTL_S"]

log = logging.getLogger("clasp.spend")

DAY_TTL_S = 35 * 86400
MONTH_TTL_S = 400 * 86400
MEASURES = ("requests", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd", "unpriced_requests")
_SEP = "|"
_COST = ["cost_usd"]
_MAX_LABEL = 200
# Distinct upstream model names booked by this process: names beyond it (clients may pass any name
# through on a private proxy) are booked as "other", so the hashes stay bounded.
MAX_MODELS = 1000
MAX_HELD = 1000  # (key, target, model) sums held before they are written to a local store
_DAY_S = 86400  # a UTC day in POSIX time (no leap seconds)


def _clean(text: str) -> str:
    text = text.replace(_SEP, "/")
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL]


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def next_month_start(ts: float) -> str:
    t = time.gmtime(ts)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return f"{year:04d}-{month:02d}-01"


class SpendLedger:
    def __init__(self, store, prices: PriceTable, metrics=None, *, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.prices = prices
        self.metrics = metrics
        self.wall = wall
        self._pending: set[asyncio.Future] = set()
        self._models: set[str] = set()
        self.errors = 0
        # A store whose hincr is LocalStore's own never suspends, and only this ledger reads its spend
        # hashes: requests are summed here per key, target and model (no task, no five hash updates
        # per request) and written to it before anything is read from it (budgets, /costs), when
        # the UTC day changes, when many are held, and on flush(). A shared store (or a subclass
        # that overrides hincr) is written per request, in the background.
        self._book_now = store.hincr_now if getattr(type(store), "hincr", None) is LocalStore.hincr else None
        self._held: dict[tuple[str, str, str], dict[str, float]] = {}
        self._held_cost: dict[str, float] = {}  # key -> USD held (what key_spend adds to the store's)
        self._held_period: tuple[str, str] = ("", "")  # the day and month of what is held
        # The UTC day and month of the wall clock, worked out once a day: [start, end) and the names
        self._period: tuple[float, float, tuple[str, str]] = (0.0, 0.0, ("", ""))
        # (key, target, model) -> {measure: field name} of the detail hashes (bounded: cleared when full)
        self._fields: dict[tuple[str, str, str], dict[str, str]] = {}

    def day_and_month(self, now: float) -> tuple[str, str]:
        """(day_of(now), month_of(now)), formatted once per UTC day (the same tuple all day)."""
        start, end, names = self._period
        if not start <= now < end:
            start = now - now % _DAY_S
            names = (day_of(now), month_of(now))
            self._period = (start, start + _DAY_S, names)
        return names

    def _field_names(self, key: str, target: str, model: str) -> dict[str, str]:
        names = self._fields.get((key, target, model))
        if names is None:
            prefix = _SEP.join((_clean(key), _clean(target), _clean(model))) + _SEP
            names = {m: prefix + m for m in MEASURES}
            if len(self._fields) >= 4 * MAX_MODELS:
                self._fields.clear()
            self._fields[(key, target, model)] = names
        return names

    # ---- recording

    def record(self, key: str, target: str, model: str, input_tokens: int, cached_tokens: int,
               output_tokens: int) -> float | None:
        """Book one finished request (Anthropic usage: ``input_tokens`` excludes ``cached_tokens``);
        returns its cost, None when the model has no price. A shared store is written in the
        background, a local one before it is read (see __init__)."""
        price = self.prices.lookup(model)
        cost = None if price is None else price.cost(input_tokens, cached_tokens, output_tokens)
        if self.metrics is not None:
            self.metrics.record_spend(key, model, input_tokens, cached_tokens, output_tokens, cost)
        values = {"requests": 1.0, "input_tokens": float(input_tokens), "cached_input_tokens": float(cached_tokens),
                  "output_tokens": float(output_tokens)}
        if cost is None:
            values["unpriced_requests"] = 1.0
        else:
            values["cost_usd"] = cost
        if model not in self._models:
            if len(self._models) < MAX_MODELS:
                self._models.add(model)
            else:
                model = "other"
        if self._book_now is not None:
            period = self.day_and_month(self.wall())
            if period is not self._held_period:
                if self._held:
                    self._write_held()  # what was held belongs to the day before
                self._held_period = period
            sums = self._held.get((key, target, model))
            if sums is None:
                if len(self._held) >= MAX_HELD:
                    self._write_held()
                sums = self._held[(key, target, model)] = {}
            for m, v in values.items():
                sums[m] = sums.get(m, 0.0) + v
            if cost is not None:
                self._held_cost[key] = self._held_cost.get(key, 0.0) + cost
            return cost
        task = asyncio.ensure_future(self._write(key, target, model, values))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return cost

    def _write_held(self) -> None:
        """Write the sums held for a store that never suspends (the hashes _write writes)."""
        held, self._held = self._held, {}
        self._held_cost = {}
        day, month = self._held_period
        hincr = self._book_now
        for (key, target, model), values in held.items():
            names = self._field_names(key, target, model)
            detail = {names[m]: v for m, v in values.items()}
            try:
                hincr(f"spend:day:{day}", detail, DAY_TTL_S)
                hincr(f"spend:month:{month}", detail, MONTH_TTL_S)
                hincr("spend:all", detail)
                hincr(f"spend:key:day:{day}:{key}", values, DAY_TTL_S)
                hincr(f"spend:key:month:{month}:{key}", values, MONTH_TTL_S)
            except Exception as e:  # as _write: booking never breaks a request
                self.errors += 1
                log.warning("spend not recorded for key %r: %s", key, type(e).__name__)

    async def _write(self, key: str, target: str, model: str, values: dict[str, float]) -> None:
        day, month = self.day_and_month(self.wall())
        names = self._field_names(key, target, model)
        detail = {names[m]: v for m, v in values.items()}
        store = self.store
        try:
            await store.hincr(f"spend:day:{day}", detail, DAY_TTL_S)
            await store.hincr(f"spend:month:{month}", detail, MONTH_TTL_S)
            await store.hincr("spend:all", detail)
            await store.hincr(f"spend:key:day:{day}:{key}", values, DAY_TTL_S)
            await store.hincr(f"spend:key:month:{month}:{key}", values, MONTH_TTL_S)
        except Exception as e:  # a store outage must not break requests; the store logs/counts it
            self.errors += 1
            log.warning("spend not recorded for key %r: %s", key, type(e).__name__)

    async def flush(self) -> None:
        """Write what is held and wait for the writes in flight (tests, shutdown)."""
        if self._held:
            self._write_held()
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # ---- reading

    async def key_spend(self, key: str) -> tuple[float, float]:
        """USD spent by ``key`` today and this month (UTC)."""
        day_name, month_name = self.day_and_month(self.wall())
        (day,) = await self.store.hmget(f"spend:key:day:{day_name}:{key}", _COST)
        (month,) = await self.store.hmget(f"spend:key:month:{month_name}:{key}", _COST)
        held = self._held_cost.get(key)
        if held:  # a local store: the key's requests not written to it yet (checked before each request)
            held_day, held_month = self._held_period
            if held_day == day_name:
                day += held
            if held_month == month_name:
                month += held
        return day, month

    async def report(self, budget_keys: Iterable = ()) -> dict:
        """GET /costs: spend per key and model for today, this month and since the start."""
        if self._held:
            self._write_held()
        now = self.wall()
        day, month = day_of(now), month_of(now)
        out: dict = {"currency": "USD", "day": day, "month": month,
                     "today": _breakdown(await self.store.hgetall(f"spend:day:{day}")),
                     "this_month": _breakdown(await self.store.hgetall(f"spend:month:{month}")),
                     "since_start": _breakdown(await self.store.hgetall("spend:all"))}
        budgets = {}
        for k in budget_keys:
            if not k.has_budget:
                continue
            spent_day, spent_month = await self.key_spend(k.name)
            entry: dict = {}
            if k.daily_budget_usd is not None:
                entry["daily"] = {"budget_usd": k.daily_budget_usd, "spent_usd": round(spent_day, 6),
                                  "remaining_usd": round(max(0.0, k.daily_budget_usd - spent_day), 6),
                                  "resets_at": f"{_next_day(now)}T00:00:00Z"}
            if k.monthly_budget_usd is not None:
                entry["monthly"] = {"budget_usd": k.monthly_budget_usd, "spent_usd": round(spent_month, 6),
                                    "remaining_usd": round(max(0.0, k.monthly_budget_usd - spent_month), 6),
                                    "resets_at": f"{next_month_start(now)}T00:00:00Z"}
            budgets[k.name] = entry
        out["budgets"] = budgets
        return out


def _next_day(ts: float) -> str:
    return day_of(ts - ts % 86400 + 86400)


def _add(into: dict, measure: str, value: float) -> None:
    into[measure] = into.get(measure, 0) + value


def _finish(totals: dict) -> dict:
    """Integers for counts; cost_usd None when no request of it had a price."""
    out = {m: int(round(totals.get(m, 0))) for m in MEASURES if m != "cost_usd"}
    priced = out["requests"] - out["unpriced_requests"]
    out["cost_usd"] = round(totals.get("cost_usd", 0.0), 6) if priced > 0 else None
    return out


def _breakdown(fields: dict[str, float]) -> dict:
    """{key: {totals..., "models": {model: {totals..., "targets": {target: totals}}}}}."""
    raw: dict = {}
    for name, value in fields.items():
        parts = name.split(_SEP)
        if len(parts) != 4 or parts[3] not in MEASURES:
            continue
        key, target, model, measure = parts
        k = raw.setdefault(key, {"totals": {}, "models": {}})
        m = k["models"].setdefault(model, {"totals": {}, "targets": {}})
        _add(k["totals"], measure, value)
        _add(m["totals"], measure, value)
        _add(m["targets"].setdefault(target, {}), measure, value)
    out = {}
    for key in sorted(raw):
        k = raw[key]
        models = {}
        for model in sorted(k["models"]):
            m = k["models"][model]
            models[model] = {**_finish(m["totals"]),
                             "targets": {t: _finish(v) for t, v in sorted(m["targets"].items())}}
        out[key] = {**_finish(k["totals"]), "models": models}
    return out
