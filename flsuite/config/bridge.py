"""The one bridge between ``StudyConfig`` and Flower's flat run_config.

Flower's run_config holds scalar values under flat keys, and ``flwr run`` only accepts
keys that pyproject.toml's ``[tool.flwr.app.config]`` declares. So every setting is
always present: nested sections become dotted keys (``federation.rounds``), an unset
optional value travels as ``""`` and lists as JSON text.
``from_run_config(to_run_config(c)) == c`` for every valid config.

The schema is strict (text is not a number), so text that arrives for a number or a
bool (``flwr run --run-config 'federation.rounds="3"'``) is decoded here, by the
field's type; text that does not parse reaches the schema, which names the field.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from flsuite.config.schema import StudyConfig
from flsuite.config.validation import validate_study
from flsuite.typed_key import TypedKey, record_of, typed_key

Scalar = bool | int | float | str
UNSET = ""


def to_run_config(config: StudyConfig) -> dict[str, Scalar]:
    """Flatten a study config into Flower's run_config (dotted keys, scalar values)."""
    flat: dict[str, Scalar] = {}
    _flatten(config, "", flat)
    return flat


def from_run_config(run_config: Mapping[str, Any]) -> StudyConfig:
    """Rebuild and validate a study config from a run_config made by ``to_run_config``.

    A site reads the study from the run_config of every message it handles, so the result is
    kept for the last few run_configs: the same keys with the same values *of the same types*
    (``True``, ``1``, ``1.0`` and ``np.True_`` are equal in Python, not to the strict schema; nor
    are ``0.0`` and ``-0.0`` to a config hash) give the same frozen ``StudyConfig``, which callers
    must not change in place; anything else is validated anew, and a refused one is never kept.
    """
    key = typed_key(run_config)
    if key is None:  # a value that cannot be a key (not a Flower scalar): validation names it
        return _validated(run_config)
    return _validated_once(key)


@functools.lru_cache(maxsize=8)
def _validated_once(key: TypedKey) -> StudyConfig:
    return _validated(record_of(key))


def _validated(run_config: Mapping[str, Any]) -> StudyConfig:
    nested: dict[str, Any] = {}
    for key, value in run_config.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _decode(_field(parts), value)
    return validate_study(nested)


def _flatten(model: BaseModel, prefix: str, out: dict[str, Scalar]) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            _flatten(value, f"{key}.", out)
        elif value is None:
            out[key] = UNSET
        elif isinstance(value, (list, dict)):  # lists, and data.feature_ranges' mapping
            out[key] = json.dumps(value)
        else:
            out[key] = value


def _field(parts: list[str]) -> FieldInfo | None:
    model: Any = StudyConfig
    field = None
    for part in parts:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return field


def _decode(field: FieldInfo | None, value: Any) -> Any:
    if field is None or not isinstance(value, str):
        return value
    options = typing.get_args(field.annotation) or (field.annotation,)
    if value == UNSET and type(None) in options:
        return None
    if any(typing.get_origin(option) in (list, dict) for option in options):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    for kind, parse in ((bool, _parse_bool), (int, int), (float, float)):
        if kind in options:
            try:
                return parse(value.strip())
            except ValueError:
                return value
    return value


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(text)
