"""Resilience building blocks (retry policy, circuit breaker, wait queue).

Each is pure state + injected time (``clock``/``sleep``); the request pipeline in
``clasp.app`` decides what counts as a failure and wires them together.
"""

from __future__ import annotations

from .breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from .queue import QueueFull, QueueTimeout, RequestQueue
from .retry import RetryPolicy, header_value

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
    "QueueFull",
    "QueueTimeout",
    "RequestQueue",
    "RetryPolicy",
    "header_value",
]
