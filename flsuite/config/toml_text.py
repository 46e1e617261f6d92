"""One TOML scalar encoder for everything flsuite writes as TOML.

The run_config file `flsuite launch` hands to `flwr run --run-config`, a site SuperNode's
``--node-config`` string and pyproject.toml's ``[tool.flwr.app.config]`` all spell their
values with ``toml_scalar``. Pure: standard library only.
"""

from __future__ import annotations

import json
import math

__all__ = ["toml_scalar"]


def toml_scalar(value: object, *, literal_strings: bool = False) -> str:
    """``value`` (a bool, int, float or str) as a TOML scalar; ValueError naming what is wrong otherwise.

    Strings are basic strings (JSON's escapes, which TOML reads the same; DEL escaped too),
    or with ``literal_strings`` literal strings ('...': backslashes stay as they are), which
    cannot hold a single quote or a line break. Floats must be finite.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        if not literal_strings:
            return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML refuses a raw DEL
        if "'" in value or "\n" in value or "\r" in value:
            raise ValueError(f"{value!r} holds a quote or a line break, which a TOML literal string cannot")
        return f"'{value}'"
    raise ValueError(f"a {type(value).__name__} is not a TOML scalar (a bool, int, float or string)")
