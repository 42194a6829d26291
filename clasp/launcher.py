"""``clasp claude [args...]``: run Claude Code through a private, in-process proxy.

The proxy runs in a background thread of this process on a free loopback port, so nothing has to
re-run clasp (same behaviour from ``python -m clasp`` and from the zipapp), and it lives exactly as
long as the ``claude`` child. Configuration comes from clasp's flags before the word ``claude``
(``python -m clasp -provider custom claude -p hi``), the environment and the config file, with the
server's precedence; every argument after ``claude`` belongs to Claude Code.

Unless ``-no-statusline``, Claude Code gets ``--settings`` with a ``statusLine`` that runs
``clasp statusline`` against the private proxy (clasp.statusline); the user's own settings files are
never touched, and a ``--settings`` the user passes wins (no status line is added then).

The terminal belongs to Claude Code: the proxy's access log and log records go to
``$XDG_CACHE_HOME/clasp/claude-proxy.log`` (default ``~/.cache/clasp/claude-proxy.log``), never to
the terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Sequence, TextIO

from clasp.config import Config, ConfigError, load_config
from clasp.server.run import LOG_FORMAT, log_level, serve
from clasp.statusline import KEY_ENV as STATUSLINE_KEY_ENV

INSTALL_HINT = "npm install -g @anthropic-ai/claude-code"
# The private proxy always requires a key (the user's CLASP_AUTH_API_KEY, else a random one per
# session) so that nothing else on the machine, a web page included, can use it. Claude Code asks
# once to approve a custom ANTHROPIC_API_KEY and remembers the answer by the key's last 20
# characters: the random part comes first and this fixed tail last, so it asks once, not every run.
SESSION_KEY_TAIL = "-clasp-session-proxy"
LOG_NAME = "claude-proxy.log"
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
# Settings in the child's environment that would send Claude Code somewhere other than the proxy
# (a bearer token wins over ANTHROPIC_API_KEY; Bedrock/Vertex ignore ANTHROPIC_BASE_URL).
_OVERRIDING_ENV = ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX")
_FORWARDED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_START_TIMEOUT = 30.0


def log_path(env: Mapping[str, str]) -> Path:
    """Where launcher mode writes the proxy's logs."""
    cache = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".cache")
    return Path(cache) / "clasp" / LOG_NAME


def session_key() -> str:
    """A new random key for one run's private proxy."""
    return secrets.token_urlsafe(32) + SESSION_KEY_TAIL


def private_config(cfg: Config) -> Config:
    """The user's config as the private proxy runs it: loopback, one process, a short drain (the
    only client is the child, gone by then), and a key always required."""
    private = dataclasses.replace(cfg, host="127.0.0.1", port=0, workers=1,
                                  shutdown_timeout=min(cfg.shutdown_timeout, 2.0))
    # The session key below is not the user's choice of auth: "auto" is decided for the loopback
    # proxy the user configured, which serves one developer.
    private = dataclasses.replace(private, client_model_choice="on" if private.client_chooses_model else "off")
    if not private.auth:
        private = dataclasses.replace(private, auth=True, auth_api_key=session_key())
    return private


