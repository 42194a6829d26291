#!/usr/bin/env python3
"""Start claude-code-router (CCR) as a bench/run.py peer: write its config for the fake upstream, then exec it.

    python3 bench/peers/ccr.py --port {port} --upstream {upstream} --dir {tmp} \\
        -- node /tmp/peers/ccr/node_modules/@musistudio/claude-code-router/dist/cli.js start

CCR reads ~/.claude-code-router/config.json (and keeps its pid file there), so this writes
DIR/home/.claude-code-router/config.json and execs the command (same pid: the bench measures
node itself) with HOME=DIR/home. `cli.js start` serves in the foreground. The config: HOST
127.0.0.1, PORT, LOG false (no log files), one provider "bench" at UPSTREAM/chat/completions
with MODEL, and the default route to it (so every Claude model name goes there).
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: ccr.py --port P --upstream URL --dir DIR [--model M] -- CCR-COMMAND...")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--upstream", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:PORT/v1")
    ap.add_argument("--dir", required=True, help="directory for the throwaway HOME")
    ap.add_argument("--model", default="gpt-test")
    args = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1:]
    if not cmd:
        sys.exit("ccr.py: no command after --")
    home = Path(args.dir) / "home"
    config = {
        "HOST": "127.0.0.1", "PORT": args.port, "LOG": False, "LOG_LEVEL": "fatal",
        "NON_INTERACTIVE_MODE": True,
        "Providers": [{"name": "bench", "api_base_url": args.upstream.rstrip("/") + "/chat/completions",
                       "api_key": "bench", "models": [args.model]}],
        "Router": {"default": f"bench,{args.model}"},
    }
    path = home / ".claude-code-router" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))
    os.execvpe(cmd[0], cmd, dict(os.environ, HOME=str(home)))


if __name__ == "__main__":
    main()
