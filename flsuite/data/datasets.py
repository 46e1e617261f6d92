"""The datasets a study can use: two that ship inside scikit-learn, and a site's own CSV.

Features are scaled with data-independent constants (the published feature ranges of
breast cancer Wisconsin, after log1p, the known 0-16 pixel range of digits), so preprocessing
reveals nothing about any record and the DP guarantee covers the whole pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from flsuite.errors import DataError

_RANGE_LINE = re.compile(r"^\s*[a-z ]+\((?:mean|standard error|worst)\):\s+([0-9.]+)\s+([0-9.]+)\s*$")


@dataclass(frozen=True)
class Dataset:
    """Features (float32, one row per record) and integer labels 0..num_classes-1."""

    name: str
    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    image_shape: tuple[int, int] | None = None

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.name, self.features[indices], self.labels[indices], self.num_classes, self.image_shape)


def load_builtin(name: str) -> Dataset:
    """Load ``breast_cancer`` or ``digits`` from scikit-learn's bundled files (no download;
    breast cancer without importing scikit-learn)."""
    if name == "breast_cancer":
        return _breast_cancer()
    if name == "digits":
        return _digits()
    raise DataError(f"data.dataset={name!r} is not a built-in dataset: use breast_cancer, digits or csv")


@cache
def _breast_cancer() -> Dataset:
    data, target, description = _bundled_breast_cancer()
    # log1p tames the long tails of the area and perimeter features; the published
    # ranges then map every feature onto [-1, 1].
    low, high = (np.log1p(bound) for bound in published_ranges(description))
    scaled = 2.0 * (np.log1p(data) - low) / (high - low) - 1.0
    features = np.clip(scaled, -1.0, 1.0).astype(np.float32)
    return Dataset("breast_cancer", features, target.astype(np.int64), 2)


def _bundled_breast_cancer() -> tuple[np.ndarray, np.ndarray, str]:
    """Data, target and description of scikit-learn's bundled breast cancer files, read as
    ``load_breast_cancer`` reads them but without importing scikit-learn (a second of a
    study's start); through ``load_breast_cancer`` when the files are not where it keeps them."""
    import csv
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("sklearn")
    root = Path(next(iter(spec.submodule_search_locations or ()), "")) / "datasets" if spec else None
    if root is None or not (root / "data" / "breast_cancer.csv").is_file() or not (root / "descr" / "breast_cancer.rst").is_file():
        from sklearn.datasets import load_breast_cancer

        bundle = load_breast_cancer()
        return bundle.data, bundle.target, bundle.DESCR
    with (root / "data" / "breast_cancer.csv").open("r", encoding="utf-8") as csv_file:
        rows = csv.reader(csv_file)
        header = next(rows)
        data = np.empty((int(header[0]), int(header[1])))
        target = np.empty((int(header[0]),), dtype=int)
        for i, row in enumerate(rows):
            data[i] = np.asarray(row[:-1], dtype=np.float64)
            target[i] = np.asarray(row[-1], dtype=int)
    return data, target, (root / "descr" / "breast_cancer.rst").read_text(encoding="utf-8")


@cache
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bundle = load_digits()
    features = (bundle.data / 16.0).astype(np.float32)
    return Dataset("digits", features, bundle.target.astype(np.int64), 10, image_shape=(8, 8))


def published_ranges(description: str) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each feature as published in the dataset's description."""
    pairs = [match.groups() for line in description.splitlines() if (match := _RANGE_LINE.match(line))]
    if len(pairs) != 30:
        raise DataError(f"expected 30 published feature ranges in the breast cancer description, found {len(pairs)}")
    low = np.array([float(lo) for lo, _ in pairs])
    high = np.array([float(hi) for _, hi in pairs])
    return low, high
