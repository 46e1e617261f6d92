"""A site's own tabular records from a CSV file.

The site names its label column (integer classes 0..K-1) and, optionally, its feature
columns; every feature must be numeric. Features are used as given: scale them before
training (with constants that do not depend on the records, to keep the DP guarantee whole).

The file is parsed once per process and file version: ``load_csv`` keeps the last few
datasets it read, keyed on the file's resolved path, inode, modification and change
times and size and the columns asked for, so a site that answers many messages in one study (and the simulated
sites and coordinator sharing one process) parse it once. Records stream through the
parser in blocks: numpy's C parser reads an all-numeric file ``FAST_BLOCK_BYTES`` of
lines at a time; any file it cannot read as plainly (or any value it would have to
refuse) goes through the strict ``csv`` reader in chunks of ``CHUNK_RECORDS`` records,
whose fields numpy converts and checks as a block. Either way memory stays near the
final float32 arrays.

The file is read strictly: column names are compared after stripping spaces and must
be unique, every record has exactly as many fields as the header, every feature fits a
finite float32, and every label is a whole number in ``0..num_classes-1`` (below
``MAX_LABEL_WITHOUT_NUM_CLASSES`` when the class count is not given, so a stray ``1e12``
cannot ask for a model with a trillion outputs). Each refusal is a ``DataError`` naming the
file, the line and the column.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import numpy as np

from flsuite.data.datasets import Dataset
from flsuite.data.site_cache import FileVersionCache
from flsuite.errors import DataError

MAX_LABEL_WITHOUT_NUM_CLASSES = 10_000
"""Labels must be below this when ``num_classes`` is not given (set data.num_classes for more classes)."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)

CHUNK_RECORDS = 4_096
"""Records converted and checked as one block: bounds the memory the parser holds beyond the result."""

FAST_BLOCK_BYTES = 1 << 22
"""Text the fast reader hands numpy at a time (whole lines, about 4 MB)."""

CACHE_SIZE = 4
"""Datasets ``load_csv`` keeps (least recently used first out)."""

_CACHE = FileVersionCache(CACHE_SIZE)


