"""The records of one study: the coordinator's held-out test split and each site's share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flsuite.config.schema import DataConfig
from flsuite.data.datasets import Dataset, load_builtin
from flsuite.data.feature_ranges import load_scaled_csv
from flsuite.data.partition import partition, train_test_indices
from flsuite.errors import DataError


@dataclass(frozen=True)
class StudyData:
    """The held-out test set and the training records of each simulated site."""

    test: Dataset
    sites: tuple[Dataset, ...]


@dataclass(frozen=True)
class ModelShape:
    """What the model's input and output layers need; the same at the coordinator and every site."""

    num_features: int
    num_classes: int
    image_shape: tuple[int, int] | None


def model_shape(config: DataConfig, data: Dataset | None) -> ModelShape:
    """The study's model shape, from the dataset's description first and ``data`` second.

    A site under label skew may lack some classes, so a built-in dataset's class count,
    or ``data.num_classes`` for a CSV, wins over what one site's records show.
    """
    if config.dataset != "csv":
        source = load_builtin(config.dataset)
        return ModelShape(source.num_features, source.num_classes, source.image_shape)
    if data is None and not (config.feature_columns and config.num_classes):
        raise DataError(
            "the coordinator cannot read data.csv_path, so it needs the model's shape from the config: "
            "set data.feature_columns and data.num_classes (or give it a CSV with the same columns)"
        )
    num_features = len(config.feature_columns) if config.feature_columns else data.num_features  # type: ignore[union-attr]
    return ModelShape(num_features, config.num_classes or data.num_classes, None)  # type: ignore[union-attr]


def load_source(config: DataConfig) -> Dataset:
    if config.dataset == "csv":
        return load_scaled_csv(config.csv_path or "", config)
    return load_builtin(config.dataset)


def split_study(config: DataConfig, num_sites: int) -> StudyData:
    """Deterministically split the dataset for ``num_sites`` simulated sites."""
    source = load_source(config)
    train_index, test_index = train_test_indices(source.labels, test_fraction=config.test_fraction, seed=config.seed)
    train = source.subset(train_index)
    parts = partition(
        train.labels,
        num_sites=num_sites,
        scheme=config.partitioning,
        seed=config.seed,
        dirichlet_alpha=config.dirichlet_alpha,
        size_skew_sigma=config.size_skew_sigma,
        min_site_records=config.min_site_records,
    )
    return StudyData(test=source.subset(test_index), sites=tuple(train.subset(np.asarray(p)) for p in parts))
