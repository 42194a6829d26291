"""clasp: run Claude Code (and any Anthropic Messages API client) on OpenAI-compatible providers."""

__version__ = "0.1.0"
