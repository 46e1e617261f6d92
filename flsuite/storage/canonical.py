"""Canonical JSON: the one byte form of a JSON value that every hash and signature covers.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinity; two equal values
always give the same bytes, so a reader recomputes every hash from the parsed value.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON-able value; ValueError/TypeError if it is not one."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
