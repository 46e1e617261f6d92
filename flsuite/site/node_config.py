"""The node_config a site's SuperNode carries, in Flower's flat `k=v` encoding (keys: ``flsuite.protocol``).

The ClientApp reads these keys from `context.node_config`; they are the site's own settings
and win over anything the coordinator sends in the run config. Pure: no torch, no flwr.
"""

from __future__ import annotations

from collections.abc import Mapping

from flsuite.config import toml_scalar


def format_node_config(values: Mapping[str, str | float | int | bool]) -> str:
    """Encode values as Flower's `--node-config` string (TOML scalars, space separated).

    Strings become TOML literal strings ('...') so that backslashes stay as they are; a
    string holding a single quote or a newline cannot be encoded and is refused.
    """
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"node_config key {key!r} must be non-empty without spaces or '='")
        try:
            parts.append(f"{key}={toml_scalar(value, literal_strings=True)}")
        except ValueError as err:
            raise ValueError(f"node_config {key} cannot be encoded: {err}") from None
    return " ".join(parts)
