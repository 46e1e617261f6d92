"""Planning a study: one schedule for plan and training, per-site sigma, caps checked before round 1."""

from __future__ import annotations

import pytest

from flsuite.errors import ConfigError, PlanError
from flsuite.privacy import SitePlanInput, StudyOverBudget, epsilon, plan_study, poisson_schedule

COMMON = dict(batch_size=16, local_epochs=2, rounds=10, delta=1e-5)


def test_schedule_follows_opacus_sampling():
    schedule = poisson_schedule(records=91, batch_size=16, local_epochs=2)
    assert schedule.steps_per_epoch == 6 and schedule.sample_rate == 1 / 6
    assert schedule.steps_per_round == 12 and schedule.expected_batch_size == 15
    exact = poisson_schedule(records=96, batch_size=16, local_epochs=1)
    assert exact.sample_rate == 16 / 96 and exact.steps_per_round == 6


def test_schedule_refuses_a_batch_larger_than_the_site():
    with pytest.raises(PlanError, match=r"batch_size 64 is larger than site 'tiny' \(40 records\)"):
        poisson_schedule(records=40, batch_size=64, local_epochs=1, site="tiny")
    with pytest.raises(PlanError, match="no training records"):
        poisson_schedule(records=0, batch_size=1, local_epochs=1)
    with pytest.raises(ConfigError, match="local_epochs"):
        poisson_schedule(records=40, batch_size=4, local_epochs=0)


def test_each_site_gets_its_own_sigma_and_lands_at_or_just_below_the_target():
    sites = [SitePlanInput(name="small", records=40), SitePlanInput(name="large", records=400)]
    rows = plan_study(sites, target_epsilon=3.0, accountant="rdp", **COMMON)
    assert [r.site for r in rows] == ["small", "large"]
    for row in rows:
        assert 3.0 * 0.99 <= row.study_epsilon <= 3.0
        assert row.projected_epsilon == row.study_epsilon and row.prior_epsilon == 0.0
        assert row.total_steps == row.steps_per_round * 10
        assert epsilon([row.phase], delta=1e-5, accountant="rdp") == row.study_epsilon
    small, large = rows
    assert small.sample_rate > large.sample_rate and small.noise_multiplier > large.noise_multiplier
    assert small.remaining is None


def test_prv_plan_lands_at_or_below_the_target():
    rows = plan_study(
        [SitePlanInput(name="a", records=70), SitePlanInput(name="b", records=134)],
        batch_size=16, local_epochs=1, rounds=20, delta=1e-5, target_epsilon=3.0, accountant="prv",
    )
    for row in rows:
        assert 3.0 * 0.99 <= row.projected_epsilon <= 3.0


def test_a_fixed_noise_multiplier_is_projected_per_site():
    rows = plan_study([SitePlanInput(name="a", records=100, max_epsilon=30.0)], noise_multiplier=1.2, accountant="rdp", **COMMON)
    (row,) = rows
    assert row.noise_multiplier == 1.2
    assert 0 < row.remaining == pytest.approx(30.0 - row.projected_epsilon)


def test_a_second_study_composes_with_the_first_and_must_fit_the_cap():
    prior = ((1 / 7, 2.0, 140),)
    fits = SitePlanInput(name="roomy", records=100, prior_phases=prior, max_epsilon=10.0)
    rows = plan_study([fits], target_epsilon=3.0, accountant="rdp", **COMMON)
    (row,) = rows
    assert row.prior_epsilon > 0
    assert row.study_epsilon <= 3.0 < row.projected_epsilon < row.prior_epsilon + row.study_epsilon
    assert row.remaining == pytest.approx(10.0 - row.projected_epsilon)


def test_a_site_whose_budget_cannot_fit_fails_before_round_one_naming_it_and_by_how_much():
    prior = ((1 / 7, 2.0, 140),)
    sites = [
        SitePlanInput(name="fresh", records=100, max_epsilon=4.0),
        SitePlanInput(name="hospital-b", records=100, prior_phases=prior, max_epsilon=4.0),
    ]
    with pytest.raises(StudyOverBudget, match=r"site 'hospital-b' would reach epsilon .* cap 4: over by \d") as caught:
        plan_study(sites, target_epsilon=3.0, accountant="rdp", **COMMON)
    error = caught.value
    assert "fresh" not in str(error)
    assert [r.site for r in error.rows] == ["fresh", "hospital-b"] and [r.site for r in error.over_budget] == ["hospital-b"]
    assert isinstance(error, PlanError)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({}, ConfigError, "exactly one"),
        ({"target_epsilon": 3.0, "noise_multiplier": 1.0}, ConfigError, "exactly one"),
        ({"target_epsilon": 0.0}, ConfigError, "target_epsilon"),
        ({"noise_multiplier": -1.0}, ConfigError, "noise_multiplier"),
        ({"target_epsilon": 3.0, "rounds": 0}, ConfigError, "rounds"),
        ({"target_epsilon": 3.0, "delta": 0.05}, ConfigError, "site 'a'"),
        ({"target_epsilon": 3.0, "batch_size": 500}, PlanError, "site 'a'"),
        ({"target_epsilon": 3.0, "accountant": "gdp"}, ConfigError, "under-reports"),
    ],
)
def test_bad_plans_fail_before_any_training(changes, error, match):
    kwargs = COMMON | {"accountant": "rdp"} | changes
    with pytest.raises(error, match=match):
        plan_study([SitePlanInput(name="a", records=100)], **kwargs)


def test_sites_must_be_named_uniquely_and_caps_positive():
    with pytest.raises(PlanError, match="unique"):
        plan_study([SitePlanInput(name="a", records=50)] * 2, target_epsilon=1.0, accountant="rdp", **COMMON)
    with pytest.raises(ConfigError, match="site 'a'"):
        plan_study([SitePlanInput(name="a", records=50, max_epsilon=0)], target_epsilon=1.0, accountant="rdp", **COMMON)
