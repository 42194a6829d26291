"""``clasp statusline``: the one line Claude Code shows under its prompt during ``clasp claude``.

Claude Code runs the command from its ``statusLine`` setting after each turn (JSON about the
session on stdin, which this does not need) and shows the first line it prints. The launcher sets
that command to this module with the private proxy's port; the proxy's key comes in the environment
(CLASP_STATUSLINE_KEY), never on the command line. Only the standard library's http.client and json
are imported, and the proxy gets a short timeout: the line must come fast and never hang.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from typing import Any, Sequence

KEY_ENV = "CLASP_STATUSLINE_KEY"
TIMEOUT = 0.5  # seconds per request to the loopback proxy
PREFIX = "clasp"


def human(n: int) -> str:
    """1234 -> 1.2k, 1234567 -> 1.2M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def proxy_state(metrics: dict) -> str:
    """ok, or what is wrong: breaker open, requests queued, upstream errors and retries so far."""
    breakers = metrics.get("circuit_breakers") or {}
    states = set(breakers.values()) if isinstance(breakers, dict) else set()
    parts = []
    if "open" in states:
        parts.append("breaker open")
    elif "half_open" in states:
        parts.append("breaker half-open")
    queue = metrics.get("queue") or {}
    depth = queue.get("depth", 0) if isinstance(queue, dict) else 0
    if isinstance(depth, int) and depth > 0:
        parts.append(f"{depth} queued")
    errors = metrics.get("upstream_errors") or {}
    n_errors = sum(v for v in errors.values() if isinstance(v, int)) if isinstance(errors, dict) else 0
    if n_errors:
        parts.append(f"{n_errors} upstream error{'s' if n_errors != 1 else ''}")
    retries = metrics.get("retries") or 0
    if isinstance(retries, int) and retries:
        parts.append(f"{retries} retr{'ies' if retries != 1 else 'y'}")
    return ", ".join(parts) or "ok"


def render(metrics: dict, info: dict | None = None) -> str:
    """The status line from a /metrics snapshot (and the proxy's / answer before any request):
    the upstream serving the session, tokens so far, the proxy's state. clasp knows no prices,
    so no cost is shown."""
    rows = []
    tokens = metrics.get("tokens") or {}
    for provider, models in (tokens.items() if isinstance(tokens, dict) else ()):
        for model, s in (models.items() if isinstance(models, dict) else ()):
            if isinstance(s, dict):  # the upstream's model name, else the requested one
                rows.append((int(s.get("requests") or 0), str(provider), str(s.get("upstream_model") or model),
                             int(s.get("input_tokens") or 0), int(s.get("output_tokens") or 0)))
    if rows:
        _, provider, model, _, _ = max(rows, key=lambda r: (r[0], r[4]))
        serving = f"{provider} {model}" + (f" (+{len(rows) - 1} more)" if len(rows) > 1 else "")
    elif info:
        serving = f"{info.get('provider') or '?'} {info.get('model') or '(model as requested)'}"
    else:
        serving = "no requests yet"
    used = f"{human(sum(r[3] for r in rows))} in / {human(sum(r[4] for r in rows))} out"
    return f"{PREFIX} · {serving} · {used} · {proxy_state(metrics)}"


def _get(conn: http.client.HTTPConnection, path: str, key: str) -> tuple[int, Any]:
    conn.request("GET", path, headers={"x-api-key": key})
    resp = conn.getresponse()
    body = resp.read(1 << 20)
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, None


def fetch_line(port: int, key: str, timeout: float = TIMEOUT) -> str:
    """Ask the proxy on 127.0.0.1:port and render its line; any failure is a line too."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        status, metrics = _get(conn, "/metrics", key)
        if status == 401:
            return f"{PREFIX} · the proxy refused the status line's key"
        if status != 200 or not isinstance(metrics, dict):
            return f"{PREFIX} · proxy answered {status}"
        info = None
        if not metrics.get("tokens"):
            status, info = _get(conn, "/", key)
            info = info if status == 200 and isinstance(info, dict) else None
        return render(metrics, info)
    except (OSError, http.client.HTTPException):
        return f"{PREFIX} · proxy unreachable"
    finally:
        conn.close()


def main(args: Sequence[str], env: dict | None = None) -> int:
    """``clasp statusline --port P``: print the line; exit 0 even when the proxy is gone (Claude Code
    would show nothing otherwise)."""
    env = os.environ if env is None else env
    args = list(args)
    port = None
    if len(args) == 2 and args[0] == "--port" and args[1].isascii() and args[1].isdigit():
        port = int(args[1])
    if port is None or not 0 < port <= 65535:
        print(f"{PREFIX} · statusline: usage: clasp statusline --port PORT")
        return 2
    try:
        line = fetch_line(port, env.get(KEY_ENV, ""))
    except Exception as e:  # never a traceback in the user's status line
        line = f"{PREFIX} · statusline error: {type(e).__name__}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 0
