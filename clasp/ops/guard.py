"""Keeps web pages from driving a local proxy (README "Security").

Any page open in the operator's browser can send requests to http://127.0.0.1:8080. Without auth
(the default for a proxy on loopback) it would be billed to the operator's upstream key. Three
checks, made before auth and before the body is parsed:

* Host: when the proxy listens on loopback, the Host header must be a loopback name or address
  (or listed in -allowed-hosts). DNS rebinding points a page's own host name at 127.0.0.1, after
  which the browser treats the proxy as that page's origin; its requests still carry that name.
* Origin: browsers send it on every cross-origin POST and on fetch(); Claude Code and the SDKs
  do not. A request carrying one is refused unless the origin is in -allowed-origins.
* Content-Type on POST: a page may send a text/plain or form POST cross-origin without asking
  first; an application/json one needs a CORS preflight, which clasp never grants.
"""

from __future__ import annotations

from typing import Mapping

from clasp.config import Config, is_loopback_host
from clasp.translate.errors import ProxyError

__all__ = ["RequestGuard"]

_NO_RETRY = {"x-should-retry": "false"}
_SHOWN = 100  # characters of a rejected header value quoted in the error message
_ACCEPTED_HOSTS_KEPT = 64  # Host values already accepted, so the usual one is one set lookup


def _split_list(text: str) -> frozenset[str]:
    return frozenset(item.strip().lower() for item in text.split(",") if item.strip())


def _host_name(value: str) -> str:
    """The host part of a Host header value, lower case, without port or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        end = value.find("]")
        return value[:end + 1] if end > 0 else value
    name, colon, _port = value.rpartition(":")
    if colon and ":" not in name:  # host:port (a bare IPv6 address has several colons)
        value = name
    return value.rstrip(".")


class RequestGuard:
    """check() returns the ProxyError to answer, or None to let the request through."""

    __slots__ = ("check_host", "allowed_hosts", "any_origin", "allowed_origins", "_accepted_hosts")

    def __init__(self, bind_host: str, allowed_hosts: str = "", allowed_origins: str = "") -> None:
        hosts = _split_list(allowed_hosts)
        # Bound to another address (0.0.0.0, a LAN address) the names clients use are unknown:
        # no Host check there (auth protects such a proxy).
        self.check_host = is_loopback_host(bind_host) and "*" not in hosts
        self.allowed_hosts = frozenset(h.rstrip(".") for h in hosts)
        origins = _split_list(allowed_origins)
        self.any_origin = "*" in origins
        self.allowed_origins = frozenset(o.rstrip("/") for o in origins)
        self._accepted_hosts: set[str] = set()

    @classmethod
    def from_config(cls, cfg: Config) -> "RequestGuard":
        return cls(cfg.host, cfg.allowed_hosts, cfg.allowed_origins)

    def check(self, method: str, headers: Mapping[str, str]) -> ProxyError | None:
        """headers: lower-case names (the server's Request.headers)."""
        if self.check_host:
            host = headers.get("host")
            # No Host at all (HTTP/1.0) is not a browser: browsers always send one.
            if host and host not in self._accepted_hosts:
                if not self._host_allowed(host):
                    return ProxyError(
                        403, "permission_error",
                        f"Host {host[:_SHOWN]!r} is not a loopback name: this proxy listens on loopback and "
                        "answers localhost, 127.0.0.1 and [::1] only (a web page may be reaching it through "
                        "DNS rebinding); allow more names with -allowed-hosts / CLASP_ALLOWED_HOSTS",
                        dict(_NO_RETRY), False)
                if len(self._accepted_hosts) < _ACCEPTED_HOSTS_KEPT:
                    self._accepted_hosts.add(host)
        origin = headers.get("origin")
        if origin is not None and not self.any_origin and origin.strip().lower().rstrip("/") not in self.allowed_origins:
            return ProxyError(
                403, "permission_error",
                f"requests from the browser origin {origin[:_SHOWN]!r} are refused (a web page must not "
                "drive the proxy); allow it with -allowed-origins / CLASP_ALLOWED_ORIGINS",
                dict(_NO_RETRY), False)
        if method == "POST":
            ctype = headers.get("content-type")
            if ctype is None or ctype.partition(";")[0].strip().lower() != "application/json":
                got = "no content-type" if ctype is None else f"content-type {ctype[:_SHOWN]!r}"
                return ProxyError(415, "invalid_request_error",
                                  f"request bodies must be JSON: send content-type: application/json "
                                  f"(got {got})", dict(_NO_RETRY), False)
        return None

    def _host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if is_loopback_host(name):
            return True
        allowed = self.allowed_hosts
        return name in allowed or host.strip().lower() in allowed
