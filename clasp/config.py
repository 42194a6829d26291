"""Configuration: one frozen dataclass built once from flags > env > file > defaults.

Every setting is declared once in SETTINGS with its flag, environment variable, file key,
type and default; README.md and clasp.example.toml document the same table.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence



class ConfigError(Exception):
    """A configuration problem the user must fix; reported without a traceback, exit code 2."""


@dataclass(frozen=True)
class Setting:
    name: str                 # attribute of Config and key in the config file
    kind: type                # str, int, float or bool
    default: Any
    env: tuple[str, ...]      # environment variables, first present wins
    flag: str | None          # flag name without dashes ("port" -> -port / --port)
    help: str
    secret: bool = False


def _s(name: str, kind: type, default: Any, env: str | tuple[str, ...] | None, flag: str | None,
       help: str, secret: bool = False) -> Setting:
    envs = (env,) if isinstance(env, str) else (env or ())
    return Setting(name, kind, default, envs, flag, help, secret)


TIERS = ("opus", "sonnet", "haiku")

SETTINGS: tuple[Setting, ...] = (
    # server
    _s("host", str, "127.0.0.1", "CLASP_HOST", "host", "address to listen on"),
    _s("port", int, 8080, "CLASP_PORT", "port", "port to listen on"),
    _s("workers", int, 1, "CLASP_WORKERS", "workers", "worker processes sharing the port (SO_REUSEPORT)"),
    _s("max_body_size", int, 32 * 1024 * 1024, "CLASP_MAX_BODY_SIZE", "max-body-size",
       "largest accepted request body in bytes"),
    _s("header_timeout", float, 30.0, "CLASP_HEADER_TIMEOUT", "header-timeout",
       "seconds to receive a request's headers and body"),
    _s("idle_timeout", float, 75.0, "CLASP_IDLE_TIMEOUT", "idle-timeout",
       "seconds an idle keep-alive client connection is kept"),
    _s("write_timeout", float, 120.0, "CLASP_WRITE_TIMEOUT", "write-timeout",
       "seconds a client may stop reading a response before it is disconnected"),
    _s("max_connections", int, 0, "CLASP_MAX_CONNECTIONS", "max-connections",
       "client connections held at once (0 = derived from the open-file limit)"),
    _s("shutdown_timeout", float, 30.0, "CLASP_SHUTDOWN_TIMEOUT", "shutdown-timeout",
       "seconds in-flight requests get to finish on SIGINT/SIGTERM"),
    _s("memory_trim_after", float, 5.0, "CLASP_MEMORY_TRIM_AFTER", "memory-trim-after",
       "idle seconds after traffic before freed memory is returned to the OS (glibc; 0 = never)"),
    _s("allowed_hosts", str, "", "CLASP_ALLOWED_HOSTS", "allowed-hosts",
       "Host names accepted besides loopback ones when listening on loopback (comma list, * = any)"),
    _s("allowed_origins", str, "", "CLASP_ALLOWED_ORIGINS", "allowed-origins",
       "browser origins allowed to call the proxy (comma list, * = any; default none)"),
    # provider and models
    _s("provider", str, "openai", "PROVIDER", "provider", "openai, azure, openrouter or custom"),
    _s("model", str, "", ("CLASP_MODEL", "CLASP_DEFAULT_MODEL"), "model", "model for all requests"),
    _s("model_opus", str, "", "CLASP_MODEL_OPUS", "model-opus", "model for opus-tier requests"),
    _s("model_sonnet", str, "", "CLASP_MODEL_SONNET", "model-sonnet", "model for sonnet-tier requests"),
    _s("model_haiku", str, "", "CLASP_MODEL_HAIKU", "model-haiku", "model for haiku-tier requests"),
    _s("model_aliases", str, "", "CLASP_MODEL_ALIASES", "model-aliases",
       "exact aliases 'requested=upstream,...' (upstream may be 'provider:model')"),
    _s("model_flags", str, "", "CLASP_MODEL_FLAGS", "model-flags",
       "capability flags for the upstream model, e.g. 'no_stream_options,max_output_cap=16384'"),
    _s("openai_api", str, "auto", "CLASP_OPENAI_API", "openai-api",
       "upstream API dialect: chat (Chat Completions), responses (Responses API) or auto "
       "(responses for the models served only there: codex, -pro)"),
    _s("web_search", str, "", "CLASP_WEB_SEARCH", "web-search",
       "target of Claude Code's WebSearch requests: 'provider,model' with native web search "
       "(e.g. openai,gpt-5-mini or openrouter,openai/gpt-4o-mini); default: the request's own target "
       "when it can search"),
    _s("client_model_choice", str, "auto", "CLASP_CLIENT_MODEL_CHOICE", "client-model-choice",
       "let clients pick the provider ('provider,model') and pass other model names through: "
       "auto (on when listening on loopback without auth), on or off"),
    _s("openai_api_key", str, "", "OPENAI_API_KEY", None, "OpenAI API key", secret=True),
    _s("openai_base_url", str, "https://api.openai.com/v1", "OPENAI_BASE_URL", None, "OpenAI base URL"),
    _s("azure_api_key", str, "", "AZURE_API_KEY", None, "Azure OpenAI API key", secret=True),
    _s("azure_endpoint", str, "", "AZURE_OPENAI_ENDPOINT", None, "Azure resource endpoint URL"),
    _s("azure_deployment", str, "", "AZURE_DEPLOYMENT_NAME", None, "Azure deployment name"),
    _s("azure_api_version", str, "2024-02-15-preview", "AZURE_API_VERSION", None, "Azure api-version"),
    _s("openrouter_api_key", str, "", "OPENROUTER_API_KEY", None, "OpenRouter API key", secret=True),
    _s("openrouter_base_url", str, "https://openrouter.ai/api/v1", "OPENROUTER_BASE_URL", None,
       "OpenRouter base URL"),
    _s("openrouter_referer", str, "", "OPENROUTER_HTTP_REFERER", None,
       "HTTP-Referer sent to OpenRouter (its app attribution: your app's URL)"),
    _s("openrouter_title", str, "clasp", "OPENROUTER_X_TITLE", None,
       "X-Title sent to OpenRouter"),
    _s("custom_base_url", str, "", "CUSTOM_BASE_URL", None, "base URL of a custom OpenAI-compatible server"),
    _s("custom_api_key", str, "", "CUSTOM_API_KEY", None, "API key for the custom server", secret=True),
    # upstream client
    _s("connect_timeout", float, 10.0, "CLASP_CONNECT_TIMEOUT", "connect-timeout",
       "seconds to connect to the upstream (TCP, TLS, proxy)"),
    _s("read_timeout", float, 600.0, "CLASP_READ_TIMEOUT", "read-timeout",
       "seconds one upstream read may wait (per read, not per request)"),
    _s("first_byte_timeout", float, 300.0, "CLASP_FIRST_BYTE_TIMEOUT", "first-byte-timeout",
       "seconds a request may wait for the upstream's response head, all retries and fallbacks included"),
    _s("max_sse_event_size", int, 8 * 1024 * 1024, "CLASP_MAX_SSE_EVENT_SIZE", "max-sse-event-size",
       "largest upstream SSE line or event in bytes; a larger one ends the stream with an error"),
    _s("pool_size", int, 32, "CLASP_POOL_SIZE", "pool-size", "idle upstream connections kept per origin"),
    _s("probe_upstream", bool, True, "CLASP_PROBE_UPSTREAM", "probe-upstream",
       "ask a custom upstream once which server it is (llama.cpp, vLLM) to adapt requests and count tokens exactly"),
    _s("stream_ping_interval", float, 15.0, "CLASP_STREAM_PING_INTERVAL", "stream-ping-interval",
       "seconds of upstream silence before a ping event is sent to the client"),
    # retries
    _s("max_retries", int, 2, "CLASP_MAX_RETRIES", "max-retries",
       "retries of a failed upstream call before any byte reached the client"),
    _s("retry_base_delay_ms", int, 500, "CLASP_RETRY_BASE_DELAY_MS", "retry-base-delay-ms",
       "base delay of the exponential backoff"),
    # queue
    _s("queue", bool, False, "CLASP_QUEUE", "queue", "queue requests while the provider is unavailable"),
    _s("queue_max_size", int, 100, "CLASP_QUEUE_MAX_SIZE", "queue-max-size", "maximum queued requests"),
    _s("queue_max_wait", float, 30.0, "CLASP_QUEUE_MAX_WAIT", "queue-max-wait",
       "seconds a request may wait in the queue"),
    _s("queue_retry_delay", int, 1000, "CLASP_QUEUE_RETRY_DELAY", "queue-retry-delay",
       "milliseconds between retries of a queued request"),
    _s("queue_max_retries", int, 3, "CLASP_QUEUE_MAX_RETRIES", "queue-max-retries",
       "retries of a queued request"),
    # circuit breaker
    _s("circuit_breaker", bool, False, "CLASP_CIRCUIT_BREAKER", "circuit-breaker",
       "enable a circuit breaker per upstream target"),
    _s("cb_threshold", int, 5, "CLASP_CIRCUIT_BREAKER_THRESHOLD", "cb-threshold",
       "consecutive failures that open the circuit"),
    _s("cb_recovery", int, 2, "CLASP_CIRCUIT_BREAKER_RECOVERY", "cb-recovery",
       "successes in half-open state that close it"),
    _s("cb_timeout", float, 30.0, "CLASP_CIRCUIT_BREAKER_TIMEOUT", "cb-timeout",
       "seconds the circuit stays open before probing"),
    # fallback
    _s("fallback", bool, False, "CLASP_FALLBACK", "fallback", "fail over to the next target"),
    _s("fallback_provider", str, "", "CLASP_FALLBACK_PROVIDER", "fallback-provider",
       "explicit fallback provider (default: other providers with credentials)"),
    _s("fallback_model", str, "", "CLASP_FALLBACK_MODEL", "fallback-model", "model on the fallback target"),
    _s("fallback_base_url", str, "", "CLASP_FALLBACK_BASE_URL", None, "base URL of the fallback target"),
    _s("fallback_api", str, "", "CLASP_FALLBACK_API", None,
       "API dialect of the fallback target: chat, responses or auto (default: CLASP_OPENAI_API)"),
    _s("fallback_api_key", str, "", "CLASP_FALLBACK_API_KEY", None, "API key of the fallback target",
       secret=True),
    # multi-provider tiers
    _s("multi_provider", bool, False, "CLASP_MULTI_PROVIDER", "multi-provider",
       "route opus/sonnet/haiku to different providers"),
    *(s for tier in TIERS for s in (
        _s(f"{tier}_provider", str, "", f"CLASP_{tier.upper()}_PROVIDER", None, f"provider for the {tier} tier"),
        _s(f"{tier}_model", str, "", f"CLASP_{tier.upper()}_MODEL", None, f"model for the {tier} tier"),
        _s(f"{tier}_api_key", str, "", f"CLASP_{tier.upper()}_API_KEY", None,
           f"API key for the {tier} tier (inherits the provider's key)", secret=True),
        _s(f"{tier}_base_url", str, "", f"CLASP_{tier.upper()}_BASE_URL", None,
           f"base URL for the {tier} tier (default: the provider's)"),
        _s(f"{tier}_api", str, "", f"CLASP_{tier.upper()}_API", None,
           f"API dialect for the {tier} tier: chat, responses or auto (default: CLASP_OPENAI_API)"),
    )),
    # auth
    _s("auth", bool, False, "CLASP_AUTH", "auth", "require an API key from clients"),
    _s("auth_api_key", str, "", "CLASP_AUTH_API_KEY", "auth-api-key", "the key clients must send", secret=True),
    _s("auth_allow_anonymous_health", bool, True, "CLASP_AUTH_ALLOW_ANONYMOUS_HEALTH", None,
       "allow /health without the key"),
    _s("auth_allow_anonymous_metrics", bool, False, "CLASP_AUTH_ALLOW_ANONYMOUS_METRICS", None,
       "allow /metrics without the key"),
    _s("keys_file", str, "", "CLASP_KEYS_FILE", "keys-file",
       "client keys with their own limits, models and budgets (TOML or JSON; implies auth)"),
    _s("keys_check_interval", float, 5.0, "CLASP_KEYS_CHECK_INTERVAL", "keys-check-interval",
       "seconds between checks of the keys file for changes (also reloaded on SIGHUP)"),
    _s("prices", str, "", "CLASP_PRICES", "prices",
       "model prices in USD per million tokens: 'model=input/cached_input/output,...' (adds to or "
       "overrides the built-in table)"),
    # rate limit
    _s("rate_limit", bool, False, "CLASP_RATE_LIMIT", "rate-limit", "enable per-client rate limiting"),
    _s("rate_limit_requests", int, 60, "CLASP_RATE_LIMIT_REQUESTS", "rate-limit-requests",
       "requests per window"),
    _s("rate_limit_window", float, 60.0, "CLASP_RATE_LIMIT_WINDOW", "rate-limit-window", "window in seconds"),
    _s("rate_limit_burst", int, 10, "CLASP_RATE_LIMIT_BURST", "rate-limit-burst", "burst allowance"),
    # cache
    _s("cache", bool, False, "CLASP_CACHE", "cache", "cache deterministic (temperature 0) responses"),
    _s("cache_max_size", int, 1000, "CLASP_CACHE_MAX_SIZE", "cache-max-size", "maximum cache entries"),
    _s("cache_ttl", float, 3600.0, "CLASP_CACHE_TTL", "cache-ttl", "cache TTL in seconds"),
    # shared state
    _s("redis_url", str, "", "CLASP_REDIS_URL", "redis-url",
       "Redis/Valkey for state shared by replicas: redis://[user:password@]host[:port][/db] or rediss:// (TLS)",
       secret=True),
    _s("redis_prefix", str, "clasp:", "CLASP_REDIS_PREFIX", "redis-prefix", "prefix of every key clasp writes in Redis"),
    _s("redis_timeout", float, 1.0, "CLASP_REDIS_TIMEOUT", "redis-timeout",
       "seconds to connect to Redis and to wait for one reply"),
    _s("redis_fail_closed", bool, False, "CLASP_REDIS_FAIL_CLOSED", "redis-fail-closed",
       "while Redis is unreachable refuse requests (503) instead of using per-process limits"),
    # logging
    _s("debug", bool, False, "CLASP_DEBUG", "debug", "log requests and responses (secrets redacted)"),
    _s("debug_requests", bool, False, "CLASP_DEBUG_REQUESTS", "debug-requests", "log requests only"),
    _s("debug_responses", bool, False, "CLASP_DEBUG_RESPONSES", "debug-responses", "log responses only"),
    _s("log_format", str, "text", "CLASP_LOG_FORMAT", "log-format", "access log format: text or json"),
    _s("access_log", bool, True, "CLASP_ACCESS_LOG", "access-log", "write one access line per request"),
    # clasp claude
    _s("statusline", bool, True, "CLASP_STATUSLINE", "statusline",
       "clasp claude: show the proxy's provider, model, tokens and state in Claude Code's status line"),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_BY_FLAG = {s.flag: s for s in SETTINGS if s.flag}
PROVIDERS = ("openai", "azure", "openrouter", "custom")
CLIENT_MODEL_CHOICES = ("auto", "on", "off")
APIS = ("chat", "responses", "auto")  # upstream dialects: Chat Completions, Responses, by model


def is_loopback_host(host: str) -> bool:
    """True for a loopback name or address: localhost, *.localhost, 127.0.0.0/8, ::1 (with or
    without brackets). The empty bind address (all interfaces) is not loopback."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_size: int = 32 * 1024 * 1024
    header_timeout: float = 30.0
    idle_timeout: float = 75.0
    write_timeout: float = 120.0
    max_connections: int = 0
    shutdown_timeout: float = 30.0
    memory_trim_after: float = 5.0
    allowed_hosts: str = ""
    allowed_origins: str = ""
    provider: str = "openai"
    model: str = ""
    model_opus: str = ""
    model_sonnet: str = ""
    model_haiku: str = ""
    model_aliases: str = ""
    model_flags: str = ""
    openai_api: str = "auto"
    web_search: str = ""
    client_model_choice: str = "auto"
    openai_api_key: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
    azure_api_key: str = ""
    azure_endpoint: str = ""
    azure_deployment: str = ""
    azure_api_version: str = "2024-02-15-preview"
    openrouter_api_key: str = ""
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_referer: str = ""
    openrouter_title: str = "clasp"
    custom_base_url: str = ""
    custom_api_key: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    first_byte_timeout: float = 300.0
    max_sse_event_size: int = 8 * 1024 * 1024
    pool_size: int = 32
    probe_upstream: bool = True
    stream_ping_interval: float = 15.0
    max_retries: int = 2
    retry_base_delay_ms: int = 500
    queue: bool = False
    queue_max_size: int = 100
    queue_max_wait: float = 30.0
    queue_retry_delay: int = 1000
    queue_max_retries: int = 3
    circuit_breaker: bool = False
    cb_threshold: int = 5
    cb_recovery: int = 2
    cb_timeout: float = 30.0
    fallback: bool = False
    fallback_provider: str = ""
    fallback_model: str = ""
    fallback_base_url: str = ""
    fallback_api: str = ""
    fallback_api_key: str = ""
    multi_provider: bool = False
    opus_provider: str = ""
    opus_model: str = ""
    opus_api_key: str = ""
    opus_base_url: str = ""
    opus_api: str = ""
    sonnet_provider: str = ""
    sonnet_model: str = ""
    sonnet_api_key: str = ""
    sonnet_base_url: str = ""
    sonnet_api: str = ""
    haiku_provider: str = ""
    haiku_model: str = ""
    haiku_api_key: str = ""
    haiku_base_url: str = ""
    haiku_api: str = ""
    auth: bool = False
    auth_api_key: str = ""
    auth_allow_anonymous_health: bool = True
    auth_allow_anonymous_metrics: bool = False
    keys_file: str = ""
    keys_check_interval: float = 5.0
    prices: str = ""
    rate_limit: bool = False
    rate_limit_requests: int = 60
    rate_limit_window: float = 60.0
    rate_limit_burst: int = 10
    cache: bool = False
    cache_max_size: int = 1000
    cache_ttl: float = 3600.0
    redis_url: str = ""
    redis_prefix: str = "clasp:"
    redis_timeout: float = 1.0
    redis_fail_closed: bool = False
    debug: bool = False
    debug_requests: bool = False
    debug_responses: bool = False
    log_format: str = "text"
    access_log: bool = True
    statusline: bool = True
    config_file: str = ""
    sources: tuple = field(default=(), compare=False)  # (name, origin) for settings not at default
    keys: tuple = field(default=(), compare=False)     # the config file's [[keys]] (clasp.ops.keys.ApiKey)

    def __repr__(self) -> str:  # never show secrets, nor credentials inside URLs
        from clasp.redaction import redact
        shown = ", ".join(f"{s.name}={'***' if s.secret and getattr(self, s.name) else getattr(self, s.name)!r}"
                          for s in SETTINGS)
        return redact(f"Config({shown})")

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction."""
        out = [v for s in SETTINGS if s.secret and (v := getattr(self, s.name))]
        if self.redis_url:  # its password alone may show up too (e.g. echoed by a server)
            from clasp.store.resp import parse_url
            try:
                password = parse_url(self.redis_url).password
            except ValueError:
                password = ""
            if password:
                out.append(password)
        return out

    @property
    def client_chooses_model(self) -> bool:
        """May a request name its provider ("provider,model") and pass other names through?
        Useful to one developer on loopback; in a shared gateway it lets any client spend any
        configured credential on any model, so "auto" allows it only on loopback without auth."""
        if self.client_model_choice == "auto":
            return not self.auth_required and is_loopback_host(self.host)
        return self.client_model_choice == "on"

    @property
    def auth_required(self) -> bool:
        """Clients must send a key: -auth, or client keys are configured (a keys file, [[keys]])."""
        return self.auth or bool(self.keys_file) or bool(self.keys)

    @property
    def debug_log_requests(self) -> bool:
        return self.debug or self.debug_requests

    @property
    def debug_log_responses(self) -> bool:
        return self.debug or self.debug_responses


assert {f.name for f in fields(Config)} - {"config_file", "sources", "keys"} == set(_BY_NAME), "SETTINGS and Config differ"

_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n", ""}


def _convert(setting: Setting, value: Any, origin: str) -> Any:
    kind = setting.kind
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind in (int, float) and isinstance(value, str) and not value.isascii():
            raise ValueError  # int() and float() would read other scripts' digits
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):  # "nan" or "inf" seconds would break every timer
                raise ValueError
            return number
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{origin}: invalid {kind.__name__} value {_safe(setting, value)!r}") from None


def _safe(setting: Setting, value: Any) -> Any:
    return "***" if setting.secret else value


# ---------------------------------------------------------------- flags

def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, bool]]:
    """Parse Go-style flags (-port 8080, --port=8080, -debug, -debug=false).

    Returns (settings given by flag, actions) where actions holds help/version/config.
    """
    values: dict[str, Any] = {}
    actions: dict[str, Any] = {}
    i = 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ConfigError(f"unexpected argument {arg!r} (flags look like -port 8080)")
        name, eq, inline = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            actions["help"] = True
            continue
        if name in ("v", "version"):
            actions["version"] = True
            continue
        if name == "config":
            if not eq:
                if i >= len(args):
                    raise ConfigError("flag -config needs a file path")
                inline = args[i]
                i += 1
            actions["config"] = inline
            continue
        setting = _BY_FLAG.get(name)
        if setting is None and name.startswith("no-") and not eq:
            negated = _BY_FLAG.get(name[3:])  # -no-statusline is -statusline=false, for any bool flag
            if negated is not None and negated.kind is bool:
                values[negated.name] = False
                continue
        if setting is None:
            raise ConfigError(f"unknown flag -{name} (see -help)")
        if setting.kind is bool:
            values[setting.name] = _convert(setting, inline if eq else True, f"flag -{name}")
            continue
        if not eq:
            if i >= len(args):
                raise ConfigError(f"flag -{name} needs a value")
            inline = args[i]
            i += 1
        values[setting.name] = _convert(setting, inline, f"flag -{name}")
    return values, actions


COMMANDS = ("claude",)  # words that end clasp's flags and start a command's own arguments


def split_command(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """Split `[clasp flags] [--] COMMAND [its args]` into (clasp flags, COMMAND, its args).

    The flags are walked as parse_flags reads them, so a flag's value is never taken for the
    command (`-model claude claude -p hi` runs claude with the model "claude"). The first
    argument in a flag's place that is a command word ends clasp's flags; so does `--`, which must
    then be followed by the command. Without a command word the result is (argv, None, [])."""
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in COMMANDS:
            return args[:i], arg, args[i + 1:]
        if arg == "--":
            if i + 1 < len(args) and args[i + 1] in COMMANDS:
                return args[:i], args[i + 1], args[i + 2:]
            raise ConfigError(f"-- ends clasp's flags and must be followed by {' or '.join(COMMANDS)}")
        i += 1
        if not arg.startswith("-") or arg == "-":
            continue  # parse_flags reports it
        name, eq, _ = arg.lstrip("-").partition("=")
        if eq:
            continue
        setting = _BY_FLAG.get(name)
        if name == "config" or (setting is not None and setting.kind is not bool):
            i += 1  # its value, whatever it says
    return args, None, []


# ---------------------------------------------------------------- config file

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ${VAR} and ${VAR:-default} from the environment."""
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or "") if m.group(2) is not None
                    else env.get(m.group(1), ""), text)


