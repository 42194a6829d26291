"""Request metrics for ``GET /metrics`` (JSON, CLASP's shape) and ``GET /metrics/prometheus``.

Recording is on the hot path, so it only does dict lookups and int/float increments: no locks, no
formatting, no allocation beyond a new series the first time a label combination appears. All
formatting happens when a scrape asks for it. Gauges that other components own (breaker state, queue
depth, cache size) are pulled through callbacks at scrape time instead of being pushed.

Not thread-safe: meant to be called from the single asyncio event loop.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "Metrics",
    "DURATION_BUCKETS",
    "TTFT_BUCKETS",
    "go_duration",
    "escape_label_value",
    "bounded_label",
    "RECENT_ERRORS",
    "render_json",
    "render_prometheus",
    "merge_snapshots",
]

# Upper bounds (seconds). LLM calls range from sub-second to many minutes; first tokens arrive sooner.
DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

BREAKER_STATES = ("closed", "half_open", "open")


def go_duration(seconds: float) -> str:
    """Whole-second Go ``time.Duration`` string: ``0s``, ``45s``, ``5m30s``, ``1h0m5s``."""
    s = int(seconds + 0.5) if seconds > 0 else 0
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def escape_label_value(value: str) -> str:
    """Prometheus text format label value escaping: backslash, double quote, line feed."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _pct(num: float, den: float) -> str:
    return f"{(num / den * 100.0) if den else 0.0:.2f}%"


def _labels(names: tuple[str, ...], values: Iterable[object]) -> str:
    return ",".join(f'{n}="{escape_label_value(str(v))}"' for n, v in zip(names, values))


# Distinct values of the model label (requested model names, chosen by clients). Later names are
# counted as model="other", so a scrape stays a bounded size: series = providers x MAX_SERIES at most.
MAX_SERIES = 32
# Spend counters: (key, upstream model) series. Key names come from the configuration, model names
# may come from clients (pass-through): distinct models beyond MAX_SERIES count as OTHER, and keys
# beyond MAX_SPEND_KEYS too.
MAX_SPEND_KEYS = 1000
# Longest model label value; longer names are cut and marked with TRUNCATED.
MAX_LABEL_CHARS = 100
TRUNCATED = "..."
# Label values of requests that were not routed (rejected before an upstream target was chosen) and
# of model names beyond MAX_SERIES.
NOT_ROUTED = "-"
OTHER = "other"


# Errors kept for the dashboard's "last errors" list, and the longest message kept of each (after
# redaction); distinct error types counted before the rest are counted as OTHER.
RECENT_ERRORS = 20
RECENT_ERROR_CHARS = 300
MAX_ERROR_TYPES = 16
# What a failed request without an Anthropic error type of its own counts as.
_STATUS_ERROR_TYPES = {499: "client_closed", 529: "overloaded_error", 429: "rate_limit_error",
                       401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                       413: "request_too_large"}


