"""Scale a CSV's features with the ranges the study declares, the same way at every site and the coordinator.

Each feature ``x`` becomes ``2 (x - min) / (max - min) - 1``, so [min, max] maps onto [-1, 1]
(as the built-in datasets are scaled), with the ``[min, max]`` declared in
``data.feature_ranges`` (never taken from the records, so scaling reveals nothing about any
record and the DP guarantee covers the whole pipeline). A feature without a declared range
is refused: unscaled clinical values (ages in tens, counts in thousands) train a model that
looks like it works and predicts one class. Values outside their range are clipped to it and
counted: a site logs how many per column, so a wrong declaration or a unit mix-up shows,
and one outlier does not stop a hospital's site.

A site whose study names a built-in dataset (``breast_cancer``, ``digits``) but which holds
its own CSV must hold it in that dataset's scaled space (``BUILTIN_SCALED_RANGE``): a value
outside it means raw, unscaled records, and the site refuses rather than train on them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flsuite.config import feature_range_problem
from flsuite.config.feature_schema import HOW_TO_DECLARE
from flsuite.config.schema import DataConfig
from flsuite.data.csv_source import load_csv
from flsuite.data.datasets import Dataset
from flsuite.errors import DataError

log = logging.getLogger(__name__)

BUILTIN_SCALED_RANGE = {"breast_cancer": (-1.0, 1.0), "digits": (0.0, 1.0)}
"""The range every feature of a built-in dataset is scaled onto (``flsuite.data.datasets``)."""

_TOLERANCE = 1e-5  # float32 rounding of an in-range value written as text


def load_site_csv(path: str | Path, config: DataConfig, *, label_column: str | None = None) -> Dataset:
    """A site's own CSV for its study: scaled by declared ranges (data=csv), or checked to be already
    in the built-in dataset's scaled space when the study names one."""
    if config.dataset == "csv":
        return load_scaled_csv(path, config, label_column=label_column)
    data = load_csv(path, label_column=label_column or "label", num_classes=config.num_classes)
    low, high = BUILTIN_SCALED_RANGE[config.dataset]
    outside = (data.features < low - _TOLERANCE) | (data.features > high + _TOLERANCE)
    if outside.any():
        row, column = divmod(int(outside.argmax()), data.num_features)
        names = csv_feature_names(Path(path), label_column or "label", None)
        more = int(outside.sum()) - 1
        raise DataError(
            f"{path}: feature column {names[column]!r} holds {float(data.features[row, column]):g} (record {row + 1}"
            f"{f', and {more} more values' if more else ''}) outside [{low:g}, {high:g}], the scaled range of the study's "
            f"data.dataset={config.dataset}: these look like raw values; scale the file onto that range, or run the "
            f"study with data=csv and {HOW_TO_DECLARE}"
        )
    return data


def load_scaled_csv(path: str | Path, config: DataConfig, *, label_column: str | None = None) -> Dataset:
    """Read a CSV (``load_csv``'s checks) and scale its features with ``config.feature_ranges``."""
    label = label_column or config.label_column or "label"
    data = load_csv(path, label_column=label, feature_columns=config.feature_columns, num_classes=config.num_classes)
    names = csv_feature_names(Path(path), label, config.feature_columns)
    scaled, clipped = scale_to_ranges(data, names, config.feature_ranges or {}, source=str(path))
    if clipped:
        counts = ", ".join(f"{column}: {count}" for column, count in clipped.items())
        log.warning("%s: values outside the declared data.feature_ranges were clipped to them (%s)", path, counts)
    return scaled


def csv_feature_names(path: Path, label_column: str, feature_columns: Sequence[str] | None) -> list[str]:
    """The feature columns of a CSV in the order ``load_csv`` reads them (its header, stripped)."""
    if feature_columns:
        return list(feature_columns)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    return [name for name in header if name != label_column]


def scale_to_ranges(
    data: Dataset, names: Sequence[str], ranges: Mapping[str, Sequence[float]], *, source: str
) -> tuple[Dataset, dict[str, int]]:
    """``data`` with each feature scaled to [-1, 1] by its declared range; the clipped values per column.

    ``ranges`` are checked by ``flsuite.config.schema.feature_range_problem`` where they enter
    (the config, a schema file) and again here, for a caller that did not take that path: an
    empty or non-finite range would scale to inf or NaN.
    """
    if len(names) != data.num_features:
        raise DataError(f"{source}: {data.num_features} feature columns read but {len(names)} named")
    missing = [name for name in names if name not in ranges]
    if missing:
        raise DataError(f"{source}: no declared range for feature column(s) {missing}: {HOW_TO_DECLARE}")
    for name in names:
        problem = feature_range_problem(name, ranges[name])
        if problem:
            raise DataError(f"{source}: {problem}")
    low = np.array([float(ranges[name][0]) for name in names])
    high = np.array([float(ranges[name][1]) for name in names])
    scaled = 2.0 * (data.features.astype(np.float64) - low) / (high - low) - 1.0
    outside = (scaled < -1) | (scaled > 1)
    clipped = {name: int(count) for name, count in zip(names, outside.sum(axis=0)) if count}
    features = np.clip(scaled, -1.0, 1.0).astype(np.float32)
    return Dataset(data.name, features, data.labels, data.num_classes, data.image_shape), clipped
