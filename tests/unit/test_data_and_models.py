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


def test_breast_cancer_read_without_scikit_learn_is_load_breast_cancer_exactly():
    """The study reads scikit-learn's bundled files itself (no sklearn import on its path):
    the same records, labels and description as ``load_breast_cancer``, bit for bit."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    from flsuite.data.datasets import _bundled_breast_cancer

    data, target, description = _bundled_breast_cancer()
    bundle = load_breast_cancer()
    assert data.dtype == bundle.data.dtype and np.array_equal(data, bundle.data)
    assert np.array_equal(target, bundle.target) and description == bundle.DESCR


def test_loading_breast_cancer_imports_no_scikit_learn():
    import subprocess
    import sys

    code = "import sys; from flsuite.data.datasets import load_builtin; load_builtin('breast_cancer'); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


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