def child_env(env: Mapping[str, str], port: int, cfg: Config) -> dict[str, str]:
    """The environment for `claude`: pointed at the proxy, with the proxy's key."""
    out = {k: v for k, v in env.items() if k not in _OVERRIDING_ENV}
    out["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    out["ANTHROPIC_API_KEY"] = cfg.auth_api_key
    if cfg.statusline:
        out[STATUSLINE_KEY_ENV] = cfg.auth_api_key  # for the status-line command: never on its command line
    else:
        out.pop(STATUSLINE_KEY_ENV, None)
    return out


def clasp_location() -> str:
    """What to put on sys.path to import this clasp: the zipapp file, or the package's parent
    directory (a checkout or site-packages)."""
    import clasp
    return str(Path(clasp.__file__).resolve().parent.parent)


def statusline_command(port: int) -> str:
    """The shell command Claude Code runs for the status line: this Python and this clasp (from
    `python -m clasp`, an installed package or the zipapp alike), importing only clasp.statusline."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from clasp.statusline import main; "
            "sys.exit(main(sys.argv[2:]))")
    return shlex.join([sys.executable, "-c", code, clasp_location(), "--port", str(port)])


def user_gives_settings(args: list[str]) -> bool:
    return any(a == "--settings" or a.startswith("--settings=") for a in args)


def claude_args(args: list[str], port: int, cfg: Config) -> list[str]:
    """Claude Code's arguments: the user's, after `--settings` with the status line (unless it is off
    or the user passes their own --settings, which is left alone)."""
    if not cfg.statusline or user_gives_settings(args):
        return list(args)
    settings = {"statusLine": {"type": "command", "command": statusline_command(port), "padding": 0}}
    return ["--settings", json.dumps(settings), *args]


def exit_code(returncode: int) -> int:
    """Popen's returncode as a shell reports it: -N (killed by signal N) becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class ProxyThread:
    """clasp.server.run.serve() in its own event loop on a daemon thread."""

    def __init__(self, cfg: Config, log_stream: TextIO | None) -> None:
        self.cfg = cfg
        self.log_stream = log_stream
        self.port: int | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="clasp-proxy", daemon=True)

    def start(self, timeout: float = _START_TIMEOUT) -> int:
        """Start serving; returns the port, or raises what stopped the proxy from starting."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"the proxy did not start within {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        assert self.port is not None
        return self.port

    def stop(self, timeout: float) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already finished
        # A daemon thread: if shutdown overruns, process exit ends it.
        self._thread.join(timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to the main thread through start()
            self.error = e
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        ready = asyncio.get_running_loop().create_future()

        def on_ready(fut: asyncio.Future) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.port = fut.result()
                self._started.set()

        ready.add_done_callback(on_ready)
        await serve(self.cfg, ready=ready, stop=self._stop, log_stream=self.log_stream)


def _open_log(path: Path) -> TextIO | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))  # keep one old file, bounded disk use
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError:
        return None


def _route_logging(stream: TextIO | None, cfg: Config) -> None:
    # Log records (start-up line, upstream warnings, asyncio's own complaints) must not reach
    # the terminal either.
    if stream is None:
        handler: logging.Handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("clasp", "asyncio"):
        logger = logging.getLogger(name)
        logger.propagate = False
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
    logging.getLogger("clasp").setLevel(log_level(cfg))


def _terminal_sends_sigint() -> bool:
    # Ctrl-C on a terminal signals the whole foreground process group, `claude` included;
    # forwarding it as well would make one keypress count twice (Claude Code exits on a double
    # Ctrl-C). SIGINT is forwarded when it cannot have come from the terminal.
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (AttributeError, ValueError, OSError):
            continue
    return False


def run_claude(args: list[str], flags: Sequence[str] = ()) -> int:
    """Run `claude args...` against a private proxy configured by clasp `flags` (then environment,
    then config file); returns claude's exit code (128+N if killed)."""
    try:
        cfg, _ = load_config(flags, os.environ)
    except ConfigError as e:
        print(f"clasp: error: {e}", file=sys.stderr)
        return 2
    claude = shutil.which("claude")
    if claude is None:
        print("clasp: error: the `claude` command (Claude Code) is not on PATH.\n"
              f"Install it with:  {INSTALL_HINT}", file=sys.stderr)
        return 127
    cfg = private_config(cfg)
    path = log_path(os.environ)
    log_stream = _open_log(path)
    if log_stream is None and cfg.access_log:
        cfg = dataclasses.replace(cfg, access_log=False)  # unwritable log: drop it, keep the terminal clean
    _route_logging(log_stream, cfg)
    sink = log_stream or open(os.devnull, "w", encoding="utf-8")  # debug dumps, if any, go nowhere
    proxy = ProxyThread(cfg, sink)
    try:
        try:
            port = proxy.start()
        except ConfigError as e:
            print(f"clasp: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"clasp: error: cannot start the proxy: {e.strerror or e}", file=sys.stderr)
            return 1
        except Exception as e:
            print(f"clasp: error: the proxy failed to start: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # Ctrl-C before claude started
            return 128 + signal.SIGINT
        return _run_child([claude, *claude_args(args, port, cfg)], child_env(os.environ, port, cfg))
    finally:
        proxy.stop(cfg.shutdown_timeout + 1)
        sink.close()


def _run_child(argv: list[str], env: dict[str, str]) -> int:
    child: subprocess.Popen | None = None
    pending: list[int] = []
    skip_sigint = _terminal_sends_sigint()

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and skip_sigint:
            return  # the terminal already delivered it to the child
        if child is None:
            pending.append(signum)
            return
        try:
            child.send_signal(signum)
        except (ProcessLookupError, OSError):
            pass  # already exited

    previous = {}
    for sig in _FORWARDED:
        try:
            previous[sig] = signal.signal(sig, forward)
        except (ValueError, OSError):
            pass  # not the main thread: signals stay with their current handlers
    try:
        try:
            # stdin/stdout/stderr are inherited: Claude Code gets the real terminal.
            child = subprocess.Popen(argv, env=env)
        except OSError as e:
            print(f"clasp: error: cannot run {argv[0]}: {e.strerror or e}", file=sys.stderr)
            return 126
        for sig in pending:
            child.send_signal(sig)
        return exit_code(child.wait())
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(sig, handler)
