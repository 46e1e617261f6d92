"""A site's own tabular records from a CSV file.

The site names its label column (integer classes 0..K-1) and, optionally, its feature
columns; every feature must be numeric. Features are used as given: scale them before
training (with constants that do not depend on the records, to keep the DP guarantee whole).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from flsuite.data.datasets import Dataset
from flsuite.errors import DataError


def load_csv(path: str | Path, *, label_column: str, feature_columns: list[str] | None = None) -> Dataset:
    """Read a CSV with a header row into a ``Dataset``; every problem names the file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist: check data.csv_path (or the site's data-path)")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable UTF-8 CSV file: {exc}") from None
    if label_column not in header:
        raise DataError(f"{path} has no label column {label_column!r}; its columns are {header}: set label_column")
    features = feature_columns or [name for name in header if name != label_column]
    missing = [name for name in features if name not in header]
    if missing:
        raise DataError(f"{path} has no feature column(s) {missing}; its columns are {header}")
    if not features:
        raise DataError(f"{path} has no feature columns besides the label {label_column!r}")
    if not rows:
        raise DataError(f"{path} has a header but no records")
    matrix = np.empty((len(rows), len(features)), dtype=np.float32)
    labels = np.empty(len(rows), dtype=np.int64)
    for line, row in enumerate(rows, start=2):
        for column, name in enumerate(features):
            matrix[line - 2, column] = _number(path, line, name, row[name])
        label = _number(path, line, label_column, row[label_column])
        if label != int(label) or label < 0:
            raise DataError(f"{path} line {line}: label {row[label_column]!r} must be a class number 0, 1, 2, ...")
        labels[line - 2] = int(label)
    return Dataset(path.stem, matrix, labels, int(labels.max()) + 1)


def _number(path: Path, line: int, column: str, text: str | None) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{path} line {line}, column {column!r}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{path} line {line}, column {column!r}: {text!r} is not a finite number")
    return value
