"""Canonical JSON and its SHA-256 for the audit chain and the registry.

`canonical_json` itself lives in `flsuite.storage.canonical` (the hash-chained log needs it
too); this module adds the hex digests that manifests and entries record.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flsuite.storage.canonical import canonical_json

__all__ = ["canonical_json", "sha256_hex", "canonical_sha256"]


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of `value`."""
    return sha256_hex(canonical_json(value))
