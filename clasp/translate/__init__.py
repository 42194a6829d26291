"""Pure translators between the Anthropic Messages API and OpenAI Chat Completions (no I/O)."""
