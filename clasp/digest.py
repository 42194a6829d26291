"""SHA-256 of short strings (tool names and ids, keys, user ids) without loading OpenSSL.

``import hashlib`` (and ``hmac``) maps libcrypto into the process: ~4 MiB of resident memory
that a proxy talking plain HTTP to a local model never needs. CPython's builtin SHA-256 is
slower per byte, which does not matter for inputs this short; hashlib stays the fallback for
builds without it, and for bulk hashing (the response cache's keys).
"""

from __future__ import annotations

try:
    from _sha2 import sha256 as _sha256  # CPython 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # CPython 3.10, 3.11
    except ImportError:  # pragma: no cover - a build without builtin hashes
        from hashlib import sha256 as _sha256

try:
    from _operator import _compare_digest as compare_digest  # what hmac.compare_digest falls back to
except ImportError:  # pragma: no cover
    from hmac import compare_digest

__all__ = ["compare_digest", "sha256_digest", "sha256_hex"]


def sha256_digest(data: bytes) -> bytes:
    return _sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return _sha256(data).hexdigest()
