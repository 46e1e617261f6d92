"""Turn a composed config into a ``StudyConfig``, or one clear error.

pydantic reports every problem with a location and a technical message; a person
needs the dotted field name, the value they gave, and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from flsuite.config.schema import StudyConfig
from flsuite.errors import ConfigError

_MISSING = object()


def validate_study(raw: Mapping[str, Any]) -> StudyConfig:
    """Validate a plain (nested) mapping into a frozen ``StudyConfig``."""
    try:
        return StudyConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, raw)) from None


def describe_validation_error(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    """One message naming each bad field, the value given and what is allowed."""
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        field = ".".join(location) or "(config)"
        value = _lookup(raw, error["loc"])
        allowed = _allowed(error, value)
        if error["type"] == "extra_forbidden":
            parent = ".".join(location[:-1]) or "the top level"
            lines.append(f"{field}: unknown key (not a setting of {parent}); check the spelling")
        elif error["type"] == "value_error":
            message = error["msg"].removeprefix("Value error, ")
            named = not location or message.startswith(f"{field}.")
            lines.append(message if named else f"{field}: {message}")
        else:
            shown = "missing" if value is _MISSING else repr(value)
            lines.append(f"{field}={shown} is not allowed: {allowed}")
    return "invalid config: " + "; ".join(lines)


_EXPECTED = {
    "int": "expected an integer",
    "float": "expected a number",
    "bool": "expected true or false",
    "string": "expected text",
    "list": "expected a list",
}


def _allowed(error: Mapping[str, Any], value: Any = _MISSING) -> str:
    context = error.get("ctx") or {}
    kind = error["type"]
    if kind == "finite_number":
        return "expected a finite number (not inf or nan)"
    if kind == "literal_error":
        return f"expected one of {context.get('expected')}"
    bounds = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
    }
    if kind in bounds:
        return bounds[kind].format(**context)
    if kind.endswith("_parsing") or kind.endswith("_type"):
        base = kind.split("_")[0]
        expected = _EXPECTED.get(base, f"expected a {base}")
        if isinstance(value, bool) and base in ("int", "float"):
            return f"{expected}; true/false is not a number"
        if isinstance(value, str) and base in ("int", "float", "bool"):
            return f"{expected}, not text"
        return expected
    return error["msg"].removeprefix("Value error, ")


def _lookup(raw: Any, location: tuple[Any, ...]) -> Any:
    node = raw
    for part in location:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node
