"""Scale a CSV's features with the ranges the study declares, the same way at every site and the coordinator.

Each feature ``x`` becomes ``(x - min) / (max - min)`` with the ``[min, max]`` declared in
``data.feature_ranges`` (never taken from the records, so scaling reveals nothing about any
record and the DP guarantee covers the whole pipeline). A feature without a declared range
is refused: unscaled clinical values (ages in tens, counts in thousands) train a model that
looks like it works and predicts one class. Values outside their range are clipped to it and
counted: a site logs how many per column, so a wrong declaration or a unit mix-up shows,
and one outlier does not stop a hospital's site.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flsuite.config.feature_schema import HOW_TO_DECLARE
from flsuite.config.schema import DataConfig
from flsuite.data.csv_source import load_csv
from flsuite.data.datasets import Dataset
from flsuite.errors import DataError

log = logging.getLogger(__name__)


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
    """``data`` with each feature scaled to [0, 1] by its declared range; the clipped values per column."""
    if len(names) != data.num_features:
        raise DataError(f"{source}: {data.num_features} feature columns read but {len(names)} named")
    missing = [name for name in names if name not in ranges]
    if missing:
        raise DataError(f"{source}: no declared range for feature column(s) {missing}: {HOW_TO_DECLARE}")
    low = np.array([float(ranges[name][0]) for name in names])
    high = np.array([float(ranges[name][1]) for name in names])
    if not np.all(high > low):
        bad = [name for name, lo, hi in zip(names, low, high) if not hi > lo]
        raise DataError(f"{source}: data.feature_ranges for {bad} must be [min, max] with min < max")
    scaled = (data.features.astype(np.float64) - low) / (high - low)
    outside = (scaled < 0) | (scaled > 1)
    clipped = {name: int(count) for name, count in zip(names, outside.sum(axis=0)) if count}
    features = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return Dataset(data.name, features, data.labels, data.num_classes, data.image_shape), clipped
