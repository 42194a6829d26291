"""Providers, upstream targets and model resolution (PROTOCOL.md §1.2, §5).

A Target is one upstream endpoint: its Chat Completions URL, the headers that authenticate
to it, and the model it serves by default. The Router turns a requested Anthropic model name
into an ordered chain of (target, upstream model) to try: the primary, then fallbacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import quote, urlsplit, urlunsplit

from clasp.config import APIS, PROVIDERS, TIERS, Config, ConfigError
from clasp.translate.capabilities import upstream_api

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
}
# What a claude-* request maps to when no model is configured for it.
DEFAULT_MODELS = {"openai": "gpt-4o", "openrouter": "openai/gpt-4o"}
CHOICE_OFF = ("choosing the provider in the model name ('provider,model') is turned off on this proxy "
              "(-client-model-choice / CLASP_CLIENT_MODEL_CHOICE)")
KEY_ENV = {"openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY", "openrouter": "OPENROUTER_API_KEY",
           "custom": "CUSTOM_API_KEY"}


@dataclass(frozen=True)
class Target:
    name: str                          # shown in X-CLASP-Provider, metrics and logs
    provider: str                      # openai | azure | openrouter | custom
    url: str = field(repr=False)       # full chat/completions URL (may carry credentials)
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # auth + attribution; never logged
    default_model: str = ""            # "" = pass the requested name through
    tier_models: tuple[tuple[str, str], ...] = ()  # (tier, model) overrides on this target
    responses_url: str = field(default="", repr=False)  # its Responses API URL
    api: str = "auto"                  # configured dialect: chat | responses | auto (by model)

    def url_for(self, api: str) -> str:
        return self.responses_url if api == "responses" else self.url

    def model_for(self, tier: str | None, requested: str) -> str:
        if tier:
            for t, m in self.tier_models:
                if t == tier and m:
                    return m
        return self.default_model or requested


def _check_url(url: str, variable: str) -> str:
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}"  # never echo userinfo or query (credentials)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{variable} must be an http(s) URL, got {shown!r}...")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{variable} has an invalid port ({shown}...)") from None
    return url


def build_target(provider: str, cfg: Config, *, name: str | None = None, model: str = "",
                 api_key: str = "", base_url: str = "", key_var: str | None = None,
                 url_var: str | None = None, api: str = "") -> Target:
    """Build a Target for one provider from the config, raising ConfigError naming what is missing."""
    api = api or cfg.openai_api
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    name = name or provider
    headers: list[tuple[str, str]] = []
    if provider == "azure":
        key = api_key or cfg.azure_api_key
        endpoint = base_url or cfg.azure_endpoint
        deployment = model or cfg.azure_deployment
        if not key:
            raise ConfigError(f"provider azure needs an API key: set {key_var or 'AZURE_API_KEY'}")
        if not endpoint:
            raise ConfigError(f"provider azure needs an endpoint: set {url_var or 'AZURE_OPENAI_ENDPOINT'}")
        if not deployment:
            raise ConfigError("provider azure needs a deployment: set AZURE_DEPLOYMENT_NAME")
        endpoint = _check_url(endpoint, url_var or "AZURE_OPENAI_ENDPOINT")
        url = _with_path(endpoint, f"/openai/deployments/{quote(deployment, safe='')}/chat/completions",
                         f"api-version={quote(cfg.azure_api_version, safe='')}")
        headers.append(("api-key", key))
        # the deployment in the URL decides the model (the body's is informational); Azure's v1
        # Responses API takes the deployment as the body's model instead
        return Target(name, provider, url, tuple(headers), deployment,
                      responses_url=_with_path(endpoint, "/openai/v1/responses"), api=api)
    if provider == "openai":
        key = api_key or cfg.openai_api_key
        base = base_url or cfg.openai_base_url or DEFAULT_BASE_URLS["openai"]
        if not key:
            raise ConfigError(f"provider openai needs an API key: set {key_var or 'OPENAI_API_KEY'}")
        base = _check_url(base, url_var or "OPENAI_BASE_URL")
    elif provider == "openrouter":
        key = api_key or cfg.openrouter_api_key
        base = base_url or cfg.openrouter_base_url or DEFAULT_BASE_URLS["openrouter"]
        if not key:
            raise ConfigError(f"provider openrouter needs an API key: set {key_var or 'OPENROUTER_API_KEY'}")
        base = _check_url(base, url_var or "OPENROUTER_BASE_URL")
        if cfg.openrouter_referer:
            headers.append(("HTTP-Referer", cfg.openrouter_referer))
        if cfg.openrouter_title:
            headers.append(("X-Title", cfg.openrouter_title))
    else:  # custom: Ollama, vLLM, LM Studio, llama.cpp, ...
        key = api_key or cfg.custom_api_key
        base = base_url or cfg.custom_base_url
        if not base:
            raise ConfigError(f"provider custom needs a base URL: set {url_var or 'CUSTOM_BASE_URL'} "
                              f"(e.g. http://localhost:11434/v1)")
        base = _check_url(base, url_var or "CUSTOM_BASE_URL")
    if key:
        headers.insert(0, ("Authorization", f"Bearer {key}"))
    return Target(name, provider, _api_url(base, "/chat/completions"), tuple(headers),
                  model or DEFAULT_MODELS.get(provider, ""), responses_url=_api_url(base, "/responses"), api=api)


def _api_url(base: str, endpoint: str) -> str:
    """The URL of an API endpoint ("/chat/completions", "/responses") under a base URL: at the end
    of the path, before a query string (Azure-style "?api-version=..." gateways). A base that
    already names an endpoint (a full chat/completions or responses URL) has it replaced."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    for known in ("/chat/completions", "/responses"):
        if path.endswith(known):
            path = path[: -len(known)]
    return _with_path(urlunsplit(parts._replace(path=path)), endpoint)


