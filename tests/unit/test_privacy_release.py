"""Issue 13.3: the Gaussian release of evaluation counts, its accounting and its place in the plan."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld

from flsuite.errors import StudyOverBudget
from flsuite.privacy import (
    GAUSSIAN,
    DpEvent,
    epsilon,
    evaluation_phases,
    evaluation_rounds,
    noisy_accuracy,
    plan_study,
    release_counts,
)
from flsuite.privacy.events import InvalidDpEvent
from flsuite.privacy.plan import SitePlanInput

EVENT = dict(study_id="s", run_id="1", round=3, site="a", dataset="a", sample_rate=1.0, noise_multiplier=5.0, steps=1,
             max_grad_norm=math.sqrt(2), delta=1e-5, accountant="prv", rng="os", recorded_at="2026-01-01T00:00:00+00:00")


def test_fresh_noise_two_releases_of_the_same_counts_differ():
    first, second = release_counts([10, 7], [12, 9], noise_multiplier=5.0), release_counts([10, 7], [12, 9], noise_multiplier=5.0)
    assert first != second
    assert first[0] != [10.0, 7.0] and first[1] != [12.0, 9.0]


def test_the_noise_has_the_stated_scale():
    draws = [release_counts([0], [0], noise_multiplier=2.0)[0][0] for _ in range(4000)]
    std = math.sqrt(sum(d * d for d in draws) / len(draws))
    assert std == pytest.approx(2.0 * math.sqrt(2), rel=0.1)  # sigma x sensitivity sqrt(2)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_a_gaussian_event_is_accounted_at_least_as_dp_accountings_pld_of_the_gaussian_mechanism(accountant):
    event = DpEvent(**EVENT, mechanism=GAUSSIAN)
    accountant_pld = pld.PLDAccountant(value_discretization_interval=1e-4)
    accountant_pld.compose(dp_accounting.GaussianDpEvent(5.0))
    independent = accountant_pld.get_epsilon(1e-5)
    reported = epsilon([event], delta=1e-5, accountant=accountant)
    assert independent <= reported <= 1.1 * independent


def test_gaussian_events_round_trip_and_training_events_keep_their_old_form():
    event = DpEvent(**EVENT, mechanism=GAUSSIAN)
    assert DpEvent.from_json(event.to_json()) == event and event.to_dict()["mechanism"] == GAUSSIAN
    training = DpEvent(**{**EVENT, "sample_rate": 0.1, "steps": 10})
    assert "mechanism" not in training.to_dict() and DpEvent.from_dict(training.to_dict()) == training
    with pytest.raises(InvalidDpEvent, match="sample_rate must be 1"):
        DpEvent(**{**EVENT, "sample_rate": 0.5}, mechanism=GAUSSIAN)
    with pytest.raises(InvalidDpEvent, match="mechanism"):
        DpEvent(**EVENT, mechanism="laplace")


def test_evaluation_rounds():
    assert evaluation_rounds(10, 0) == (10,)
    assert evaluation_rounds(10, 3) == (3, 6, 9, 10)
    assert evaluation_phases(10, 1, 4.0) == ((1.0, 4.0, 10),)


def test_the_plan_budgets_the_evaluation_releases_within_the_target():
    site = SitePlanInput(name="a", records=100, max_epsilon=10.0)
    common = dict(batch_size=16, local_epochs=2, rounds=5, delta=1e-5, target_epsilon=3.0)
    plain = plan_study([site], **common)[0]
    with_eval = plan_study([site], **common, evaluation_phases=evaluation_phases(5, 0, 5.0))[0]
    assert with_eval.noise_multiplier > plain.noise_multiplier  # training pays for the release
    assert with_eval.study_epsilon <= 3.0 and with_eval.evaluation_releases == 1 and with_eval.evaluation_sigma == 5.0
    training_only = epsilon([with_eval.phase], delta=1e-5)
    assert with_eval.study_epsilon > training_only  # the plan's epsilon includes the evaluation


def test_a_study_whose_evaluation_passes_the_cap_is_refused():
    """With a fixed sigma the training alone fits the cap; its evaluation releases do not."""
    site = SitePlanInput(name="a", records=100, max_epsilon=1.0)
    common = dict(batch_size=16, local_epochs=1, rounds=2, delta=1e-5, noise_multiplier=4.0)
    assert plan_study([site], **common)[0].projected_epsilon < 1.0
    with pytest.raises(StudyOverBudget, match="site 'a'"):
        plan_study([site], **common, evaluation_phases=evaluation_phases(2, 1, 3.0))


def test_noisy_accuracy_is_clipped_and_states_its_noise():
    result = noisy_accuracy([12.0, 3.0], [10.0, 3.0], noise_multiplier=5.0)
    assert result.accuracy == 1.0 and result.noise_std > 0.5
    assert noisy_accuracy([-4.0], [2.0], noise_multiplier=1.0).accuracy == 0.0


def test_drift_between_beats_the_noise_only_when_the_data_moved():
    import numpy as np

    from flsuite.privacy import drift_between, histograms, release_histograms

    rng = np.random.default_rng(0)
    labels, features = rng.integers(0, 2, 400), rng.uniform(-1, 1, (400, 3))
    before = release_histograms(histograms(labels, features, num_classes=2, columns=[1], bins=5), noise_multiplier=1.0)
    same = release_histograms(histograms(labels, features, num_classes=2, columns=[1], bins=5), noise_multiplier=1.0)
    moved_features = features.copy()
    moved_features[:, 1] = rng.uniform(0.6, 1.0, 400)  # feature 1 moved to the top bin
    moved = release_histograms(histograms(labels, moved_features, num_classes=2, columns=[1], bins=5), noise_multiplier=1.0)
    assert not drift_between(before, same, noise_multiplier=1.0, threshold=0.2).flagged
    result = drift_between(before, moved, noise_multiplier=1.0, threshold=0.2)
    assert result.flagged and result.distance > 0.6 and 0 < result.margin < 0.05
