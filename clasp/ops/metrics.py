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

    # ---- sources (pulled at scrape time) -------------------------------------------------------

    def set_sources(
        self,
        *,
        breakers: Callable[[], Mapping[str, Any]] | None = None,
        queue: Callable[[], Any] | None = None,
        cache: Callable[[], Mapping[str, Any]] | None = None,
        memory: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Register gauge callbacks; only the ones given are replaced.

        breakers() -> {target_id: state}; state "closed", "open", "half_open"/"half-open"
                      (an Enum whose value is such a string also works).
        queue()    -> current depth as int, or a mapping with "depth" (and optionally "max_size", ...).
        cache()    -> mapping with "size", "max_size" and optionally "evictions"
                      (ResponseCache.stats fits). Registering it marks the cache as enabled.
        memory()   -> mapping with "rss_bytes" (int, or None where unknown) and "trims".
        """
        if breakers is not None:
            self._breaker_source = breakers
        if queue is not None:
            self._queue_source = queue
        if cache is not None:
            self._cache_source = cache
        if memory is not None:
            self._memory_source = memory

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

    def to_json(self) -> dict:
        uptime = self.uptime_s()
        total = self.total
        hits = self._cache_results.get("hit", 0)
        misses = self._cache_results.get("miss", 0)
        cache_stats = self._cache_source() if self._cache_source is not None else None
        tokens: dict[str, dict[str, dict[str, int]]] = {}
        for (provider, model), s in self._series.items():
            tokens.setdefault(provider, {})[model] = {
                "requests": s.requests,
                "input_tokens": s.input_tokens,
                "output_tokens": s.output_tokens,
                **({"upstream_model": s.upstream_model} if s.upstream_model else {}),
            }
        apis: dict[str, dict[str, int]] = {}
        for (provider, api), n in self._apis.items():
            apis.setdefault(provider, {})[api] = n
        upstream_errors: dict[str, int] = {}
        for (_provider, status), n in self._upstream_errors.items():
            upstream_errors[status] = upstream_errors.get(status, 0) + n
        queue = self._queue()
        dur_counts = [0] * (len(DURATION_BUCKETS) + 1)
        ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        dur_sum = ttft_sum = 0.0
        for s in self._series.values():
            dur_counts = [a + b for a, b in zip(dur_counts, s.dur_counts)]
            ttft_counts = [a + b for a, b in zip(ttft_counts, s.ttft_counts)]
            dur_sum += s.dur_sum
            ttft_sum += s.ttft_sum
        by_status: dict[str, int] = {}
        for (_provider, _model, status), n in self._requests.items():
            if status >= 400:
                by_status[str(status)] = by_status.get(str(status), 0) + n
        return {
            "requests": {
                "total": total,
                "successful": self.successful,
                "errors": self.errors,
                "streaming": self.streaming,
                "tool_calls": self.tool_calls,
                "success_rate": _pct(self.successful, total),
            },
            "performance": {
                "avg_latency_ms": f"{(self.latency_sum / total * 1000.0) if total else 0.0:.2f}",
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
            "apis": apis,
            "upstream_errors": upstream_errors,
            "retries": sum(self._retries.values()),
            "fallbacks": sum(self._fallbacks.values()),
            "circuit_breakers": self._breakers(),
            "queue": {"enabled": False} if queue is None else {"enabled": True, **queue},
            **({"memory": dict(self._memory_source())} if self._memory_source is not None else {}),
            # for the dashboard: numbers a page can difference between two scrapes
            "uptime_s": round(uptime, 3),
            "active": {"requests": self.active_requests, "streams": self.active_streams},
            "latency": _histogram_json(DURATION_BUCKETS, dur_counts, dur_sum),
            "ttft": _histogram_json(TTFT_BUCKETS, ttft_counts, ttft_sum),
            "errors": {"by_type": dict(self._error_types), "by_status": by_status,
                       "recent": list(self._recent_errors)},
        }

    def to_prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4 (Content-Type: text/plain; version=0.0.4)."""
        out: list[str] = []
        add = out.append

        def family(name: str, kind: str, help_text: str) -> None:
            add(f"# HELP {name} {_escape_help(help_text)}")
            add(f"# TYPE {name} {kind}")

        def histogram(name: str, help_text: str, bounds: tuple[float, ...], attr: str) -> None:
            family(name, "histogram", help_text)
            les = [_num(b) for b in bounds] + ["+Inf"]
            for (provider, model), s in self._series.items():
                counts = getattr(s, attr + "_counts")
                count = s.requests if attr == "dur" else s.ttft_count
                if count == 0:
                    continue
                base = _labels(("provider", "model"), (provider, model))
                cum = 0
                for le, c in zip(les, counts):
                    cum += c
                    add(f'{name}_bucket{{{base},le="{le}"}} {cum}')
                add(f"{name}_sum{{{base}}} {_num(getattr(s, attr + '_sum'))}")
                add(f"{name}_count{{{base}}} {count}")

        pm = ("provider", "model")

        family("clasp_requests_total", "counter", "Requests finished, by provider, model and HTTP status.")
        for (provider, model, status), n in self._requests.items():
            add(f"clasp_requests_total{{{_labels(('provider', 'model', 'status'), (provider, model, status))}}} {n}")

        family("clasp_requests_by_api_total", "counter",
               "Routed requests by provider and the upstream API dialect they spoke (chat, responses).")
        for (provider, api), n in self._apis.items():
            add(f"clasp_requests_by_api_total{{{_labels(('provider', 'api'), (provider, api))}}} {n}")

        family("clasp_streaming_requests_total", "counter", "Streaming requests finished.")
        for key, s in self._series.items():
            if s.streaming:
                add(f"clasp_streaming_requests_total{{{_labels(pm, key)}}} {s.streaming}")

        family("clasp_tool_calls_total", "counter", "Tool calls returned to clients.")
        for key, s in self._series.items():
            if s.tool_calls:
                add(f"clasp_tool_calls_total{{{_labels(pm, key)}}} {s.tool_calls}")

        family("clasp_tokens_total", "counter",
               "Tokens reported by upstreams. Series with provider and type: by requested model, input "
               "includes cached. Series with key and kind: by client key and upstream model, kind input "
               "(not cached), cached_input or output. Sum one set or the other, never both.")
        for key, s in self._series.items():
            base = _labels(pm, key)
            add(f'clasp_tokens_total{{{base},type="input"}} {s.input_tokens}')
            add(f'clasp_tokens_total{{{base},type="output"}} {s.output_tokens}')
        km = ("key", "model")
        for key, s in self._spend.items():
            base = _labels(km, key)
            add(f'clasp_tokens_total{{{base},kind="input"}} {s[0]}')
            add(f'clasp_tokens_total{{{base},kind="cached_input"}} {s[1]}')
            add(f'clasp_tokens_total{{{base},kind="output"}} {s[2]}')

        family("clasp_cost_usd_total", "counter",
               "Cost in USD by client key and upstream model, from the price table (priced models only).")
        for key, s in self._spend.items():
            if s[3] is not None:
                add(f"clasp_cost_usd_total{{{_labels(km, key)}}} {_num(s[3])}")

        histogram("clasp_request_duration_seconds", "Time from request received to response finished.",
                  DURATION_BUCKETS, "dur")
        histogram("clasp_time_to_first_token_seconds", "Time from request received to the first streamed token.",
                  TTFT_BUCKETS, "ttft")

        family("clasp_upstream_errors_total", "counter", "Failed upstream attempts, by HTTP status or transport error.")
        for (provider, status), n in self._upstream_errors.items():
            add(f"clasp_upstream_errors_total{{{_labels(('provider', 'status'), (provider, status))}}} {n}")

        family("clasp_retries_total", "counter", "Upstream attempts retried by the proxy.")
        for provider, n in self._retries.items():
            add(f"clasp_retries_total{{{_labels(('provider',), (provider,))}}} {n}")

        family("clasp_fallbacks_total", "counter", "Requests moved to a fallback target.")
        for (src, dst), n in self._fallbacks.items():
            add(f"clasp_fallbacks_total{{{_labels(('from', 'to'), (src, dst))}}} {n}")

        family("clasp_cache_requests_total", "counter", "Cacheable requests by cache result (hit, miss).")
        for result, n in self._cache_results.items():
            add(f"clasp_cache_requests_total{{{_labels(('result',), (result,))}}} {n}")

        if self._cache_source is not None:
            stats = self._cache_source()
            family("clasp_cache_size", "gauge", "Entries in the response cache.")
            add(f"clasp_cache_size {_num(stats.get('size', 0))}")
            family("clasp_cache_max_size", "gauge", "Capacity of the response cache.")
            add(f"clasp_cache_max_size {_num(stats.get('max_size', 0))}")
            if "evictions" in stats:
                family("clasp_cache_evictions_total", "counter", "Cache entries evicted to make room (LRU).")
                add(f"clasp_cache_evictions_total {_num(stats['evictions'])}")

        family("clasp_circuit_breaker_state", "gauge",
               "Circuit breaker state per target: 1 for the current state, 0 for the others.")
        for target, state in self._breakers().items():
            states = BREAKER_STATES if state in BREAKER_STATES else BREAKER_STATES + (state,)
            for st in states:
                labels = _labels(("target", "state"), (target, st))
                add(f"clasp_circuit_breaker_state{{{labels}}} {1 if st == state else 0}")

        queue = self._queue()
        if queue is not None:
            family("clasp_queue_depth", "gauge", "Requests waiting in the queue.")
            add(f"clasp_queue_depth {_num(queue.get('depth', 0))}")
            if "max_size" in queue:
                family("clasp_queue_max_size", "gauge", "Capacity of the request queue.")
                add(f"clasp_queue_max_size {_num(queue['max_size'])}")

        if self._memory_source is not None:
            memory = self._memory_source()
            if memory.get("rss_bytes") is not None:
                family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
                add(f"process_resident_memory_bytes {_num(memory['rss_bytes'])}")
            family("clasp_memory_trims_total", "counter", "Times freed memory was returned to the OS when idle.")
            add(f"clasp_memory_trims_total {_num(memory.get('trims', 0))}")

        family("clasp_uptime_seconds", "gauge", "Seconds since the proxy started.")
        add(f"clasp_uptime_seconds {_num(round(self.uptime_s(), 3))}")

        add("")
        return "\n".join(out)