def _quantile_ms(q: float, bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """Histogram quantile (linear within a bucket, as Prometheus' histogram_quantile), in ms; the
    +Inf bucket reads as the last finite bound. None when the histogram is empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cum = 0
    for i, c in enumerate(counts):
        if c and cum + c >= rank:
            if i >= len(bounds):
                return round(bounds[-1] * 1000.0, 1)
            lo = bounds[i - 1] if i else 0.0
            return round((lo + (bounds[i] - lo) * (rank - cum) / c) * 1000.0, 1)
        cum += c
    return round(bounds[-1] * 1000.0, 1)


def _histogram_json(bounds: tuple[float, ...], counts: list[int], total_s: float) -> dict:
    n = sum(counts)
    return {"buckets_s": list(bounds), "counts": counts, "count": n, "sum_s": round(total_s, 6),
            "p50_ms": _quantile_ms(0.5, bounds, counts), "p90_ms": _quantile_ms(0.9, bounds, counts),
            "p99_ms": _quantile_ms(0.99, bounds, counts)}


def bounded_label(value: str) -> str:
    """A label value that is short, encodable as UTF-8 and free of control characters other than
    line feed (which the exposition format escapes): lone surrogates and the like become "?"."""
    if len(value) > MAX_LABEL_CHARS:
        value = value[:MAX_LABEL_CHARS - len(TRUNCATED)] + TRUNCATED
    if not value.isprintable():
        value = "".join(c if c.isprintable() or c == "\n" else "?" for c in value)
    return value


class _Series:
    """Per (provider, model) counters and histograms."""

    __slots__ = (
        "requests", "streaming", "tool_calls", "input_tokens", "output_tokens",
        "dur_counts", "dur_sum", "ttft_counts", "ttft_sum", "ttft_count", "upstream_model",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.streaming = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        # Non-cumulative counts per bucket; the last slot is (+Inf). Cumulated at scrape time.
        self.dur_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.dur_sum = 0.0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.upstream_model = ""  # the model the upstream last served for it (status lines show it)


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 redact: Callable[[str], str] | None = None, wall: Callable[[], float] = time.time) -> None:
        """``redact``: applied to error messages kept for the dashboard (configured secrets and
        credential-shaped text); ``wall``: the clock their times are read from."""
        self._clock = clock
        self._wall = wall
        self._redact = redact or (lambda text: text)
        # In flight now (the dashboard's gauges): requests inside the pipeline, streams being relayed.
        self.active_requests = 0
        self.active_streams = 0
        self._error_types: dict[str, int] = {}                       # error type -> n (bounded)
        self._recent_errors: deque[dict] = deque(maxlen=RECENT_ERRORS)
        self._start = clock()
        self.total = 0
        self.successful = 0
        self.errors = 0
        self.streaming = 0
        self.tool_calls = 0
        self.latency_sum = 0.0
        self._requests: dict[tuple[str, str, int], int] = {}        # (provider, model, status)
        self._apis: dict[tuple[str, str], int] = {}                   # (provider, api) -> routed requests
        self._series: dict[tuple[str, str], _Series] = {}            # (provider, model)
        self._models: set[str] = set()                               # model label values in use
        self._cache_results: dict[str, int] = {}                     # "hit"/"miss"/... -> n
        self._upstream_errors: dict[tuple[str, str], int] = {}       # (provider, status)
        self._retries: dict[str, int] = {}                           # provider
        self._fallbacks: dict[tuple[str, str], int] = {}             # (from, to)
        # (key name, upstream model) -> [input, cached_input, output tokens, cost_usd or None if unpriced]
        self._spend: dict[tuple[str, str], list] = {}
        self._spend_keys: set[str] = set()
        self._spend_models: set[str] = set()
        self._breaker_source: Callable[[], Mapping[str, Any]] | None = None
        self._queue_source: Callable[[], Any] | None = None
        self._cache_source: Callable[[], Mapping[str, Any]] | None = None
        self._memory_source: Callable[[], Mapping[str, Any]] | None = None
        self._store_source: Callable[[], Mapping[str, Any]] | None = None

    # ---- sources (pulled at scrape time) -------------------------------------------------------

    def set_sources(
        self,
        *,
        breakers: Callable[[], Mapping[str, Any]] | None = None,
        queue: Callable[[], Any] | None = None,
        cache: Callable[[], Mapping[str, Any]] | None = None,
        memory: Callable[[], Mapping[str, Any]] | None = None,
        store: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Register gauge callbacks; only the ones given are replaced.

        breakers() -> {target_id: state}; state "closed", "open", "half_open"/"half-open"
                      (an Enum whose value is such a string also works).
        queue()    -> current depth as int, or a mapping with "depth" (and optionally "max_size", ...).
        cache()    -> mapping with "size", "max_size" and optionally "evictions"
                      (StoreCache.stats fits). Registering it marks the cache as enabled.
        memory()   -> mapping with "rss_bytes" (int, or None where unknown) and "trims".
        store()    -> Store.health(): "kind", "status" ("ok"/"degraded") and optionally "errors".
        """
        if breakers is not None:
            self._breaker_source = breakers
        if queue is not None:
            self._queue_source = queue
        if cache is not None:
            self._cache_source = cache
        if memory is not None:
            self._memory_source = memory
        if store is not None:
            self._store_source = store

    # ---- recording (hot path) ------------------------------------------------------------------

    def record_request(
        self,
        provider: str,
        model: str,
        status: int,
        streaming: bool = False,
        tool_calls: int = 0,
        latency_s: float = 0.0,
        ttft_s: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache: str | None = None,
        api: str = "",
        upstream_model: str = "",
        error_type: str = "",
        error_message: str = "",
    ) -> None:
        """One finished request. ``api``: the upstream dialect it was routed to ("chat",
        "responses"; "" when not routed). ``status`` is the HTTP status sent to the client (< 400 = success);
        ``tool_calls`` the number of tool_use blocks returned; ``cache`` "hit", "miss" or None when the
        request was not cacheable. ``model`` is the requested name of a routed request, or NOT_ROUTED;
        it is cut to MAX_LABEL_CHARS, and names beyond MAX_SERIES distinct ones are counted as OTHER.
        ``error_type``/``error_message``: the Anthropic error the client got, when status >= 400."""
        self.total += 1
        if status < 400:
            self.successful += 1
        else:
            self.errors += 1
            self._record_error(provider, model, status, error_type, error_message)
        self.tool_calls += tool_calls
        self.latency_sum += latency_s
        pm = (provider, model)
        s = self._series.get(pm) if len(model) <= MAX_LABEL_CHARS else None  # no hashing of huge names
        if s is None:
            # the model name comes from clients: bound its length and the number of series it creates
            model = bounded_label(model)
            if model not in self._models:
                if len(self._models) < MAX_SERIES or model in (NOT_ROUTED, OTHER):
                    self._models.add(model)
                else:
                    model = OTHER
            pm = (provider, model)
            s = self._series.get(pm)
            if s is None:
                s = self._series[pm] = _Series()
        k = (provider, model, status)
        self._requests[k] = self._requests.get(k, 0) + 1
        if api:  # bounded: configured targets x two dialects
            ka = (provider, api)
            self._apis[ka] = self._apis.get(ka, 0) + 1
        s.requests += 1
        if upstream_model and upstream_model != s.upstream_model:
            s.upstream_model = bounded_label(upstream_model)
        if streaming:
            self.streaming += 1
            s.streaming += 1
        s.tool_calls += tool_calls
        s.input_tokens += input_tokens
        s.output_tokens += output_tokens
        s.dur_counts[bisect_left(DURATION_BUCKETS, latency_s)] += 1
        s.dur_sum += latency_s
        if ttft_s is not None:
            s.ttft_counts[bisect_left(TTFT_BUCKETS, ttft_s)] += 1
            s.ttft_sum += ttft_s
            s.ttft_count += 1
        if cache is not None:
            self._cache_results[cache] = self._cache_results.get(cache, 0) + 1

    def record_spend(self, key: str, model: str, input_tokens: int, cached_tokens: int, output_tokens: int,
                     cost_usd: float | None) -> None:
        """Tokens (input excludes cached) and cost of one request for ``key`` (a configured key's
        name) on upstream ``model``; ``cost_usd`` None when the model has no price."""
        km = (key, model)
        s = self._spend.get(km)
        if s is None:
            key, model = bounded_label(key), bounded_label(model)
            for value, seen, bound in ((key, self._spend_keys, MAX_SPEND_KEYS),
                                       (model, self._spend_models, MAX_SERIES)):
                if value not in seen and len(seen) < bound:
                    seen.add(value)
            km = (key if key in self._spend_keys else OTHER, model if model in self._spend_models else OTHER)
            s = self._spend.get(km)
            if s is None:
                s = self._spend[km] = [0, 0, 0, None]
        s[0] += input_tokens
        s[1] += cached_tokens
        s[2] += output_tokens
        if cost_usd is not None:
            s[3] = (s[3] or 0.0) + cost_usd

    def spend_series(self) -> dict[tuple[str, str], tuple[int, int, int, float | None]]:
        """{(key, model): (input, cached_input, output tokens, cost_usd or None)}: this process's
        spend counters (what clasp_tokens_total{key,...} and clasp_cost_usd_total show)."""
        return {km: (s[0], s[1], s[2], s[3]) for km, s in self._spend.items()}

    def _record_error(self, provider: str, model: str, status: int, error_type: str, message: str) -> None:
        """Errors by type (bounded) and the last RECENT_ERRORS of them, messages redacted."""
        etype = error_type or _STATUS_ERROR_TYPES.get(status) or "api_error"
        etype = bounded_label(etype)
        if etype not in self._error_types and len(self._error_types) >= MAX_ERROR_TYPES:
            etype = OTHER
        self._error_types[etype] = self._error_types.get(etype, 0) + 1
        # redacted before it is cut, so a key cut in half cannot slip past the patterns
        text = self._redact(message[:RECENT_ERROR_CHARS * 4]) if message else ""
        if len(text) > RECENT_ERROR_CHARS:
            text = text[:RECENT_ERROR_CHARS - len(TRUNCATED)] + TRUNCATED
        self._recent_errors.append({"time": round(self._wall(), 3), "status": status, "type": etype,
                                    "provider": provider, "model": bounded_label(model),
                                    "message": bounded_label(text) if text else ""})

    def record_upstream_error(self, provider: str, status: int | str) -> None:
        """An upstream attempt failed: HTTP status, or a transport failure kind ("timeout", "connect")."""
        k = (provider, str(status))
        self._upstream_errors[k] = self._upstream_errors.get(k, 0) + 1

    def record_retry(self, provider: str) -> None:
        self._retries[provider] = self._retries.get(provider, 0) + 1

    def record_fallback(self, from_target: str, to_target: str) -> None:
        k = (from_target, to_target)
        self._fallbacks[k] = self._fallbacks.get(k, 0) + 1

    # ---- scraping ------------------------------------------------------------------------------

    def uptime_s(self) -> float:
        return max(0.0, self._clock() - self._start)

    def _breakers(self) -> dict[str, str]:
        if self._breaker_source is None:
            return {}
        out: dict[str, str] = {}
        for target, state in self._breaker_source().items():
            state = getattr(state, "value", state)
            out[str(target)] = str(state).lower().replace("-", "_").replace(" ", "_")
        return out

    def _queue(self) -> dict[str, Any] | None:
        if self._queue_source is None:
            return None
        q = self._queue_source()
        if isinstance(q, Mapping):
            return dict(q)
        return {"depth": q}

    def snapshot(self) -> dict:
        """Everything a scrape shows, as plain JSON-able data: what render_json and
        render_prometheus draw from, and what the workers of a group send to be merged.

        ``counters`` holds only numbers, nested by label values (dicts of dicts of numbers, or lists
        of numbers for histogram buckets), so summing the snapshots of several processes is one
        generic walk (merge_snapshots); a new counter put there is merged with no extra code."""
        requests: dict[str, dict[str, dict[str, int]]] = {}
        for (provider, model, status), n in self._requests.items():
            requests.setdefault(provider, {}).setdefault(model, {})[str(status)] = n
        apis: dict[str, dict[str, int]] = {}
        for (provider, api), n in self._apis.items():
            apis.setdefault(provider, {})[api] = n
        series: dict[str, dict[str, dict]] = {}
        upstream_models: dict[str, dict[str, str]] = {}
        for (provider, model), s in self._series.items():
            series.setdefault(provider, {})[model] = {
                "requests": s.requests, "streaming": s.streaming, "tool_calls": s.tool_calls,
                "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                "dur_counts": list(s.dur_counts), "dur_sum": s.dur_sum,
                "ttft_counts": list(s.ttft_counts), "ttft_sum": s.ttft_sum, "ttft_count": s.ttft_count}
            if s.upstream_model:
                upstream_models.setdefault(provider, {})[model] = s.upstream_model
        upstream_errors: dict[str, dict[str, int]] = {}
        for (provider, status), n in self._upstream_errors.items():
            upstream_errors.setdefault(provider, {})[status] = n
        fallbacks: dict[str, dict[str, int]] = {}
        for (src, dst), n in self._fallbacks.items():
            fallbacks.setdefault(src, {})[dst] = n
        return {
            "uptime_s": self.uptime_s(),
            "counters": {
                "total": self.total, "successful": self.successful, "errors": self.errors,
                "streaming": self.streaming, "tool_calls": self.tool_calls, "latency_sum": self.latency_sum,
                "requests": requests, "apis": apis, "series": series,
                "cache_results": dict(self._cache_results), "upstream_errors": upstream_errors,
                "retries": dict(self._retries), "fallbacks": fallbacks, "error_types": dict(self._error_types),
                "spend": self._spend_snapshot(),
            },
            "active": {"requests": self.active_requests, "streams": self.active_streams},
            "upstream_models": upstream_models,
            "recent_errors": list(self._recent_errors),
            "breakers": self._breakers() if self._breaker_source is not None else None,
            "queue": self._queue(),
            "cache": dict(self._cache_source()) if self._cache_source is not None else None,
            "memory": dict(self._memory_source()) if self._memory_source is not None else None,
            "store": self._store() if self._store_source is not None else None,
        }

    def _spend_snapshot(self) -> dict[str, dict[str, dict[str, float]]]:
        """{key: {model: {input, cached_input, output[, cost_usd]}}}: cost_usd only when priced, so
        merged snapshots add the costs that exist and an unpriced model never shows 0."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (key, model), (inp, cached, output, cost) in self._spend.items():
            entry: dict[str, float] = {"input": inp, "cached_input": cached, "output": output}
            if cost is not None:
                entry["cost_usd"] = cost
            out.setdefault(key, {})[model] = entry
        return out

    def _store(self) -> dict[str, Any]:
        h = self._store_source()
        return {"kind": h.get("kind", ""), "status": h.get("status", "ok"), "errors": int(h.get("errors", 0))}

    def to_json(self) -> dict:
        return render_json(self.snapshot())

    def to_prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4 (Content-Type: text/plain; version=0.0.4)."""
        return render_prometheus(self.snapshot())


# ---- rendering (from a snapshot: one process's, or the merged one of a worker group) ------------

def _each_series(snap: dict) -> Iterable[tuple[str, str, dict]]:
    for provider, models in snap["counters"]["series"].items():
        for model, s in models.items():
            yield provider, model, s


def render_json(snap: dict) -> dict:
    """The ``GET /metrics`` document of a snapshot."""
    c = snap["counters"]
    uptime = snap["uptime_s"]
    total = c["total"]
    results = c["cache_results"]
    hits = results.get("hit", 0)
    misses = results.get("miss", 0)
    cache_stats = snap["cache"]
    upstream_models = snap["upstream_models"]
    tokens: dict[str, dict[str, dict[str, int]]] = {}
    dur_counts = [0] * (len(DURATION_BUCKETS) + 1)
    ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
    dur_sum = ttft_sum = 0.0
    for provider, model, s in _each_series(snap):
        upstream_model = upstream_models.get(provider, {}).get(model)
        tokens.setdefault(provider, {})[model] = {
            "requests": s["requests"],
            "input_tokens": s["input_tokens"],
            "output_tokens": s["output_tokens"],
            **({"upstream_model": upstream_model} if upstream_model else {}),
        }
        dur_counts = [a + b for a, b in zip(dur_counts, s["dur_counts"])]
        ttft_counts = [a + b for a, b in zip(ttft_counts, s["ttft_counts"])]
        dur_sum += s["dur_sum"]
        ttft_sum += s["ttft_sum"]
    upstream_errors: dict[str, int] = {}
    for statuses in c["upstream_errors"].values():
        for status, n in statuses.items():
            upstream_errors[status] = upstream_errors.get(status, 0) + n
    by_status: dict[str, int] = {}
    for models in c["requests"].values():
        for statuses in models.values():
            for status, n in statuses.items():
                if int(status) >= 400:
                    by_status[status] = by_status.get(status, 0) + n
    queue = snap["queue"]
    return {
        "requests": {
            "total": total,
            "successful": c["successful"],
            "errors": c["errors"],
            "streaming": c["streaming"],
            "tool_calls": c["tool_calls"],
            "success_rate": _pct(c["successful"], total),
        },
        "performance": {
            "avg_latency_ms": f"{(c['latency_sum'] / total * 1000.0) if total else 0.0:.2f}",
            "requests_per_sec": f"{(total / uptime) if uptime > 0 else 0.0:.2f}",
        },
        "cache": {
            "enabled": cache_stats is not None,
            "size": int(cache_stats.get("size", 0)) if cache_stats else 0,
            "max_size": int(cache_stats.get("max_size", 0)) if cache_stats else 0,
            "hits": hits,
            "misses": misses,
            "hit_rate": _pct(hits, hits + misses),
        },
        "uptime": go_duration(uptime),
        "tokens": tokens,
        "apis": {provider: dict(apis) for provider, apis in c["apis"].items()},
        "upstream_errors": upstream_errors,
        "retries": sum(c["retries"].values()),
        "fallbacks": sum(n for dsts in c["fallbacks"].values() for n in dsts.values()),
        "circuit_breakers": dict(snap["breakers"] or {}),
        "queue": {"enabled": False} if queue is None else {"enabled": True, **queue},
        **({"memory": dict(snap["memory"])} if snap["memory"] is not None else {}),
        **({"store": dict(snap["store"])} if snap.get("store") is not None else {}),
        # for the dashboard: numbers a page can difference between two scrapes
        "uptime_s": round(uptime, 3),
        "active": dict(snap["active"]),
        "latency": _histogram_json(DURATION_BUCKETS, dur_counts, dur_sum),
        "ttft": _histogram_json(TTFT_BUCKETS, ttft_counts, ttft_sum),
        "errors": {"by_type": dict(c["error_types"]), "by_status": by_status,
                   "recent": list(snap["recent_errors"])},
    }


def render_prometheus(snap: dict) -> str:
    """Prometheus text exposition format 0.0.4 of a snapshot."""
    c = snap["counters"]
    out: list[str] = []
    add = out.append

    def family(name: str, kind: str, help_text: str) -> None:
        add(f"# HELP {name} {_escape_help(help_text)}")
        add(f"# TYPE {name} {kind}")

    def histogram(name: str, help_text: str, bounds: tuple[float, ...], attr: str) -> None:
        family(name, "histogram", help_text)
        les = [_num(b) for b in bounds] + ["+Inf"]
        for provider, model, s in _each_series(snap):
            counts = s[attr + "_counts"]
            count = s["requests"] if attr == "dur" else s["ttft_count"]
            if count == 0:
                continue
            base = _labels(("provider", "model"), (provider, model))
            cum = 0
            for le, n in zip(les, counts):
                cum += n
                add(f'{name}_bucket{{{base},le="{le}"}} {cum}')
            add(f"{name}_sum{{{base}}} {_num(s[attr + '_sum'])}")
            add(f"{name}_count{{{base}}} {count}")

    pm = ("provider", "model")

    family("clasp_requests_total", "counter", "Requests finished, by provider, model and HTTP status.")
    for provider, models in c["requests"].items():
        for model, statuses in models.items():
            for status, n in statuses.items():
                add(f"clasp_requests_total{{{_labels(('provider', 'model', 'status'), (provider, model, status))}}} {n}")

    family("clasp_requests_by_api_total", "counter",
           "Routed requests by provider and the upstream API dialect they spoke (chat, responses).")
    for provider, apis in c["apis"].items():
        for api, n in apis.items():
            add(f"clasp_requests_by_api_total{{{_labels(('provider', 'api'), (provider, api))}}} {n}")

    family("clasp_streaming_requests_total", "counter", "Streaming requests finished.")
    for provider, model, s in _each_series(snap):
        if s["streaming"]:
            add(f"clasp_streaming_requests_total{{{_labels(pm, (provider, model))}}} {s['streaming']}")

    family("clasp_tool_calls_total", "counter", "Tool calls returned to clients.")
    for provider, model, s in _each_series(snap):
        if s["tool_calls"]:
            add(f"clasp_tool_calls_total{{{_labels(pm, (provider, model))}}} {s['tool_calls']}")

    family("clasp_tokens_total", "counter",
           "Tokens reported by upstreams. Series with provider and type: by requested model, input "
           "includes cached. Series with key and kind: by client key and upstream model, kind input "
           "(not cached), cached_input or output. Sum one set or the other, never both.")
    for provider, model, s in _each_series(snap):
        base = _labels(pm, (provider, model))
        add(f'clasp_tokens_total{{{base},type="input"}} {s["input_tokens"]}')
        add(f'clasp_tokens_total{{{base},type="output"}} {s["output_tokens"]}')
    km = ("key", "model")
    spend = c.get("spend", {})
    for key, models in spend.items():
        for model, e in models.items():
            base = _labels(km, (key, model))
            for kind in ("input", "cached_input", "output"):
                add(f'clasp_tokens_total{{{base},kind="{kind}"}} {_num(e.get(kind, 0))}')
    family("clasp_cost_usd_total", "counter",
           "Cost in USD by client key and upstream model, from the price table (priced models only).")
    for key, models in spend.items():
        for model, e in models.items():
            if "cost_usd" in e:
                add(f"clasp_cost_usd_total{{{_labels(km, (key, model))}}} {_num(e['cost_usd'])}")

    histogram("clasp_request_duration_seconds", "Time from request received to response finished.",
              DURATION_BUCKETS, "dur")
    histogram("clasp_time_to_first_token_seconds", "Time from request received to the first streamed token.",
              TTFT_BUCKETS, "ttft")

    family("clasp_upstream_errors_total", "counter", "Failed upstream attempts, by HTTP status or transport error.")
    for provider, statuses in c["upstream_errors"].items():
        for status, n in statuses.items():
            add(f"clasp_upstream_errors_total{{{_labels(('provider', 'status'), (provider, status))}}} {n}")

    family("clasp_retries_total", "counter", "Upstream attempts retried by the proxy.")
    for provider, n in c["retries"].items():
        add(f"clasp_retries_total{{{_labels(('provider',), (provider,))}}} {n}")

    family("clasp_fallbacks_total", "counter", "Requests moved to a fallback target.")
    for src, dsts in c["fallbacks"].items():
        for dst, n in dsts.items():
            add(f"clasp_fallbacks_total{{{_labels(('from', 'to'), (src, dst))}}} {n}")

    family("clasp_cache_requests_total", "counter", "Cacheable requests by cache result (hit, miss).")
    for result, n in c["cache_results"].items():
        add(f"clasp_cache_requests_total{{{_labels(('result',), (result,))}}} {n}")

    stats = snap["cache"]
    if stats is not None:
        family("clasp_cache_size", "gauge", "Entries in the response cache.")
        add(f"clasp_cache_size {_num(stats.get('size', 0))}")
        family("clasp_cache_max_size", "gauge", "Capacity of the response cache.")
        add(f"clasp_cache_max_size {_num(stats.get('max_size', 0))}")
        if "evictions" in stats:
            family("clasp_cache_evictions_total", "counter", "Cache entries evicted to make room (LRU).")
            add(f"clasp_cache_evictions_total {_num(stats['evictions'])}")

    family("clasp_circuit_breaker_state", "gauge",
           "Circuit breaker state per target: 1 for the current state, 0 for the others.")
    for target, state in (snap["breakers"] or {}).items():
        states = BREAKER_STATES if state in BREAKER_STATES else BREAKER_STATES + (state,)
        for st in states:
            labels = _labels(("target", "state"), (target, st))
            add(f"clasp_circuit_breaker_state{{{labels}}} {1 if st == state else 0}")

    queue = snap["queue"]
    if queue is not None:
        family("clasp_queue_depth", "gauge", "Requests waiting in the queue.")
        add(f"clasp_queue_depth {_num(queue.get('depth', 0))}")
        if "max_size" in queue:
            family("clasp_queue_max_size", "gauge", "Capacity of the request queue.")
            add(f"clasp_queue_max_size {_num(queue['max_size'])}")

    store = snap.get("store")
    if store is not None:
        kind = _labels(("store",), (store["kind"],))
        family("clasp_store_up", "gauge", "1 while the state store answers, 0 while degraded (e.g. Redis unreachable).")
        add(f"clasp_store_up{{{kind}}} {1 if store['status'] == 'ok' else 0}")
        family("clasp_store_errors_total", "counter",
               "Operations that could not use the state store (it failed or was down): each fell back to "
               "per-process state, missed the cache, or was refused (fail-closed).")
        add(f"clasp_store_errors_total{{{kind}}} {store['errors']}")

    memory = snap["memory"]
    if memory is not None:
        if memory.get("rss_bytes") is not None:
            family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
            add(f"process_resident_memory_bytes {_num(memory['rss_bytes'])}")
        family("clasp_memory_trims_total", "counter", "Times freed memory was returned to the OS when idle.")
        add(f"clasp_memory_trims_total {_num(memory.get('trims', 0))}")

    family("clasp_uptime_seconds", "gauge", "Seconds since the proxy started.")
    add(f"clasp_uptime_seconds {_num(round(snap['uptime_s'], 3))}")

    add("")
    return "\n".join(out)


# ---- merging the snapshots of a worker group --------------------------------------------------

# When workers disagree about a target's breaker, the group reports the worst state any is in.
_BREAKER_RANK = {"closed": 0, "half_open": 2, "open": 3}


def _add_into(dst: dict, src: Mapping) -> None:
    """dst += src, field by field: numbers added, lists of numbers added element-wise, dicts walked."""
    for k, v in src.items():
        have = dst.get(k)
        if isinstance(v, Mapping):
            if not isinstance(have, dict):
                have = dst[k] = {}
            _add_into(have, v)
        elif isinstance(v, list):
            if isinstance(have, list) and len(have) == len(v):
                dst[k] = [a + b for a, b in zip(have, v)]
            else:
                dst[k] = list(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            dst[k] = (have if isinstance(have, (int, float)) else 0) + v
        elif have is None:
            dst[k] = v


def merge_snapshots(snaps: Iterable[dict], *, uptime_s: float, live: Callable[[dict], bool] = lambda s: True) -> dict:
    """One snapshot for a group of processes: counters summed (so the merged counters only grow as
    long as each process's snapshots do), gauges of the processes still running summed
    (``live``: False for a process that has exited: it keeps its counters, not its gauges),
    breakers at the worst state, the most recent errors of all, and the given uptime."""
    counters: dict = {}
    active: dict = {}
    upstream_models: dict = {}
    recent: list[dict] = []
    breakers: dict | None = None
    queue: dict | None = None
    cache: dict | None = None
    memory: dict | None = None
    store: dict | None = None
    for snap in snaps:
        _add_into(counters, snap["counters"])
        recent.extend(snap["recent_errors"])
        for provider, models in snap["upstream_models"].items():
            upstream_models.setdefault(provider, {}).update(models)
        if snap["memory"] is not None:  # trims are a counter; resident memory only of running ones
            memory = memory or {"rss_bytes": None, "trims": 0}
            memory["trims"] += snap["memory"].get("trims", 0)
            if live(snap) and snap["memory"].get("rss_bytes") is not None:
                memory["rss_bytes"] = (memory["rss_bytes"] or 0) + snap["memory"]["rss_bytes"]
        if snap.get("store") is not None:  # errors are a counter; degraded if any running one is
            own = snap["store"]
            store = store or {"kind": own["kind"], "status": "ok", "errors": 0}
            store["errors"] += own["errors"]
            if live(snap) and own["status"] != "ok":
                store["status"] = own["status"]
        if not live(snap):
            continue
        _add_into(active, snap["active"])
        if snap["breakers"] is not None:
            breakers = breakers if breakers is not None else {}
            for target, state in snap["breakers"].items():
                if _BREAKER_RANK.get(state, 1) >= _BREAKER_RANK.get(breakers.get(target, "closed"), 1):
                    breakers[target] = state
        if snap["queue"] is not None:
            queue = queue if queue is not None else {}
            _add_into(queue, snap["queue"])
        if snap["cache"] is not None:
            cache = cache if cache is not None else {}
            _add_into(cache, snap["cache"])
    recent.sort(key=lambda e: e.get("time", 0))
    return {"uptime_s": uptime_s, "counters": counters, "active": active or {"requests": 0, "streams": 0},
            "upstream_models": upstream_models, "recent_errors": recent[-RECENT_ERRORS:],
            "breakers": breakers, "queue": queue, "cache": cache, "memory": memory,
            "store": store}
