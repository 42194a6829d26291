"""Upstream HTTP/1.1 client (see client.py)."""
from __future__ import annotations

from .client import (
    ConnectError,
    ProtocolError,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = [
    "ConnectError",
    "ProtocolError",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
]