def _with_path(base: str, suffix: str, query: str = "") -> str:
    """`base` with `suffix` appended to its path and `query` to its query string."""
    parts = urlsplit(base)
    if query and parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix, query=query or parts.query))


def _has_credentials(provider: str, cfg: Config) -> bool:
    return {"openai": bool(cfg.openai_api_key),
            "openrouter": bool(cfg.openrouter_api_key),
            "azure": bool(cfg.azure_api_key and cfg.azure_endpoint and cfg.azure_deployment),
            "custom": bool(cfg.custom_base_url)}[provider]


@dataclass(frozen=True)
class Route:
    target: Target
    model: str            # upstream model
    tier: str | None
    api: str = "chat"     # the dialect this request speaks upstream: chat | responses

    @property
    def url(self) -> str:
        return self.target.url_for(self.api)


def _route(target: Target, model: str, tier: str | None, api: str = "") -> Route:
    """A route, its dialect decided by the alias's, else the target's setting (auto: by model)."""
    return Route(target, model, tier, upstream_api(api or target.api, model))


class Router:
    """Resolves requested model names to a chain of targets (primary first, then fallbacks)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.client_chooses = cfg.client_chooses_model
        tier_models = tuple((t, getattr(cfg, f"model_{t}")) for t in TIERS)
        self.primary = replace(build_target(cfg.provider, cfg, model=cfg.model), tier_models=tier_models)
        self.targets: dict[str, Target] = {self.primary.name: self.primary}
        self.tier_targets: dict[str, Target] = {}
        if cfg.multi_provider:
            for tier in TIERS:
                provider = getattr(cfg, f"{tier}_provider")
                if not provider:
                    continue
                up = tier.upper()
                target = build_target(
                    provider, cfg, name=f"{tier}:{provider}", model=getattr(cfg, f"{tier}_model"),
                    api_key=getattr(cfg, f"{tier}_api_key"), base_url=getattr(cfg, f"{tier}_base_url"),
                    key_var=f"CLASP_{up}_API_KEY or {KEY_ENV[provider]}",
                    url_var=f"CLASP_{up}_BASE_URL", api=getattr(cfg, f"{tier}_api"))
                self.tier_targets[tier] = target
                self.targets[target.name] = target
        self.fallbacks: list[Target] = []
        if cfg.fallback:
            self.fallbacks = self._fallback_chain(cfg)
            for t in self.fallbacks:
                self.targets[t.name] = t
        self.aliases = self._parse_aliases(cfg.model_aliases)
        for provider, _, _ in self.aliases.values():
            if provider:  # a missing key or URL stops clasp at start-up, not on the first request
                try:
                    self._target_for_provider(provider)
                except ConfigError as e:
                    raise ConfigError(f"CLASP_MODEL_ALIASES: {e}") from None

    def _fallback_chain(self, cfg: Config) -> list[Target]:
        if cfg.fallback_provider:
            return [build_target(cfg.fallback_provider, cfg, name=f"fallback:{cfg.fallback_provider}",
                                 model=cfg.fallback_model, api_key=cfg.fallback_api_key,
                                 base_url=cfg.fallback_base_url,
                                 key_var=f"CLASP_FALLBACK_API_KEY or {KEY_ENV[cfg.fallback_provider]}",
                                 url_var="CLASP_FALLBACK_BASE_URL", api=cfg.fallback_api)]
        chain = []
        for provider in PROVIDERS:
            if provider != cfg.provider and _has_credentials(provider, cfg):
                chain.append(build_target(provider, cfg, name=f"fallback:{provider}",
                                          model=cfg.fallback_model, api=cfg.fallback_api))
        return chain

    def _parse_aliases(self, text: str) -> dict[str, tuple[str | None, str, str]]:
        """requested=upstream, requested=provider:model or requested=provider@api:model
        (api: chat | responses | auto) -> (provider or None, model, api or "")."""
        out: dict[str, tuple[str | None, str, str]] = {}
        for item in filter(None, (p.strip() for p in text.split(";" if ";" in text else ","))):
            src, sep, dst = item.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise ConfigError(f"CLASP_MODEL_ALIASES: expected requested=upstream, got {item!r}")
            head, colon, model = dst.strip().partition(":")
            provider, at, api = head.partition("@")
            if colon and provider in PROVIDERS:
                if at and api not in APIS:
                    raise ConfigError(f"CLASP_MODEL_ALIASES: {item!r}: the API after '@' must be one of "
                                      f"{', '.join(APIS)}")
                out[src.strip()] = (provider, model, api)
            else:
                out[src.strip()] = (None, dst.strip(), "")
        return out

    @staticmethod
    def tier_of(model: str) -> str | None:
        low = model.lower()
        for tier in TIERS:
            if tier in low:
                return tier
        return None

    def resolve(self, requested: str) -> list[Route]:
        """Routes to try for a requested model, in order."""
        name = requested[:-4] if requested.endswith("[1m]") else requested
        tier = self.tier_of(name)
        primary: Route
        alias = self.aliases.get(name)
        provider, comma, explicit = name.partition(",")
        if alias is not None:
            target = self._target_for_provider(alias[0]) if alias[0] else self.primary
            primary = _route(target, alias[1], tier, alias[2])
        elif comma and provider in PROVIDERS and explicit:
            if not self.client_chooses:
                raise ConfigError(CHOICE_OFF)
            primary = _route(self._target_for_provider(provider), explicit, tier)
        elif tier and tier in self.tier_targets:
            target = self.tier_targets[tier]
            primary = _route(target, target.model_for(None, name), tier)
        elif tier or not self.client_chooses or name.lower().startswith(("claude", "anthropic")):
            # Without the client's choice any name gets the configured model, as claude-* do.
            primary = _route(self.primary, self.primary.model_for(tier, name), tier)
        else:
            # Users may set ANTHROPIC_MODEL=gpt-4o: other names pass through verbatim,
            # unless the deployment decides (Azure).
            model = self.primary.default_model if self.primary.provider == "azure" else name
            primary = _route(self.primary, model, tier)
        routes = [primary]
        for fb in self.fallbacks:
            if fb is not primary.target:
                routes.append(_route(fb, fb.model_for(tier, primary.model), tier))
        return routes

    def route_to(self, provider: str, model: str, api: str = "") -> Route:
        """A route to `model` on the configured target of `provider` (built on demand, raising
        ConfigError naming what is missing); `api` forces a dialect, else the target's decides."""
        return _route(self._target_for_provider(provider), model, None, api)

    def _target_for_provider(self, provider: str) -> Target:
        if self.primary.provider == provider:
            return self.primary
        for t in self.targets.values():
            if t.provider == provider:
                return t
        target = build_target(provider, self.cfg, name=provider)
        self.targets[target.name] = target
        return target


def may_use_tls(cfg: Config) -> bool:
    """True if a request could reach an https upstream: a configured target, or (when clients
    may choose) one that a "provider,model" request builds on demand from the credentials at hand."""
    urls = [t.url for t in Router(cfg).targets.values()]
    search_provider = cfg.web_search.partition(",")[0].partition("@")[0].strip()
    if search_provider in PROVIDERS:  # the -web-search target, built on demand
        try:
            urls.append(build_target(search_provider, cfg).url)
        except ConfigError:
            pass  # start-up reports it
    for provider in PROVIDERS if cfg.client_chooses_model else ():
        try:
            urls.append(build_target(provider, cfg).url)
        except ConfigError:
            pass  # not reachable: a request naming it gets a configuration error
    return any(urlsplit(u).scheme == "https" for u in urls)
