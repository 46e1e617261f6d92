"""The central evaluation's ROC-AUC, computed without scikit-learn, is scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from flsuite.training.local import binary_auc


@pytest.mark.parametrize("seed", range(6))
def test_binary_auc_equals_scikit_learn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.random(n).astype(np.float32)
    if seed % 2:  # coarse scores: many ties, across and within classes
        scores = np.round(scores * 4) / 4
    assert binary_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_binary_auc_known_answers():
    assert binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert binary_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert binary_auc(np.array([1, 0]), np.array([0.9, 0.1])) == 1.0
