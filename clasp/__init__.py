"""clasp: run Claude Code (and any Anthropic Messages API client) on OpenAI-compatible providers."""

__version__ = "0.1.0"
# Sent to OpenRouter as HTTP-Referer (its app attribution) unless configured otherwise.
PROJECT_URL = "https://github.com/clasp-proxy/clasp"
