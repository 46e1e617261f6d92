"""The feature ranges of a CSV study: declared in the config or in a schema file, checked up front.

A CSV study's features are scaled with ranges a person declares (``data.feature_ranges``
or a YAML/JSON file named by ``data.schema_path``), never with ranges read from the
records: record-derived constants would leak the records past the DP guarantee, and
unscaled clinical values silently wreck training. ``resolve_schema_file`` reads the file
when the study is composed, so the ranges travel to the sites inside the study config.
Pure: no torch, no flwr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flsuite.config.schema import StudyConfig, feature_range_problem
from flsuite.errors import ConfigError

HOW_TO_DECLARE = (
    "declare each feature's [min, max] from domain knowledge (not from the records), e.g. "
    "`+data.feature_ranges.age=[0,120]` on the command line, `feature_ranges: {age: [0, 120], ...}` in a YAML "
    "under configs/data/, or a schema file with that mapping named by data.schema_path=FILE"
)


def resolve_schema_file(study: StudyConfig) -> StudyConfig:
    """``study`` with ``data.schema_path`` read into ``data.feature_ranges`` (unchanged when none is named)."""
    data = study.data
    if data.schema_path is None:
        return study
    ranges = read_schema_file(Path(data.schema_path))
    resolved = data.model_validate({**data.model_dump(), "feature_ranges": ranges, "schema_path": None})
    return study.model_copy(update={"data": resolved})


def read_schema_file(path: Path) -> dict[str, list[float]]:
    """The ``feature_ranges`` mapping of a YAML or JSON schema file, each range checked."""
    import yaml

    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"data.schema_path {path}: cannot read it ({exc.strerror or exc}): give the schema file's path") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"data.schema_path {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    ranges = document.get("feature_ranges") if isinstance(document, dict) else None
    if not isinstance(ranges, dict) or not ranges:
        raise ConfigError(f"data.schema_path {path} holds no `feature_ranges:` mapping of column: [min, max]")
    return {str(column): _bounds(path, str(column), bounds) for column, bounds in ranges.items()}


def _bounds(path: Path, column: str, bounds: Any) -> list[float]:
    if problem := feature_range_problem(column, bounds, where=f"data.schema_path {path}: feature_ranges"):
        raise ConfigError(problem)
    return [float(bounds[0]), float(bounds[1])]


def missing_ranges(study: StudyConfig) -> str | None:
    """Why this CSV study cannot scale its features (no ranges, or none for a listed feature); None when it can."""
    data = study.data
    if data.dataset != "csv":
        return None
    if not data.feature_ranges and data.schema_path is None:
        return f"a CSV study needs declared feature ranges (data.feature_ranges or data.schema_path): {HOW_TO_DECLARE}"
    missing = [column for column in data.feature_columns or [] if column not in (data.feature_ranges or {})]
    if missing and data.schema_path is None:
        return f"data.feature_ranges declares no range for feature column(s) {missing}: {HOW_TO_DECLARE}"
    return None
