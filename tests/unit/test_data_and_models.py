"""The built-in datasets and the model zoo (the site CSV loader is in test_csv_source.py)."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from flsuite.config.schema import ModelConfig
from flsuite.data.datasets import load_builtin
from flsuite.errors import ConfigError
from flsuite.models.zoo import build_model


def test_builtin_datasets_are_the_real_ones_scaled_without_looking_at_records():
    cancer = load_builtin("breast_cancer")
    assert cancer.features.shape == (569, 30) and cancer.num_classes == 2
    assert cancer.features.min() >= -1 and cancer.features.max() <= 1
    digits = load_builtin("digits")
    assert digits.features.shape == (1797, 64) and digits.image_shape == (8, 8)
    assert digits.features.max() <= 1.0


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
