"""Command line: ``python -m clasp [flags]``, ``clasp claude ...``, ``clasp healthcheck``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from types import ModuleType
from typing import Sequence

from clasp import __version__
from clasp.config import Config, ConfigError, load_config, usage_text
from clasp.routing.providers import may_use_tls

log = logging.getLogger("clasp")


def version_line() -> str:
    import platform
    return f"clasp {__version__} (python {platform.python_version()})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "claude":
        from clasp.launcher import run_claude
        return run_claude(args[1:])
    if args and args[0] == "healthcheck":
        return healthcheck(args[1:])
    if any(a in ("-h", "-help", "--help") for a in args):
        print(usage_text())
        return 0
    if any(a in ("-v", "-version", "--version") for a in args):
        print(version_line())
        return 0
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


def import_asyncio(tls: bool) -> ModuleType:
    """Import asyncio (and hashlib, hmac), without OpenSSL when no upstream this config can
    reach speaks TLS.

    asyncio imports ssl and hashlib imports _hashlib when they can, which maps libssl and
    libcrypto into the process (~5 MiB of RSS) even if no TLS connection is ever made. Both
    modules support Pythons built without OpenSSL (asyncio without TLS, hashlib and hmac with
    CPython's builtin hashes), so hiding the OpenSSL bindings while they load is safe for a proxy
    that only talks plain HTTP (a local Ollama, vLLM, llama.cpp). ssl stays importable afterwards.
    """
    hidden = ("ssl", "_hashlib")
    if tls or any(name in sys.modules for name in ("asyncio", "hashlib", "hmac", *hidden)):
        import asyncio
        return asyncio
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes "import NAME" raise ImportError
    try:
        import asyncio
        import hashlib  # noqa: F401  (first import decides: builtin SHA-256 from here on)
        import hmac  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]
    return asyncio


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_level(cfg: Config) -> int:
    return logging.DEBUG if cfg.debug_log_requests or cfg.debug_log_responses else logging.INFO


def setup_logging(cfg: Config) -> None:
    logging.basicConfig(level=log_level(cfg), stream=sys.stderr, format=LOG_FORMAT)


async def serve(cfg: Config, *, ready: "asyncio.Future | None" = None, stop: "asyncio.Event | None" = None,
                sock: socket.socket | None = None, log_stream=None) -> int:
    """Run the proxy until SIGINT/SIGTERM (or `stop` is set); returns the exit code."""
    import asyncio

    from clasp.app import App
    from clasp.server.http import HTTPServer, ServerLimits

    app = App(cfg, log_stream=log_stream)
    server = HTTPServer(app.handle, ServerLimits(cfg.max_body_size, cfg.header_timeout, cfg.idle_timeout,
                                                   cfg.write_timeout))
    try:
        addresses = await server.start(cfg.host, cfg.port, reuse_port=cfg.workers > 1, sock=sock)
    except BaseException:
        await app.close()
        raise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (embedded use, tests): the caller sets `stop`
    app.start()
    host, port = addresses[0]
    log.info("clasp %s listening on http://%s:%s -> %s (%s)", __version__, host, port,
             app.router.primary.name, app.router.primary.default_model or "model from request")
    if ready is not None and not ready.done():
        ready.set_result(port)
    await stop.wait()
    log.info("shutting down: waiting up to %ss for in-flight requests", cfg.shutdown_timeout)
    await server.shutdown(cfg.shutdown_timeout)
    await app.close()
    return 0


def run_workers(cfg: Config) -> int:
    """N processes accept on one port with SO_REUSEPORT (Linux, BSD); the parent supervises."""
    import asyncio

    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        log.warning("this platform has no SO_REUSEPORT/fork: running one worker")
        return asyncio.run(serve(cfg))
    children: list[int] = []
    for _ in range(cfg.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = asyncio.run(serve(cfg))
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum, _frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = 0
    for child in children:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        rc = os.waitstatus_to_exitcode(status)
        code = code or (rc if rc > 0 else 0)
    return code


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