def default_config_paths(env: Mapping[str, str]) -> list[str]:
    home = env.get("HOME") or os.path.expanduser("~")
    return ["clasp.toml", "clasp.json", os.path.join(home, ".config/clasp/config.toml"),
            os.path.join(home, ".config/clasp/config.json"), "/etc/clasp/config.toml",
            "/etc/clasp/config.json"]


def parse_document(text: str, *, json_format: bool, label: str, json_hint: str) -> Any:
    """A config or keys file's JSON or TOML text. Errors give the position and the parser's
    reason, never a quote of the text (it may hold keys)."""
    if json_format:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{label}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    try:
        import tomllib
    except ImportError:
        raise ConfigError(f"{label}: TOML needs Python 3.11+; on {sys.version_info.major}."
                          f"{sys.version_info.minor} write {json_hint}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: invalid TOML: {e}") from None


def load_file(path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Read a TOML (3.11+) or JSON config file into {setting name: value}."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    data = parse_document(text, json_format=path.endswith(".json") or text.lstrip().startswith("{"),
                          label=f"config file {path}", json_hint="the file as JSON (clasp.json)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/object")
    # [[keys]] and [prices."model"] are tables of their own, not settings to flatten
    data = dict(data)
    keys = data.pop("keys", None)
    prices = data.pop("prices", None)
    if isinstance(prices, dict):
        from clasp.ops.pricing import prices_from_table
        data["prices"] = prices_from_table(prices, f"config file {path}")
    elif prices is not None:
        data["prices"] = prices
    flat: dict[str, Any] = {}
    _flatten(data, "", flat, path)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        if isinstance(value, str):
            value = expand_vars(value, env)
        out[key] = _convert(setting, value, f"config file {path}: key {key!r}")
    if keys is not None:
        from clasp.ops.keys import parse_keys
        out[_KEYS] = tuple(parse_keys(keys, f"config file {path}").by_name.values())
    return out


_KEYS = "[[keys]]"  # where load_file returns the parsed [[keys]] (not a setting)


def _flatten(data: dict, prefix: str, out: dict, path: str) -> None:
    # Tables are a convenience: [queue] max_size = 5 is the same key as queue_max_size = 5;
    # a table named like a bool setting may hold `enabled`.
    for key, value in data.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            _flatten(value, name, out, path)
        elif prefix and key == "enabled":
            out[prefix] = value
        else:
            out[name] = value


# ---------------------------------------------------------------- build

def load_config(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> tuple[Config, dict]:
    """Build the Config from flags > env > file > defaults. Returns (config, actions)."""
    env = os.environ if env is None else env
    flag_values, actions = parse_flags(argv)
    config_path = actions.get("config") or env.get("CLASP_CONFIG_FILE", "")
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = load_file(config_path, env)
    else:
        for candidate in default_config_paths(env):
            if os.path.isfile(candidate):
                config_path = candidate
                file_values = load_file(candidate, env)
                break
    file_keys = file_values.pop(_KEYS, ())
    values: dict[str, Any] = {}
    sources = []
    for s in SETTINGS:
        if s.name in flag_values:
            values[s.name] = flag_values[s.name]
            sources.append((s.name, "flag"))
            continue
        env_name = next((e for e in s.env if env.get(e, "") != ""), None)
        if env_name is not None:
            values[s.name] = _convert(s, env[env_name], f"environment variable {env_name}")
            sources.append((s.name, env_name))
        elif s.name in file_values:
            values[s.name] = file_values[s.name]
            sources.append((s.name, "file"))
    cfg = Config(**values, config_file=config_path, sources=tuple(sources), keys=file_keys)
    validate(cfg)
    return cfg, actions


def validate(cfg: Config) -> None:
    if cfg.provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {cfg.provider!r} (PROVIDER / -provider): "
                          f"choose one of {', '.join(PROVIDERS)}")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port {cfg.port} out of range (CLASP_PORT / -port)")
    if cfg.workers < 1:
        raise ConfigError("workers must be at least 1 (CLASP_WORKERS / -workers)")
    for name, env in (("openai_api", "CLASP_OPENAI_API / -openai-api"), ("fallback_api", "CLASP_FALLBACK_API"),
                      *((f"{t}_api", f"CLASP_{t.upper()}_API") for t in TIERS)):
        value = getattr(cfg, name)
        if value and value not in APIS:
            raise ConfigError(f"API dialect must be {', '.join(APIS)}, got {value!r} ({env})")
    if cfg.client_model_choice not in CLIENT_MODEL_CHOICES:
        raise ConfigError(f"client model choice must be {', '.join(CLIENT_MODEL_CHOICES)}, got "
                          f"{cfg.client_model_choice!r} (CLASP_CLIENT_MODEL_CHOICE / -client-model-choice)")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("log format must be text or json (CLASP_LOG_FORMAT / -log-format)")
    if cfg.auth and not cfg.auth_api_key and not cfg.keys_file and not cfg.keys:
        raise ConfigError("-auth needs a key: set CLASP_AUTH_API_KEY or -auth-api-key (or client keys: -keys-file)")
    if cfg.prices:
        from clasp.ops.pricing import parse_prices
        parse_prices(cfg.prices, "prices (CLASP_PRICES / -prices)")
    for name in ("max_body_size", "max_sse_event_size", "pool_size", "queue_max_size", "cache_max_size",
                 "cb_threshold", "cb_recovery", "rate_limit_requests", "rate_limit_burst"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("header_timeout", "idle_timeout", "write_timeout", "connect_timeout", "read_timeout",
                 "first_byte_timeout", "rate_limit_window", "cache_ttl", "queue_max_wait", "cb_timeout",
                 "keys_check_interval"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    if cfg.redis_url:
        from clasp.store.resp import parse_url
        try:
            parse_url(cfg.redis_url)
        except ValueError as e:
            raise ConfigError(f"{e} (CLASP_REDIS_URL / -redis-url)") from None
    if cfg.redis_timeout <= 0:
        raise ConfigError("redis_timeout must be positive")
    if cfg.max_retries < 0 or cfg.queue_max_retries < 0:
        raise ConfigError("retry counts cannot be negative")
    if cfg.max_connections < 0:
        raise ConfigError("max_connections cannot be negative (0 = from the open-file limit)")
    if cfg.memory_trim_after < 0:
        raise ConfigError("memory_trim_after cannot be negative (0 turns trimming off)")


def usage_text() -> str:
    """The -help text: every flag and environment variable."""
    lines = ["usage: python -m clasp [flags]                    run the proxy",
             "       python -m clasp [flags] claude [args...]   run Claude Code through a private proxy",
             "       python -m clasp doctor [--json] [flags]    check the configured upstreams (exit 0: primary works)",
             "       python -m clasp healthcheck                exit 0 if the proxy on CLASP_PORT is healthy",
             "",
             "Flags may be written -name value, --name value or -name=value; a bool flag -name",
             "is also -name=true, and -no-name is -name=false. Precedence:",
             "flags > environment > config file > defaults.",
             "With claude, the flags before the word `claude` (or before `-- claude`) configure the",
             "private proxy; every argument after it goes to Claude Code unchanged.", "",
             "  -config FILE                 config file (env CLASP_CONFIG_FILE)",
             "  -version                     print the version",
             "  -help                        this text", ""]
    for s in SETTINGS:
        flag = f"-{s.flag}" + ("" if s.kind is bool else f" {s.kind.__name__.upper()}") if s.flag else ""
        env = " / ".join(s.env)
        default = "" if s.secret or s.default in ("", None) else f" (default {s.default})"
        lines.append(f"  {flag:<28} {env:<36} {s.help}{default}")
    return "\n".join(lines)


# ASCII digits only (str.isdigit also accepts "²", which int() rejects), and few enough for int().
_INT = re.compile(r"-?[0-9]{1,18}")


def parse_model_flags(text: str) -> dict[str, Any]:
    """Parse CLASP_MODEL_FLAGS: 'no_stream_options,max_output_cap=16384,reasoning_style=deepseek'."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, eq, raw = item.partition("=")
        name = name.strip()
        if not eq:
            out[name] = True
            continue
        raw = raw.strip()
        low = raw.lower()
        if low in _TRUE - {"1"} or low in _FALSE - {"0", ""}:
            out[name] = low in _TRUE
        elif _INT.fullmatch(raw):
            out[name] = int(raw)
        else:
            out[name] = raw
    return out
