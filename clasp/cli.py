"""Command line: ``python -m clasp [flags]``, ``clasp [flags] claude ...``, ``clasp doctor``,
``clasp healthcheck``."""

from __future__ import annotations

import os
import sys
from typing import Sequence

from clasp import __version__
from clasp.config import ConfigError, load_config, split_command, usage_text
from clasp.routing.providers import may_use_tls
from clasp.server.run import import_asyncio, run_workers, serve, setup_logging


def version_line() -> str:
    import platform
    return f"clasp {__version__} (python {platform.python_version()})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "healthcheck":
        return healthcheck(args[1:])
    if args and args[0] == "doctor":
        return doctor(args[1:])
    if args and args[0] == "statusline":  # run by Claude Code (see clasp.statusline)
        from clasp.statusline import main as statusline
        return statusline(args[1:])
    try:
        args, command, rest = split_command(args)
    except ConfigError as e:
        print(f"clasp: error: {e}", file=sys.stderr)
        return 2
    # clasp's own flags only: after the word claude, -help and -version are Claude Code's
    if any(a in ("-h", "-help", "--help") for a in args):
        print(usage_text())
        return 0
    if any(a in ("-v", "-version", "--version") for a in args):
        print(version_line())
        return 0
    if command == "claude":
        from clasp.launcher import run_claude
        return run_claude(rest, flags=args)
    try:
        cfg, actions = load_config(args)
    except ConfigError as e:
        print(f"clasp: error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    try:
        asyncio = import_asyncio(tls=may_use_tls(cfg))
        if cfg.workers > 1:
            return run_workers(cfg)
        return asyncio.run(serve(cfg))
    except ConfigError as e:
        print(f"clasp: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"clasp: error: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def healthcheck(args: Sequence[str]) -> int:
    """Exit 0 when GET /health answers 200: the container HEALTHCHECK (no shell or curl needed)."""
    import http.client

    host = os.environ.get("CLASP_HEALTHCHECK_HOST", "127.0.0.1")
    raw = args[0] if args else None
    if raw is None:  # the same port the proxy uses: flags are not given here, but env and config file are
        try:
            port = load_config([], os.environ)[0].port
        except ConfigError:
            raw = os.environ.get("CLASP_PORT") or "8080"
    if raw is not None:
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and int(raw) <= 65535):
            print(f"clasp healthcheck: invalid port {raw[:20]!r}", file=sys.stderr)
            return 1  # unhealthy (Docker reserves exit code 2)
        port = int(raw)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/health")
        status = conn.getresponse().status
        conn.close()
    except OSError as e:
        print(f"clasp healthcheck: {host}:{port} unreachable: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"clasp healthcheck: /health answered {status}", file=sys.stderr)
        return 1
    return 0


DOCTOR_USAGE = """usage: python -m clasp doctor [--json] [clasp flags]

Checks what this configuration will do, target by target (each Claude tier, fallbacks):
network (DNS, TCP, TLS, proxy), the key (GET /models), the model (a 1-token completion,
streaming, a forced tool call, reasoning, context window), the server kind, and where
Claude Code's WebSearch goes. Flags,
environment and config file are read as the proxy reads them. Prints a verdict per line
and the fix for each failure; exits 0 if the primary path works, 1 if not, 2 for a
configuration error. --json prints the same report as JSON."""


def doctor(args: Sequence[str]) -> int:
    """`python -m clasp doctor [--json] [clasp flags]`: check the configured upstreams."""
    import asyncio

    from clasp.ops.doctor import Doctor, Report, render

    if any(a in ("-h", "-help", "--help") for a in args):
        print(DOCTOR_USAGE)
        return 0
    as_json = any(a in ("--json", "-json") for a in args)
    args = [a for a in args if a not in ("--json", "-json")]
    try:
        cfg, _ = load_config(args)
        checker = Doctor(cfg, os.environ)
    except (ConfigError, ValueError) as e:
        report = Report(config_error=str(e))
        print(render(report, [], as_json), end="", file=sys.stdout if as_json else sys.stderr)
        return report.exit_code
    report = asyncio.run(checker.run())
    print(render(report, cfg.secrets(), as_json), end="")
    return report.exit_code
