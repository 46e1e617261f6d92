"""A key for memoising the strict parse of a flat record: by each value *and its type*.

A site reads its study from every message's run_config, and the coordinator reads every DP
reply's status with the site's whole history; both keep what they parsed, keyed by the record.
Python calls ``True``, ``1``, ``1.0`` and ``np.True_`` equal, and ``0.0`` and ``-0.0``, but a
strict schema (or a config hash) does not, so the key holds each value with its type and a
float's exact bits: a record is served a parse only of a record of the same values of the same types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TypedKey", "record_of", "typed_key"]

TypedKey = tuple[tuple[str, type, "str | None", Any], ...]


def typed_key(record: Mapping[str, Any]) -> TypedKey | None:
    """The record's key (names sorted); None when a value cannot be hashed (a list, say): parse it anew."""
    try:
        key = tuple(sorted((name, type(value), value.hex() if isinstance(value, float) else None, value)
                           for name, value in record.items()))
        hash(key)
    except TypeError:
        return None
    return key


def record_of(key: TypedKey) -> dict[str, Any]:
    """The record a key was made of."""
    return {name: value for name, _, _, value in key}
