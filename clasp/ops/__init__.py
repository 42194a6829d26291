"""Operational building blocks: proxy auth, rate limiting, response cache, metrics, logs.

Each module is self-contained and I/O-free apart from the log streams; time-dependent classes take
an injectable ``clock`` (and ``wall`` where a wall-clock timestamp is produced). ``clasp.app`` wires
them into the request pipeline. Import the modules directly: nothing is imported here, so the
disabled features cost no start-up time or memory.
"""