class _CsvReader(Protocol):
    """What ``csv.reader`` returns: records, and the number of physical lines read so far."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


def load_csv(
    path: str | Path, *, label_column: str, feature_columns: list[str] | None = None, num_classes: int | None = None
) -> Dataset:
    """Read a CSV with a header row into a ``Dataset``; every problem names the file, line and column.

    With ``num_classes`` every label must be below it and the dataset keeps that class count;
    without it labels must be below ``MAX_LABEL_WITHOUT_NUM_CLASSES`` and the count is the
    largest label plus one.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist: check data.csv_path (or the site's data-path)")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"num_classes={num_classes} for {path} must be at least 1: set data.num_classes")
    settings = (label_column, tuple(feature_columns) if feature_columns else None, num_classes)
    return _CACHE.get(path, settings, lambda: _read(path, label_column, feature_columns, num_classes))


def clear_csv_cache() -> None:
    """Forget every dataset ``load_csv`` kept (the next call parses its file again)."""
    _CACHE.clear()


def _read(path: Path, label_column: str, feature_columns: list[str] | None, num_classes: int | None) -> Dataset:
    try:
        fast = _read_fast(path, label_column, feature_columns, num_classes)
    except UnicodeDecodeError:
        fast = None  # the strict reader names the line
    if fast is not None:
        return fast
    try:
        # utf-8-sig: a byte-order mark (as spreadsheets write it) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                return _parse(path, reader, label_column, feature_columns, num_classes)
            except csv.Error as exc:  # e.g. a field longer than csv.field_size_limit()
                raise DataError(f"{path} line {reader.line_num}: not a readable CSV record ({exc})") from None
    except UnicodeDecodeError:
        line = _first_line_not_utf8(path)
        raise DataError(f"{path} line {line} is not UTF-8 text: save the file as UTF-8 CSV") from None


def _read_fast(path: Path, label_column: str, feature_columns: list[str] | None, num_classes: int | None) -> Dataset | None:
    """The dataset through numpy's C parser (``np.loadtxt``), ``FAST_BLOCK_BYTES`` of lines at a
    time, when every record of the file is all numbers; None to leave the file to the strict reader.

    numpy is never more lenient than the strict reader (it refuses ``1_000`` and non-ASCII
    digits, which Python's float takes): any block it cannot read, a column count other than
    the header's, a value beyond float32 or a label the strict reader refuses sends the whole
    file to the strict reader, which accepts or names the line and column.
    """
    with path.open(encoding="utf-8-sig") as handle:
        first = handle.readline()
        try:
            header_fields = next(csv.reader([first]), None)
        except csv.Error:
            return None
        if not first.endswith("\n") or header_fields is None:
            return None
        header = _header(path, header_fields)
        label_at, feature_at = _columns(path, header, label_column, feature_columns)
        limit = num_classes if num_classes is not None else MAX_LABEL_WITHOUT_NUM_CLASSES
        feature_parts: list[np.ndarray] = []
        label_parts: list[np.ndarray] = []
        while lines := handle.readlines(FAST_BLOCK_BYTES):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a block of blank lines: "input contained no data"
                    block = np.loadtxt(lines, delimiter=",", comments=None, quotechar='"', dtype=np.float64, ndmin=2)
            except ValueError:
                return None
            if block.size == 0:
                continue
            if block.shape[1] != len(header):
                return None
            values, labels = block[:, feature_at], block[:, label_at]
            if not (np.abs(values) <= _FLOAT32_MAX).all():
                return None
            if not ((labels >= 0) & (labels < limit) & (labels == np.floor(labels))).all():
                return None
            feature_parts.append(values.astype(np.float32))
            label_parts.append(labels.astype(np.int64))
    if not feature_parts:
        return None
    features = feature_parts[0] if len(feature_parts) == 1 else np.concatenate(feature_parts)
    feature_parts.clear()
    labels = label_parts[0] if len(label_parts) == 1 else np.concatenate(label_parts)
    count = num_classes if num_classes is not None else int(labels.max()) + 1
    return Dataset(path.stem, features, labels, count)


def check_labels(dataset: Dataset, num_classes: int, *, source: str, label_column: str = "label") -> None:
    """Refuse labels outside ``0..num_classes-1``, the study's class count, before they index a model output.

    A site calls this after loading its records, as the coordinator's model has
    ``num_classes`` outputs whatever the site's own file says.
    """
    labels = dataset.labels
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        positions = np.flatnonzero(outside)
        first = int(positions[0])
        more = f" (and {len(positions) - 1} more records)" if len(positions) > 1 else ""
        raise DataError(
            f"{source} record {first + 1}, column {label_column!r}: label {int(labels[first])} is not in "
            f"0..{num_classes - 1} (num_classes={num_classes}){more}: "
            "set data.num_classes to the study's number of classes or fix the file"
        )


def _parse(
    path: Path, reader: _CsvReader, label_column: str, feature_columns: list[str] | None, num_classes: int | None
) -> Dataset:
    header = _header(path, next(reader, None))
    label_at, feature_at = _columns(path, header, label_column, feature_columns)
    width = len(header)
    names = [header[at] for at in feature_at]
    feature_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    records: list[list[str]] = []
    lines: list[int] = []

    def flush() -> None:
        features, labels = _convert_chunk(path, header, feature_at, label_at, label_column, num_classes, names,
                                          records, lines)
        feature_parts.append(features)
        label_parts.append(labels)
        records.clear()
        lines.clear()

    end = reader.line_num  # the last physical line read; a quoted field may span several
    for fields in reader:
        line, end = end + 1, reader.line_num
        if not fields:
            continue  # a blank line
        if len(fields) != width:
            raise DataError(
                f"{path} line {line}: {len(fields)} fields, but the header names {width} columns: "
                "every record needs one field per column (check for stray or missing commas)"
            )
        records.append(fields)
        lines.append(line)
        if len(records) == CHUNK_RECORDS:
            flush()
    if records:
        flush()
    if not feature_parts:
        raise DataError(f"{path} has a header but no records")
    features = feature_parts[0] if len(feature_parts) == 1 else np.concatenate(feature_parts)
    feature_parts.clear()
    labels = label_parts[0] if len(label_parts) == 1 else np.concatenate(label_parts)
    count = num_classes if num_classes is not None else int(labels.max()) + 1
    return Dataset(path.stem, features, labels, count)


def _convert_chunk(
    path: Path, header: list[str], feature_at: list[int], label_at: int, label_column: str, num_classes: int | None,
    names: list[str], records: list[list[str]], lines: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of records as (float32 features, int64 labels), or the first bad field's DataError.

    numpy converts the fields as Python's ``float`` does: whole records at once when every
    column is a number, else the feature and label columns alone. When those fail, the
    records are walked one by one to name the first bad line and column.
    """
    try:
        block = np.array(records, dtype=np.float64)
        values, parsed = block[:, feature_at], block[:, label_at]
    except ValueError:  # a column the study does not use holds text, or a feature or label is not a number
        values, parsed = _convert_columns(path, header, feature_at, label_at, records, lines)
    _check_float32(path, values, lines, names)
    limit = num_classes if num_classes is not None else MAX_LABEL_WITHOUT_NUM_CLASSES
    if parsed is None or not ((parsed >= 0) & (parsed < limit) & (parsed == np.floor(parsed))).all():
        for line, fields in zip(lines, records, strict=True):
            _label(path, line, label_column, fields[label_at], num_classes)  # raises at the first bad label
        raise AssertionError("a label block failed its check but no label is refused")
    return values.astype(np.float32), parsed.astype(np.int64)


def _convert_columns(
    path: Path, header: list[str], feature_at: list[int], label_at: int, records: list[list[str]], lines: list[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    take = itemgetter(*feature_at) if len(feature_at) > 1 else (lambda fields, at=feature_at[0]: (fields[at],))
    try:
        values = np.array([take(fields) for fields in records], dtype=np.float64).reshape(len(records), len(feature_at))
    except ValueError:
        for line, fields in zip(lines, records, strict=True):
            _refuse_non_number(path, line, header, feature_at, fields)
        raise AssertionError("a chunk failed to convert but no field is refused") from None
    try:
        labels = np.array([fields[label_at] for fields in records], dtype=np.float64)
    except ValueError:
        labels = None  # the label check walks the records and names the bad one
    return values, labels


def _header(path: Path, first: list[str] | None) -> list[str]:
    if first is None:
        raise DataError(f"{path} is empty: it needs a header line naming the columns, then one record per line")
    if not first:
        raise DataError(f"{path} line 1 is blank: the first line must be the header naming the columns")
    names = [name.strip() for name in first]
    where: dict[str, list[int]] = {}
    for number, name in enumerate(names, start=1):
        where.setdefault(name, []).append(number)
    repeated = [(name, numbers) for name, numbers in where.items() if len(numbers) > 1]
    if repeated:
        described = "; ".join(_describe_repeat(name, numbers, first) for name, numbers in repeated)
        raise DataError(f"{path} line 1 (header) names a column more than once: {described}: give each column its own name")
    return names


def _describe_repeat(name: str, numbers: list[int], written: list[str]) -> str:
    spellings = [written[number - 1] for number in numbers]
    text = f"{name!r} is columns {', '.join(map(str, numbers))}"
    return text if len(set(spellings)) == 1 else f"{text} (written {', '.join(map(repr, spellings))})"


def _columns(path: Path, header: list[str], label_column: str, feature_columns: list[str] | None) -> tuple[int, list[int]]:
    if label_column not in header:
        raise DataError(f"{path} has no label column {label_column!r}; its columns are {header}: set label_column")
    if feature_columns:
        repeated = sorted({name for name in feature_columns if feature_columns.count(name) > 1})
        if repeated:
            raise DataError(f"data.feature_columns names {repeated} more than once (reading {path}): list each column once")
        if label_column in feature_columns:
            raise DataError(
                f"data.feature_columns includes the label column {label_column!r} (reading {path}): "
                "a model must not see the label as a feature"
            )
    features = feature_columns or [name for name in header if name != label_column]
    missing = [name for name in features if name not in header]
    if missing:
        raise DataError(f"{path} has no feature column(s) {missing}; its columns are {header}")
    if not features:
        raise DataError(f"{path} has no feature columns besides the label {label_column!r}")
    if "" in features:
        raise DataError(
            f"{path} line 1 (header): column {header.index('') + 1} has no name: name it, or delete it "
            "(a trailing comma makes an unnamed column)"
        )
    return header.index(label_column), [header.index(name) for name in features]


def _refuse_non_number(path: Path, line: int, header: list[str], feature_at: list[int], fields: list[str]) -> None:
    for at in feature_at:
        try:
            float(fields[at])
        except ValueError:
            raise DataError(f"{path} line {line}, column {header[at]!r}: {fields[at]!r} is not a number") from None


def _check_float32(path: Path, values: np.ndarray, lines: list[int], names: list[str]) -> None:
    # Features train as float32: 1e39 is finite in float64 but inf in float32. NaN fails the test too.
    fits = np.abs(values) <= _FLOAT32_MAX
    if not fits.all():
        row, column = divmod(int(np.flatnonzero(~fits)[0]), values.shape[1])
        raise DataError(
            f"{path} line {lines[row]}, column {names[column]!r}: {values[row, column]!r} is not a finite float32 "
            f"number (features must be within ±{_FLOAT32_MAX:.4g}, not nan or inf): fix or rescale the value"
        )


def _label(path: Path, line: int, column: str, text: str, num_classes: int | None) -> int:
    try:
        label = int(text)
    except ValueError:
        label = _whole_number(text)
    if label is None or label < 0:
        raise DataError(f"{path} line {line}, column {column!r}: label {text!r} must be a class number 0, 1, 2, ...")
    if num_classes is not None and label >= num_classes:
        raise DataError(
            f"{path} line {line}, column {column!r}: label {text!r} is not below num_classes={num_classes}: "
            "set data.num_classes to the number of classes or fix the file"
        )
    if num_classes is None and label >= MAX_LABEL_WITHOUT_NUM_CLASSES:
        raise DataError(
            f"{path} line {line}, column {column!r}: label {text!r} is too large: without data.num_classes labels "
            f"must be below {MAX_LABEL_WITHOUT_NUM_CLASSES}: fix the file, or set data.num_classes if it really has "
            "that many classes"
        )
    return label


def _whole_number(text: str) -> int | None:
    """``text`` as an int when it spells a whole number such as ``2.0``; None otherwise (``1.5``, ``nan``, ``x``)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None  # False for nan and inf


def _first_line_not_utf8(path: Path) -> int:
    """The first line that does not decode (only run once a read failed, to name the line)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1
