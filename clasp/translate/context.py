"""What the response translators need to know about the request they answer.

Its own module so that request.py (which builds it) and errors.py / response.py / stream.py
(which read it) depend on it, not on each other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestContext:
    requested_model: str          # echoed back in responses
    upstream_model: str
    stream: bool
    name_map: dict[str, str]      # upstream (shortened) tool name -> original name
    stop_sequences: list[str]     # as sent upstream (empty when not sent)
    show_thinking: bool           # emit thinking blocks (client asked, or flags)
    estimated_input_tokens: int
    max_tokens: int               # as sent upstream (after clamping); 0 when no limit was sent
