"""`python -m clasp doctor [clasp flags]`: what the configuration will do, checked target by target.

The configuration is loaded exactly as the server loads it (flags > env > file) and the Router
built from it; where Claude Code's WebSearch goes (the routing decision the server makes); then,
for every route a Claude tier (and its fallbacks) resolves to: network (DNS,
TCP, TLS, proxy), auth (GET /models), the model (listed, a 1-token completion, streaming with
stream_options, a forced tool call, reasoning output, the context window) and the server kind.
The requests are the ones clasp itself would send (its translator and capabilities), as small as
possible. Every check is bounded by a short timeout. Keys never appear in the report: it is built
from redacted URLs and upstream messages, and the whole text is redacted again before printing.

Checks (async, I/O) are kept apart from the report (pure: `format_text`, `format_json`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from clasp.config import TIERS, Config, ConfigError, parse_model_flags
from clasp.pipeline.web_search import configured_search_route, search_route, unavailable_reason
from clasp.redaction import redact
from clasp.routing.providers import KEY_ENV, Route, Router, Target
from clasp.translate.capabilities import Capabilities, capabilities_for
from clasp.translate.web_search import SETTING_HINT
from clasp.upstream.client import UpstreamClient, UpstreamError, proxy_bypassed
from clasp.upstream.servers import UNKNOWN, ServerInfo, ServerRegistry, root_url

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
NET_TIMEOUT_S = 3.0        # DNS, TCP, TLS, GET /models, server probes
REQUEST_TIMEOUT_S = 20.0   # one model request (a local server may need a moment for the first token)
# Claude Code's first request of a session (/work/shared/fixtures/claude-code/first_request.json:
# system prompt, 12 tools), measured with clasp.translate.tokens.estimate_tokens: 12,325 tokens.
# Real tokenizers count 15-20k for it; with room for an answer a model needs at least this much.
CLAUDE_CODE_PROMPT_TOKENS = 12_325
CONTEXT_NEEDED = 20_000
_MAX_BODY = 1024 * 1024
SEARCH_STYLES = {"responses": "the Responses API's web_search tool", "chat": "the search model's web_search_options",
                 "openrouter": "OpenRouter's web plugin"}
_PROBE_TOOL = {"name": "get_weather", "description": "Get the weather of a city.",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"]}}


@dataclass
class Check:
    target: str          # the target name ("" for the configuration lines)
    section: str         # configuration | network | auth | model | server
    name: str
    verdict: str         # OK | WARN | FAIL | SKIP
    detail: str
    fix: str = ""
    requests: int = 0    # requests this check sent upstream
    primary: bool = False  # on the path Claude Code uses without fallback: decides the exit status


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    config_error: str = ""

    @property
    def primary_ok(self) -> bool:
        return not self.config_error and not any(c.verdict == FAIL and c.primary for c in self.checks)

    @property
    def exit_code(self) -> int:
        if self.config_error:
            return 2
        return 0 if self.primary_ok else 1


# --------------------------------------------------------------------------- report (pure)

def format_text(report: Report) -> str:
    """The report for a person: one line per check, a verdict each, the fix under a failure."""
    if report.config_error:
        return f"clasp doctor: configuration error: {report.config_error}\n"
    lines = ["clasp doctor"]
    section = None
    for c in report.checks:
        heading = "Configuration" if c.section == "configuration" else f"Target {c.target}"
        if heading != section:
            section = heading
            lines += ["", heading]
        sends = f" (sends {c.requests} request{'s' if c.requests != 1 else ''})" if c.requests else ""
        lines.append(f"  {c.verdict:<5} {c.name:<17} {c.detail}{sends}")
        if c.fix:
            lines.append(f"  {'':<5} {'':<17} fix: {c.fix}")
    fails = sum(c.verdict == FAIL for c in report.checks)
    warns = sum(c.verdict == WARN for c in report.checks)
    lines.append("")
    if report.primary_ok:
        lines.append(f"Verdict: the primary path works ({warns} warning{'s' if warns != 1 else ''}, "
                     f"{fails} failure{'s' if fails != 1 else ''} elsewhere).")
    else:
        lines.append(f"Verdict: the primary path does NOT work ({fails} failure{'s' if fails != 1 else ''}, "
                     f"{warns} warning{'s' if warns != 1 else ''}): see the fixes above.")
    return "\n".join(lines) + "\n"


def format_json(report: Report) -> str:
    """The same report for scripts."""
    return json.dumps({"ok": report.primary_ok, "exit_code": report.exit_code,
                       "config_error": report.config_error or None,
                       "checks": [asdict(c) for c in report.checks]}, indent=2) + "\n"


def shown_url(url: str, secrets: list[str]) -> str:
    """A URL without credentials or query secrets."""
    return redact(url, secrets)


def key_variable(target: Target) -> str:
    """The setting that holds this target's key, as the user spells it."""
    base = KEY_ENV.get(target.provider, "the API key")
    head, colon, _ = target.name.partition(":")
    if colon and head in TIERS:
        return f"CLASP_{head.upper()}_API_KEY (or {base})"
    if colon and head == "fallback":
        return f"CLASP_FALLBACK_API_KEY (or {base})"
    return base


