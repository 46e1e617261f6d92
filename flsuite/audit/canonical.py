"""Canonical JSON: the one byte form of a JSON value that every hash and signature covers.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinity; two equal values
always give the same bytes, so an auditor recomputes every hash from the parsed value.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "sha256_hex", "canonical_sha256"]


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON-able value; ValueError/TypeError if it is not one."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of `value`."""
    return sha256_hex(canonical_json(value))
