"""The "before" column of the CSV benchmark: flsuite's CSV parsing until issue 15, kept for
the benchmark only. Every field went through ``float`` into Python lists, the whole file was
held as lists of floats before becoming an array, and nothing was cached (each caller parsed
the file again). The header, column and error helpers are the current module's: they did
not change.
"""

from __future__ import annotations

import csv
from operator import itemgetter
from pathlib import Path

import numpy as np

from flsuite.data.csv_source import _check_float32, _columns, _header, _label, _refuse_non_number
from flsuite.data.datasets import Dataset
from flsuite.errors import DataError


def legacy_load_csv(path: str | Path, *, label_column: str, feature_columns: list[str] | None = None,
                    num_classes: int | None = None) -> Dataset:
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = _header(path, next(reader, None))
        label_at, feature_at = _columns(path, header, label_column, feature_columns)
        width = len(header)
        take = itemgetter(*feature_at) if len(feature_at) > 1 else (lambda fields, at=feature_at[0]: (fields[at],))
        rows: list[list[float]] = []
        labels: list[int] = []
        lines: list[int] = []
        end = reader.line_num
        for fields in reader:
            line, end = end + 1, reader.line_num
            if not fields:
                continue
            if len(fields) != width:
                raise DataError(f"{path} line {line}: {len(fields)} fields, but the header names {width} columns")
            try:
                rows.append(list(map(float, take(fields))))
            except ValueError:
                _refuse_non_number(path, line, header, feature_at, fields)
            labels.append(_label(path, line, label_column, fields[label_at], num_classes))
            lines.append(line)
    values = np.array(rows, dtype=np.float64)
    _check_float32(path, values, lines, [header[at] for at in feature_at])
    label_array = np.array(labels, dtype=np.int64)
    count = num_classes if num_classes is not None else int(label_array.max()) + 1
    return Dataset(path.stem, values.astype(np.float32), label_array, count)
