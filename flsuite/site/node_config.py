"""The node_config a site's SuperNode carries, in Flower's flat `k=v` encoding (keys: ``flsuite.protocol``).

The ClientApp reads these keys from `context.node_config`; they are the site's own settings
and win over anything the coordinator sends in the run config. Pure: no torch, no flwr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def format_node_config(values: Mapping[str, str | float | int | bool]) -> str:
    """Encode values as Flower's `--node-config` string (TOML scalars, space separated).

    Strings become TOML literal strings ('...') so that backslashes stay as they are; a
    string holding a single quote or a newline cannot be encoded and is refused.
    """
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"node_config key {key!r} must be non-empty without spaces or '='")
        parts.append(f"{key}={_toml_scalar(key, value)}")
    return " ".join(parts)


def _toml_scalar(key: str, value: str | float | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"node_config {key} must be a finite number, got {value}")
        return repr(value)
    if isinstance(value, str):
        if "'" in value or "\n" in value or "\r" in value:
            raise ValueError(f"node_config {key} cannot hold a quote or a line break: {value!r}")
        return f"'{value}'"
    raise TypeError(f"node_config {key}: unsupported type {type(value).__name__}")
