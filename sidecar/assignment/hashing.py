"""The portable assignment hash.

``bucket(salt, unit)`` is the first 8 bytes of SHA-256 of the UTF-8 text ``salt + ":" +
unit`` read as a big-endian unsigned integer, modulo 10,000. Any language reproduces it;
``tests/data/assignment_vectors.json`` holds golden vectors.
"""

from __future__ import annotations

import hashlib

__all__ = ["BUCKETS", "bucket"]

BUCKETS = 10_000


def bucket(salt: str, unit: str) -> int:
    """The unit's bucket in [0, 10000) under ``salt``."""
    digest = hashlib.sha256(f"{salt}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS
