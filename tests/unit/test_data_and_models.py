"""Datasets, the site CSV loader, and the model zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from flsuite.config.schema import ModelConfig
from flsuite.data.csv_source import load_csv
from flsuite.data.datasets import load_builtin
from flsuite.errors import ConfigError, DataError
from flsuite.models.zoo import build_model


def test_builtin_datasets_are_the_real_ones_scaled_without_looking_at_records():
    cancer = load_builtin("breast_cancer")
    assert cancer.features.shape == (569, 30) and cancer.num_classes == 2
    assert cancer.features.min() >= -1 and cancer.features.max() <= 1
    digits = load_builtin("digits")
    assert digits.features.shape == (1797, 64) and digits.image_shape == (8, 8)
    assert digits.features.max() <= 1.0


def write(tmp_path, text):
    path = tmp_path / "site.csv"
    path.write_text(text)
    return path


def test_csv_loader_reads_named_columns(tmp_path):
    path = write(tmp_path, "age,bp,outcome,note\n50,1.5,1,3\n61,2.0,0,4\n")
    data = load_csv(path, label_column="outcome", feature_columns=["age", "bp"])
    np.testing.assert_allclose(data.features, [[50, 1.5], [61, 2.0]])
    assert data.labels.tolist() == [1, 0] and data.num_classes == 2


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("a,b\n1,2\n", {"label_column": "outcome"}, "no label column 'outcome'"),
        ("a,outcome\nx,1\n", {"label_column": "outcome"}, "line 2, column 'a': 'x' is not a number"),
        ("a,outcome\n1,0.5\n", {"label_column": "outcome"}, "must be a class number"),
        ("a,outcome\n", {"label_column": "outcome"}, "no records"),
        ("a,outcome\n1,1\n", {"label_column": "outcome", "feature_columns": ["zz"]}, "no feature column(s) ['zz']"),
    ],
)
def test_csv_problems_name_the_file_line_and_column(tmp_path, text, kwargs, message):
    with pytest.raises(DataError) as caught:
        load_csv(write(tmp_path, text), **kwargs)
    assert message in str(caught.value) and "site.csv" in str(caught.value)


def test_missing_csv_file_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_csv(tmp_path / "absent.csv", label_column="y")


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_every_model_is_opacus_compatible_and_seeded(name):
    make = lambda: build_model(ModelConfig(name=name), num_features=64, num_classes=10, image_shape=(8, 8), seed=7)
    model = make()
    assert ModuleValidator.validate(model, strict=False) == []
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    for a, b in zip(model.parameters(), make().parameters()):
        assert torch.equal(a, b)


def test_cnn_on_tabular_data_is_refused():
    with pytest.raises(ConfigError, match="needs image data"):
        build_model(ModelConfig(name="cnn"), num_features=30, num_classes=2, image_shape=None, seed=0)
