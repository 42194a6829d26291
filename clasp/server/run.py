"""Running the proxy: the event loop, signals, graceful shutdown, worker processes, logging.

Used by the command line (clasp.cli) and by the launcher (clasp.launcher): both import it, it
imports neither.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from types import ModuleType

from clasp import __version__
from clasp.config import Config

log = logging.getLogger("clasp")


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


# Descriptors kept back from client connections: listening sockets, stdio, log files, the event loop.
_FD_RESERVE = 64
# The automatic connection limit never exceeds this, however high the open-file limit.
_MAX_AUTO_CONNECTIONS = 4096


def raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one: the soft limit now in effect,
    None where there is none or it is unknown (no `resource` module: not POSIX)."""
    try:
        import resource
    except ImportError:
        return None
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # macOS refuses more than OPEN_MAX (10240) even when the hard limit is "unlimited", and Linux
    # more than fs.nr_open: try smaller values when the hard limit itself is refused.
    for want in (hard, 1 << 20, 10240):
        if soft == inf or (want != inf and want <= soft) or (hard != inf and want > hard):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            continue
        soft = want
        break
    return None if soft == inf else soft


def connection_limit(cfg: Config, open_files: int | None, upstream_origins: int) -> int:
    """cfg.max_connections, or (when 0) what the open-file limit allows: a busy client connection
    also holds an upstream socket, and each upstream origin keeps up to pool_size idle ones."""
    budget = None
    if open_files is not None:
        budget = (open_files - _FD_RESERVE - cfg.pool_size * upstream_origins) // 2
    if cfg.max_connections:
        if budget is not None and cfg.max_connections > budget:
            log.warning("max connections %d exceeds what the open-file limit (%d) allows (about %d): "
                        "connections may fail with 'too many open files'", cfg.max_connections, open_files,
                        max(budget, 0))
        return cfg.max_connections
    if budget is None:
        return _MAX_AUTO_CONNECTIONS
    if budget < 64:
        log.warning("the open-file limit (ulimit -n) is %d: accepting at most %d client connections",
                    open_files, max(budget, 1))
    return max(1, min(_MAX_AUTO_CONNECTIONS, budget))


def reloads_on_sighup(cfg: Config) -> bool:
    """SIGHUP re-reads the keys file when there is one; otherwise it keeps its default meaning
    (the terminal is gone: stop)."""
    return bool(cfg.keys_file) and hasattr(signal, "SIGHUP")


def ignore_sighup_until_ready(cfg: Config) -> None:
    """With a keys file, a SIGHUP (a reload) arriving before the handler is installed must not
    kill the process: ignore it until then (main thread only; embedded use has no signals)."""
    if reloads_on_sighup(cfg):
        try:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        except ValueError:
            pass


async def serve(cfg: Config, *, ready: "asyncio.Future | None" = None, stop: "asyncio.Event | None" = None,
                sock: socket.socket | None = None, log_stream=None, group: socket.socket | None = None) -> int:
    """Run the proxy until SIGINT/SIGTERM (or `stop` is set); returns the exit code. ``group``: a
    worker's end of the socketpair to the parent of a ``-workers N`` group."""
    import asyncio

    ignore_sighup_until_ready(cfg)
    from clasp.app import App
    from clasp.server.http import HTTPServer, ServerLimits

    open_files = raise_open_file_limit()
    link = None
    if group is not None:
        from clasp.store.group import GroupLink
        link = await GroupLink.connect(group)
    app = App(cfg, log_stream=log_stream, group=link)
    max_connections = connection_limit(cfg, open_files, len(app.router.targets))
    server = HTTPServer(app.handle, ServerLimits(cfg.max_body_size, cfg.header_timeout, cfg.idle_timeout,
                                                   cfg.write_timeout, max_connections))
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
    if reloads_on_sighup(cfg):
        try:
            loop.add_signal_handler(signal.SIGHUP, app.reload_keys)  # keys file: reload now
        except (NotImplementedError, RuntimeError, ValueError):
            pass
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
    """N processes accept on one port with SO_REUSEPORT (Linux, BSD); the parent supervises them
    and holds the group's shared state (rate limits, counters, cache; clasp.store.hub), which each
    worker reaches over a socketpair of its own, made before fork. Metrics scraped from any worker
    are the group's totals."""
    import asyncio

    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        log.warning("this platform has no SO_REUSEPORT/fork: running one worker")
        return asyncio.run(serve(cfg))
    ignore_sighup_until_ready(cfg)  # the parent's and each worker's handler come later
    pairs = [socket.socketpair() for _ in range(cfg.workers)]
    children: dict[int, socket.socket] = {}
    for i in range(cfg.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for j, (parent_end, worker_end) in enumerate(pairs):
                    parent_end.close()
                    if j != i:
                        worker_end.close()
                code = asyncio.run(serve(cfg, group=pairs[i][1]))
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(code)
        children[pid] = pairs[i][0]
    for _, worker_end in pairs:
        worker_end.close()
    return asyncio.run(_supervise(cfg, children))


async def _supervise(cfg: Config, children: dict[int, socket.socket]) -> int:
    """The parent: serve the workers' store and metrics requests, forward SIGINT/SIGTERM to them,
    and return once all have exited (the first positive exit code of a worker, else 0). A worker
    that dies leaves the others serving."""
    import asyncio
    import threading

    from clasp.store.hub import Hub
    from clasp.store.local import LocalStore

    loop = asyncio.get_running_loop()
    hub = Hub(LocalStore(cache_max_size=cfg.cache_max_size))
    for pid, sock in children.items():
        await hub.add_worker(pid, sock)
    running = set(children)
    all_exited = asyncio.Event()
    stopping = False
    code = 0

    def forward(signum: int) -> None:
        nonlocal stopping
        stopping = stopping or signum != getattr(signal, "SIGHUP", None)
        for child in list(running):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    # SIGHUP: each worker reloads its keys file
    forwarded = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if reloads_on_sighup(cfg) else ()))
    for sig in forwarded:
        loop.add_signal_handler(sig, forward, sig)

    def exited(pid: int, rc: int) -> None:
        nonlocal code
        running.discard(pid)
        hub.worker_exited(pid)
        code = code or (rc if rc > 0 else 0)
        if not stopping and running:
            log.warning("worker %d exited (%s); %d still serving", pid,
                        f"signal {-rc}" if rc < 0 else f"exit code {rc}", len(running))
        if not running:
            all_exited.set()

    def reap() -> None:  # waitpid blocks: a thread, reporting each exit to the loop
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                return
            if pid in children:
                loop.call_soon_threadsafe(exited, pid, os.waitstatus_to_exitcode(status))

    threading.Thread(target=reap, name="clasp-reaper", daemon=True).start()
    try:
        await all_exited.wait()
    finally:
        for sig in forwarded:
            loop.remove_signal_handler(sig)
        await hub.close()
    return code
