#!/usr/bin/env python3
"""Start LiteLLM's proxy as a bench/run.py peer: write its config for the fake upstream, then exec it.

    python3 bench/peers/litellm.py --port {port} --upstream {upstream} --dir {tmp} \\
        -- /tmp/peers/litellm-venv/bin/litellm [more litellm options]

Writes DIR/config.yaml (JSON, which YAML accepts) and execs the command (same pid, so the bench
measures LiteLLM itself) with ``--config DIR/config.yaml --host 127.0.0.1 --port PORT``. The config
maps every requested model ("*": Claude Code asks for claude-*) to ``openai/MODEL`` at the
upstream; ``use_chat_completions_url_for_anthropic_messages`` keeps /v1/messages on
chat/completions (LiteLLM otherwise bridges openai/* models to the Responses API, which the
fake upstream, like most OpenAI-compatible providers, does not speak); no master key (listening
on 127.0.0.1 only). Logging: LITELLM_LOG=ERROR; the model cost map is read locally, not fetched.
REPEATED_STREAMING_CHUNK_LIMIT is raised: LiteLLM aborts a stream after 100 identical content
deltas in a row (an infinite-loop guard), and the fake upstream sends the same " token" delta
every time (the comparison itself still runs). Standard library only.
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
        sys.exit("usage: litellm.py --port P --upstream URL --dir DIR [--model M] -- LITELLM-COMMAND...")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", required=True)
    ap.add_argument("--upstream", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:PORT/v1")
    ap.add_argument("--dir", required=True, help="directory for the generated config")
    ap.add_argument("--model", default="gpt-test")
    args = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1:]
    if not cmd:
        sys.exit("litellm.py: no command after --")
    config = {
        "model_list": [{"model_name": "*",
                        "litellm_params": {"model": f"openai/{args.model}", "api_base": args.upstream,
                                           "api_key": "bench"}}],
        "litellm_settings": {"drop_params": True, "set_verbose": False,
                             "use_chat_completions_url_for_anthropic_messages": True},
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    path = Path(args.dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True",
               REPEATED_STREAMING_CHUNK_LIMIT="1000000000")
    os.execvpe(cmd[0], [*cmd, "--config", str(path), "--host", "127.0.0.1", "--port", args.port], env)


if __name__ == "__main__":
    main()