def base_url(target: Target) -> str:
    """The API base of a target: its chat/completions URL without the endpoint."""
    parts = urlsplit(target.url)
    path = parts.path
    if path.endswith("/chat/completions"):
        path = path[: -len("/chat/completions")]
    return parts._replace(path=path).geturl()


def context_advice(window: int) -> str:
    """Settings that make Claude Code fit a context window smaller than it needs."""
    output = max(256, min(8192, window // 4))
    compact = max(1024, window - output)
    advice = (f"set CLAUDE_CODE_AUTO_COMPACT_WINDOW={compact} and CLAUDE_CODE_MAX_OUTPUT_TOKENS={output} for "
              f"Claude Code, and CLASP_MODEL_FLAGS=max_output_cap={output} for clasp")
    if window < CLAUDE_CODE_PROMPT_TOKENS:
        advice += (f"; Claude Code's prompt alone is about {CLAUDE_CODE_PROMPT_TOKENS} tokens: give the "
                   f"server a larger context (llama.cpp -c 32768, Ollama OLLAMA_CONTEXT_LENGTH, vLLM "
                   f"--max-model-len) or run Claude Code with fewer tools (--tools \"\")")
    return advice


# --------------------------------------------------------------------------- checks (I/O)

def _short(text: str, secrets: list[str], limit: int = 200) -> str:
    text = " ".join(redact(text, secrets).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return raw[:300].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(data)


async def _resolve(host: str, port: int) -> list:
    """socket.getaddrinfo in a daemon thread: a resolver that hangs past the check's timeout must
    not hold the process at exit either (asyncio.run waits for its default executor's threads)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def work() -> None:
        try:
            result, error = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), None
        except OSError as e:
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is gone: nobody waits any more

    threading.Thread(target=work, name="clasp-doctor-dns", daemon=True).start()
    return await done


class _CountingClient(UpstreamClient):
    """The upstream client, counting the requests sent (each check says how many it sent)."""

    sent = 0

    async def request(self, method, url, headers, body):  # type: ignore[override]
        self.sent += 1
        return await super().request(method, url, headers, body)


class Doctor:
    """Runs the checks of one configuration; `await run()` returns the Report."""

    def __init__(self, cfg: Config, env: Mapping[str, str], *, net_timeout: float = NET_TIMEOUT_S,
                 request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.cfg = cfg
        self.env = env
        self.secrets = cfg.secrets()
        self.net_timeout = net_timeout
        self.request_timeout = request_timeout
        self.router = Router(cfg)
        self.model_flags = parse_model_flags(cfg.model_flags)
        try:  # the server refuses to start on a bad flag: so does the doctor (exit 2)
            capabilities_for(self.router.primary.provider, self.router.primary.default_model, self.model_flags)
        except ValueError as e:
            raise ConfigError(f"CLASP_MODEL_FLAGS: {e}") from None
        # the server refuses to start on a bad -web-search too
        self.search_target = configured_search_route(self.router, cfg.web_search) if cfg.web_search else None
        self.client = _CountingClient(connect_timeout=net_timeout, read_timeout=request_timeout, pool_size=4,
                                     env=env)
        self.servers = ServerRegistry(self.client, enabled=cfg.probe_upstream)
        self.report = Report()
        self.models: dict[str, dict] = {}        # target name -> {model id: its /models entry}
        self.kind_hints: dict[str, str] = {}     # target name -> kind seen in /models headers
        self.reasoning_seen: str | None = None

    def add(self, target: str, section: str, name: str, verdict: str, detail: str, fix: str = "",
            requests: int = 0, primary: bool = False) -> Check:
        check = Check(target, section, name, verdict, _short(detail, self.secrets, 400),
                      redact(fix, self.secrets), requests, primary)
        self.report.checks.append(check)
        return check

    def routes(self) -> tuple[list[tuple[str, Route]], list[tuple[Route, bool]]]:
        """(tier label, route) for every route a Claude tier resolves to, in order, and the
        distinct routes to check, each with whether a tier uses it first (its primary path)."""
        lines: list[tuple[str, Route]] = []
        distinct: dict[tuple, tuple[Route, bool]] = {}
        for tier in TIERS:
            for i, route in enumerate(self.router.resolve(f"claude-{tier}")):
                lines.append((tier if i == 0 else f"{tier} fallback {i}", route))
                key = (route.target.name, route.model, route.api)
                prior = distinct.get(key)
                distinct[key] = (route, i == 0 or (prior is not None and prior[1]))
        return lines, list(distinct.values())

    async def run(self) -> Report:
        try:
            lines, routes = self.routes()
            for label, route in lines:
                unset = route.model.startswith("claude-")  # no model configured: the name passes through
                self.add("", "configuration", label, WARN if unset else OK,
                         f"-> {route.target.name}: model {route.model} at "
                         f"{shown_url(route.url, self.secrets)} ({route.api} dialect)"
                         + (": no model configured, Claude Code's model names are sent as they are" if unset else ""),
                         f"set -model / CLASP_MODEL (or CLASP_MODEL_{label.split()[0].upper()})" if unset else "")
            self.check_web_search()
            if self.cfg.redis_url:
                await self.check_store()
            done: dict[str, bool] = {}
            for route, primary in sorted(routes, key=lambda r: not r[1]):  # primary routes first
                name = route.target.name
                try:
                    if name not in done:
                        done[name] = await self.check_target(route.target, primary)
                    if done[name]:
                        await self.check_model(route, primary)
                except Exception as e:  # a check must not hide the rest of the report
                    done[name] = False
                    self.add(name, "model", "check", FAIL, f"unexpected error: {type(e).__name__}: {e}",
                             "report this to clasp with the output above", primary=primary)
        finally:
            await self.client.close()
        return self.report

    async def check_store(self) -> None:
        """-redis-url: does Redis answer (connect, TLS, AUTH, SELECT, PING)?"""
        from clasp.store.resp import RedisClient, RedisConnectionError, RedisError
        client = RedisClient(self.cfg.redis_url, timeout=min(self.net_timeout, max(self.cfg.redis_timeout, 1.0)))
        where = client.url.address
        try:
            await client.execute("PING")
        except (RedisConnectionError, RedisError) as e:
            closed = self.cfg.redis_fail_closed
            self.add("", "configuration", "shared state", FAIL if closed else WARN,
                     f"Redis does not answer: {e}" + ("" if closed else "; requests would use per-process "
                                                       "rate limits and counters (fail-open)"),
                     "check CLASP_REDIS_URL / -redis-url (host, port, password, rediss:// for TLS)",
                     primary=closed)
            return
        finally:
            await client.close()
        self.add("", "configuration", "shared state", OK,
                 f"Redis at {where} answers (key prefix {self.cfg.redis_prefix!r})")

    def check_web_search(self) -> None:
        """Where Claude Code's WebSearch side requests go. They carry the main-loop model, whatever
        its tier: one line, per tier only when the tiers differ. Nowhere is a warning, not a
        failure: Claude Code works, its WebSearch answers "Web search error: unavailable"."""
        where: dict[tuple, tuple[Route, str | None, list[str]]] = {}
        for tier in TIERS:
            route, style = search_route(self.router, self.search_target, f"claude-{tier}")
            where.setdefault((route.target.name, route.model, route.api, style), (route, style, []))[2].append(tier)
        parts = []
        for route, style, tiers in where.values():
            if style is None:
                text = f"unavailable (set -web-search / CLASP_WEB_SEARCH): {unavailable_reason(route)}"
            else:
                whose = "the -web-search target" if self.search_target is not None else "the target's own search"
                text = (f"-> {route.target.name}: model {route.model} at {shown_url(route.url, self.secrets)} "
                        f"({whose}: {SEARCH_STYLES[style]})")
            parts.append(text if len(where) == 1 else f"{', '.join(tiers)}: {text}")
        nowhere = any(style is None for _, style, _ in where.values())
        self.add("", "configuration", "web search", WARN if nowhere else OK, "; ".join(parts),
                 SETTING_HINT if nowhere else "")

    # ---- network

    async def check_target(self, target: Target, primary: bool) -> bool:
        """Network and auth of one target; False when nothing more can be checked there."""
        name = target.name
        parts = urlsplit(target.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        https = parts.scheme == "https"
        proxy_var = "HTTPS_PROXY" if https else "HTTP_PROXY"
        proxy_url = (self.env.get(proxy_var.lower()) or self.env.get(proxy_var) or "")
        no_proxy = self.env.get("no_proxy") or self.env.get("NO_PROXY") or ""
        via = None
        if proxy_url and not proxy_bypassed(host, port, no_proxy):
            p = urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url)
            try:
                via = (p.hostname or "", p.port or 80)
            except ValueError:
                self.add(name, "network", "proxy", FAIL, f"{proxy_var} has an invalid port",
                         f"fix {proxy_var} (http://host:port)", primary=primary)
                return False
            self.add(name, "network", "proxy", OK, f"{proxy_var} in use: http://{via[0]}:{via[1]} "
                     f"(DNS and TLS of {host} go through the proxy's CONNECT tunnel)")
        elif proxy_url:
            self.add(name, "network", "proxy", OK, f"{proxy_var} is set but NO_PROXY exempts {host}: direct")
        else:
            self.add(name, "network", "proxy", OK, f"none ({proxy_var} not set): direct connection")
        dial_host, dial_port = via or (host, port)
        try:
            infos = await asyncio.wait_for(_resolve(dial_host, dial_port), self.net_timeout)
            addrs = list(dict.fromkeys(i[4][0] for i in infos))
            self.add(name, "network", "dns", OK, f"{dial_host} resolves to {', '.join(addrs[:4])}")
        except (OSError, asyncio.TimeoutError) as e:
            why = "timed out" if isinstance(e, asyncio.TimeoutError) else (getattr(e, "strerror", "") or str(e))
            self.add(name, "network", "dns", FAIL, f"cannot resolve {dial_host}: {why}",
                     "check the host name in the base URL" + (f" or {proxy_var}" if via else "")
                     + " and the machine's DNS", primary=primary)
            return False
        try:
            # the address just resolved: a stuck resolver is not asked twice
            _, writer = await asyncio.wait_for(asyncio.open_connection(addrs[0], dial_port), self.net_timeout)
            writer.transport.abort()
            self.add(name, "network", "tcp", OK, f"connected to {dial_host}:{dial_port}"
                     + (" (the proxy)" if via else ""))
        except (OSError, asyncio.TimeoutError) as e:
            why = (f"timed out after {self.net_timeout:g}s" if isinstance(e, asyncio.TimeoutError)
                   else os.strerror(e.errno) if e.errno else str(e))
            self.add(name, "network", "tcp", FAIL, f"cannot connect to {dial_host}:{dial_port}: {why}",
                     "is the server running and listening on that address and port? check the base URL"
                     + (f" and {proxy_var}" if via else "") + " (and any firewall)", primary=primary)
            return False
        if https and via is None:
            if not await self.check_tls(name, host, port, primary):
                return False
        return await self.check_auth(target, primary)

    async def check_tls(self, name: str, host: str, port: int, primary: bool) -> bool:
        import ssl
        try:
            ctx = ssl.create_default_context(cafile=self.env.get("SSL_CERT_FILE") or None,
                                             capath=self.env.get("SSL_CERT_DIR") or None)
        except (OSError, ssl.SSLError) as e:
            self.add(name, "network", "tls", FAIL, f"cannot load the CA certificates: {e}",
                     "point SSL_CERT_FILE at a readable PEM CA bundle", primary=primary)
            return False
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), self.net_timeout)
            tls = writer.get_extra_info("ssl_object")
            version = tls.version() if tls is not None else "TLS"
            writer.transport.abort()
            self.add(name, "network", "tls", OK, f"{version}, certificate valid for {host}")
            return True
        except ssl.SSLCertVerificationError as e:
            code = getattr(e, "verify_code", 0)
            message = getattr(e, "verify_message", "") or str(e)
            if code == 10:
                detail, fix = "the server's certificate has expired", "the server must renew its certificate"
            elif code == 62:
                detail = f"hostname mismatch: the certificate is not valid for {host}"
                fix = "use the host name the certificate names in the base URL"
            elif code in (18, 19, 20, 21):
                detail = f"certificate signed by an unknown CA ({message})"
                fix = ("if the server uses a private or corporate CA, set SSL_CERT_FILE (or SSL_CERT_DIR) "
                       "to a CA bundle that includes it")
            else:
                detail, fix = f"certificate verification failed: {message}", \
                    "check the server's certificate; for a private CA set SSL_CERT_FILE"
            self.add(name, "network", "tls", FAIL, detail, fix, primary=primary)
        except (ssl.SSLError, OSError, asyncio.TimeoutError) as e:
            why = "timed out" if isinstance(e, asyncio.TimeoutError) else (getattr(e, "reason", "") or str(e))
            self.add(name, "network", "tls", FAIL, f"TLS handshake failed: {why}",
                     "is this an https server? (use http:// in the base URL for a plain-HTTP server)",
                     primary=primary)
        return False

    # ---- requests

    async def _call(self, method: str, url: str, headers: list, body: bytes = b"",
                    timeout: float | None = None) -> tuple[int, dict, bytes]:
        async def go():
            resp = await self.client.request(method, url, headers, body)
            try:
                return resp.status, resp.headers, await resp.read(_MAX_BODY)
            finally:
                resp.close()
        return await asyncio.wait_for(go(), timeout or self.net_timeout)

    def _failure(self, e: BaseException, timeout: float) -> str:
        if isinstance(e, asyncio.TimeoutError):
            return f"no answer within {timeout:g}s"
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)
        return str(e) or type(e).__name__

    async def check_auth(self, target: Target, primary: bool) -> bool:
        name = target.name
        if target.provider == "azure":
            self.add(name, "auth", "key", OK, "Azure lists no models per deployment: the key is checked by "
                     "the completion below")
            return True
        url = base_url(target) + "/models"
        try:
            status, headers, raw = await self._call("GET", url, list(target.headers))
        except (UpstreamError, OSError, asyncio.TimeoutError) as e:
            self.add(name, "auth", "key", FAIL, f"GET /models failed: {self._failure(e, self.net_timeout)}",
                     "check the base URL", 1, primary=primary)
            return False
        var = key_variable(target)
        has_key = any(k.lower() in ("authorization", "api-key") for k, _ in target.headers)
        if status in (401, 403):
            self.add(name, "auth", "key", FAIL, f"the server rejected the key ({status}: "
                     f"{_error_message(raw)})", f"check {var}: "
                     + ("it is not accepted by this server" if has_key else "the server needs a key and none is set"),
                     1, primary=primary)
            return False
        if any(k.startswith("x-litellm") for k in headers):
            self.kind_hints[name] = "LiteLLM"
        if status != 200:
            self.add(name, "auth", "key", OK, f"GET /models answered {status}: the server lists no models; "
                     f"the key is checked by the completion below", requests=1)
            return True
        try:
            data = json.loads(raw)
            items = data.get("data") if isinstance(data, dict) else data
            ids = {str(m.get("id")): m for m in items if isinstance(m, dict)}
        except (ValueError, TypeError, AttributeError):
            ids = {}
        self.models[name] = ids
        listed = f"GET /models: {len(ids)} model{'s' if len(ids) != 1 else ''}"
        if target.provider == "openrouter":  # OpenRouter lists its models to anyone
            self.add(name, "auth", "key", OK, f"{listed}; OpenRouter lists models without checking the key: "
                     f"the completion below checks it", requests=1)
        else:
            self.add(name, "auth", "key", OK, ("key accepted" if has_key else "no key needed") + f" ({listed})",
                     requests=1)
        return True

    async def server_kind(self, target: Target) -> tuple[str, ServerInfo, int | None]:
        """(kind shown, ServerInfo for capabilities, context window if the server says)."""
        provider = target.provider
        if provider != "custom":
            return {"openai": "OpenAI", "azure": "Azure OpenAI", "openrouter": "OpenRouter"}[provider], UNKNOWN, None
        info = await self.servers.info(target)
        if info.kind == "llama.cpp":
            return "llama.cpp (llama-server)", info, info.context_window
        if info.kind == "vllm":
            return "vLLM", info, None
        if name_hint := self.kind_hints.get(target.name):
            return name_hint, info, None
        root = root_url(target.url)
        try:
            status, _, raw = await self._call("GET", root + "/api/version", list(target.headers))
            if status == 200 and "version" in json.loads(raw):
                return "Ollama", info, None
        except (UpstreamError, OSError, asyncio.TimeoutError, ValueError, TypeError):
            pass
        try:
            status, _, raw = await self._call("GET", root + "/api/v0/models", list(target.headers))
            models = json.loads(raw).get("data") if status == 200 else None
            if isinstance(models, list):
                window = next((m.get("max_context_length") for m in models if isinstance(m, dict)
                               and isinstance(m.get("max_context_length"), int)), None)
                return "LM Studio", info, window
        except (UpstreamError, OSError, asyncio.TimeoutError, ValueError, TypeError, AttributeError):
            pass
        return "", info, None

    async def ollama_context(self, target: Target, model: str) -> int | None:
        try:
            status, _, raw = await self._call("POST", root_url(target.url) + "/api/show",
                                              [("content-type", "application/json"), *target.headers],
                                              json.dumps({"model": model}).encode())
            info = json.loads(raw).get("model_info", {}) if status == 200 else {}
        except (UpstreamError, OSError, asyncio.TimeoutError, ValueError, AttributeError):
            return None
        for key, value in info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                return value
        return None

    def caps(self, route: Route, server: ServerInfo) -> Capabilities:
        """What clasp's chain uses for this route (UpstreamChain.caps_for)."""
        return capabilities_for(route.target.provider, route.model,
                                {**server.capability_defaults(), **self.model_flags})

    def translate(self, route: Route, caps: Capabilities, body: dict) -> dict:
        if route.api == "responses":
            from clasp.translate.responses_request import translate_responses_request
            return translate_responses_request(body, route.model, caps)[0]
        from clasp.translate.request import translate_request
        return translate_request(body, route.model, caps)[0]

    async def post(self, route: Route, payload: dict, stream: bool = False) -> tuple[int, dict, bytes]:
        headers = [("content-type", "application/json"), *route.target.headers]
        if stream:
            headers.append(("accept", "text/event-stream"))
        raw = json.dumps(payload, ensure_ascii=False).encode()
        return await self._call("POST", route.url, headers, raw, self.request_timeout)

    async def check_model(self, route: Route, primary: bool) -> None:
        target = route.target
        name = f"{target.name} / {route.model}"
        before = self.client.sent
        kind, server, window = await self.server_kind(target)
        probes = self.client.sent - before
        caps = self.caps(route, server)
        flags = sorted(k for k, v in server.capability_defaults().items() if v)
        if kind:
            self.add(name, "server", "server kind", OK, f"{kind}" + (
                f"; clasp applies the flags it needs: {', '.join(flags)}" if flags else "; no special flags needed"),
                requests=probes)
        else:
            self.add(name, "server", "server kind", OK, "a generic OpenAI-compatible server (it does not say which)",
                     requests=probes)
        listed = self.models.get(target.name)
        entry = None
        if listed:
            entry = listed.get(route.model)
            if entry is not None:
                self.add(name, "model", "listed", OK, f"{route.model} is in /models")
            elif kind.startswith("llama.cpp"):
                self.add(name, "model", "listed", OK, f"llama.cpp serves its loaded model "
                         f"({', '.join(list(listed)[:3])}) whatever the name requested")
            else:
                self.add(name, "model", "listed", WARN, f"{route.model} is not in /models (it lists "
                         f"{', '.join(list(listed)[:5])}{', ...' if len(listed) > 5 else ''})",
                         "check the model name (-model / CLASP_MODEL, or the tier's model setting)")
        if window is None and isinstance(entry, dict):
            for key in ("max_model_len", "context_length", "max_context_length"):
                if isinstance(entry.get(key), int) and entry[key] > 0:
                    window = entry[key]
                    break
        if window is None and kind == "Ollama":
            window = await self.ollama_context(target, route.model)
            self.add(name, "model", "ollama context", WARN, "Ollama runs a model with OLLAMA_CONTEXT_LENGTH "
                     "tokens of context (4096 by default in recent versions, 2048 in older ones), whatever "
                     "the model allows; clasp cannot see the value set",
                     "start the Ollama server with OLLAMA_CONTEXT_LENGTH=32768 (or more) for Claude Code")
        if not await self.check_completion(route, name, caps, primary):
            for what in ("streaming", "tool call"):
                self.add(name, "model", what, SKIP, "not checked: the completion failed")
            self.check_context(name, window)
            return
        await self.check_stream(route, name, caps)
        await self.check_tools(route, name, caps)
        self.check_context(name, window)

    def check_context(self, name: str, window: int | None) -> None:
        if window is None:
            self.add(name, "model", "context window", OK, "not reported by the server")
        elif window < CONTEXT_NEEDED:
            self.add(name, "model", "context window", WARN,
                     f"{window} tokens: too small for Claude Code (its prompt is about "
                     f"{CLAUDE_CODE_PROMPT_TOKENS} tokens, {CONTEXT_NEEDED} with room to answer)",
                     context_advice(window))
        else:
            self.add(name, "model", "context window", OK, f"{window} tokens: enough for Claude Code's prompt "
                     f"(about {CLAUDE_CODE_PROMPT_TOKENS} tokens)")

    def _status_fail(self, route: Route, status: int, raw: bytes) -> tuple[str, str]:
        message = _error_message(raw)
        if status in (401, 403):
            return f"the server rejected the key ({status}: {message})", f"check {key_variable(route.target)}"
        if status == 404:
            return (f"404: {message}", "check the model name (-model / CLASP_MODEL) and the base URL "
                    "(it should end where /chat/completions is appended, usually /v1)")
        return f"{status}: {message}", "see the server's message; CLASP_MODEL_FLAGS can adapt clasp's requests"

    async def check_completion(self, route: Route, name: str, caps: Capabilities, primary: bool) -> bool:
        body = {"model": "claude-doctor", "max_tokens": 1, "messages": [{"role": "user", "content": "Say OK."}]}
        try:
            status, _, raw = await self.post(route, self.translate(route, caps, body))
        except (UpstreamError, OSError, asyncio.TimeoutError) as e:
            self.add(name, "model", "completion", FAIL, self._failure(e, self.request_timeout),
                     "check that the server is up and answering (a local server may still be loading the model)",
                     1, primary)
            return False
        except Exception as e:  # the translator refused the configuration (CLASP_MODEL_FLAGS, ...)
            self.add(name, "model", "completion", FAIL, f"clasp cannot build the request: {e}",
                     "check CLASP_MODEL_FLAGS", 0, primary)
            return False
        if status != 200:
            detail, fix = self._status_fail(route, status, raw)
            self.add(name, "model", "completion", FAIL, detail, fix, 1, primary)
            return False
        try:
            data = json.loads(raw)
        except ValueError:
            self.add(name, "model", "completion", FAIL, "200 but the body is not JSON",
                     "is the base URL an OpenAI-compatible API (usually ending in /v1)?", 1, primary)
            return False
        self.add(name, "model", "completion", OK, "a 1-token completion works", requests=1)
        message = {}
        if isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]:
            message = data["choices"][0].get("message") or {}
        field_ = next((f for f in ("reasoning_content", "reasoning") if message.get(f)), None)
        if field_ is None and isinstance(data, dict) and isinstance(data.get("output"), list):
            field_ = "reasoning item" if any(isinstance(i, dict) and i.get("type") == "reasoning"
                                             for i in data["output"]) else None
        self.reasoning_seen = field_
        return True

    async def check_stream(self, route: Route, name: str, caps: Capabilities) -> None:
        body = {"model": "claude-doctor", "max_tokens": 1, "stream": True,
                "messages": [{"role": "user", "content": "Say OK."}]}
        payload = self.translate(route, caps, body)
        has_options = "stream_options" in payload
        try:
            status, _, raw = await self.post(route, payload, stream=True)
            if status == 200 and b"data:" in raw:
                self.add(name, "model", "streaming", OK, "streaming works"
                         + (" with stream_options" if has_options else ""), requests=1)
                self.note_reasoning(name, raw)
                return
            if status != 200 and has_options:
                first = _error_message(raw)
                payload.pop("stream_options", None)
                status2, _, raw2 = await self.post(route, payload, stream=True)
                if status2 == 200 and b"data:" in raw2:
                    self.add(name, "model", "streaming", WARN, f"the server rejects stream_options ({status}: "
                             f"{first}); streaming works without it",
                             "set CLASP_MODEL_FLAGS=no_stream_options", requests=2)
                    self.note_reasoning(name, raw2)
                    return
                status, raw = status2, raw2
            self.add(name, "model", "streaming", FAIL, f"streaming failed ({status}: {_error_message(raw)})",
                     "Claude Code always streams: check the server's streaming support", requests=2 if has_options else 1)
        except (UpstreamError, OSError, asyncio.TimeoutError) as e:
            self.add(name, "model", "streaming", FAIL, self._failure(e, self.request_timeout),
                     "Claude Code always streams: check the server's streaming support", requests=1)

    def note_reasoning(self, name: str, stream_raw: bytes) -> None:
        found = self.reasoning_seen
        if found is None:
            for f in (b'"reasoning_content"', b'"reasoning"'):
                if f + b':"' in stream_raw.replace(b": ", b":") and f + b':""' not in stream_raw.replace(b": ", b":"):
                    found = f.decode().strip('"')
        if found:
            self.add(name, "model", "reasoning", OK, f"reasoning output detected ({found}): Claude Code shows it "
                     f"as thinking")
        else:
            self.add(name, "model", "reasoning", OK, "no reasoning output in the answers (not a reasoning model, "
                     "or it reasons only when asked)")
        self.reasoning_seen = None

    async def check_tools(self, route: Route, name: str, caps: Capabilities) -> None:
        body = {"model": "claude-doctor", "max_tokens": 64, "tools": [_PROBE_TOOL],
                "tool_choice": {"type": "tool", "name": _PROBE_TOOL["name"]},
                "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
        fix = ("Claude Code cannot use tools on this model: choose a model with tool (function) calling"
               + (" or start llama-server with --jinja" if caps.string_tool_choice else ""))
        try:
            status, _, raw = await self.post(route, self.translate(route, caps, body))
        except (UpstreamError, OSError, asyncio.TimeoutError) as e:
            self.add(name, "model", "tool call", FAIL, self._failure(e, self.request_timeout), fix, 1)
            return
        if status != 200:
            self.add(name, "model", "tool call", FAIL, f"a forced tool call was refused ({status}: "
                     f"{_error_message(raw)})", fix, 1)
            return
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        called = False
        if isinstance(data, dict):
            for choice in data.get("choices") or []:
                if isinstance(choice, dict) and (choice.get("message") or {}).get("tool_calls"):
                    called = True
            for item in data.get("output") or []:
                if isinstance(item, dict) and item.get("type") == "function_call":
                    called = True
        if called:
            self.add(name, "model", "tool call", OK, "a forced tool call comes back as a tool call", requests=1)
        else:
            self.add(name, "model", "tool call", WARN, "asked to call a tool, the model answered with text", fix, 1)


async def run_doctor(cfg: Config, env: Mapping[str, str], **kw: Any) -> Report:
    return await Doctor(cfg, env, **kw).run()


def render(report: Report, secrets: list[str], as_json: bool) -> str:
    """The printed report, redacted once more as a whole (no key can slip through a message)."""
    text = format_json(report) if as_json else format_text(report)
    return redact(text, secrets)
