"""The config schema, Hydra composition and the run_config bridge."""

from __future__ import annotations

import tomllib

import pytest
from flwr.common.config import flatten_dict
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flsuite.config import StudyConfig, compose_study, expand_sweep, from_run_config, to_run_config
from flsuite.config.schema import DataConfig
from flsuite.errors import ConfigError
from tests.conftest import REPO


def test_default_study_is_breast_cancer_over_five_dirichlet_sites():
    study = compose_study([])
    assert study.data.dataset == "breast_cancer"
    assert study.federation.num_sites == 5
    assert study.data.partitioning == "dirichlet" and study.data.dirichlet_alpha == 0.5
    assert study.engine.name == "inline"


def test_experiment_files_state_only_their_differences():
    study = compose_study(["experiment=digits"])
    assert (study.data.dataset, study.model.name, study.federation.rounds) == ("digits", "mlp", 15)
    assert study.federation.num_sites == 5  # inherited from the defaults


def test_config_is_frozen_and_refuses_unknown_keys():
    study = StudyConfig()
    with pytest.raises(ValidationError):
        study.federation.rounds = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        StudyConfig.model_validate({"federation": {"roundz": 3}})


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("federation.rounds=0", ["federation.rounds=0", ">= 1"]),
        ("data.dirichlet_alpha=-1", ["data.dirichlet_alpha=-1", "> 0"]),
        ("training.learning_rate=fast", ["training.learning_rate='fast'", "expected a number"]),
        ("federation.roundz=3", ["federation.roundz", "unknown key"]),
        ("model=transformer", ["model/transformer", "cnn logreg mlp"]),
        ("federation.strategy=fedsgd", ["federation.strategy='fedsgd'", "fedavg"]),
        ("federation.min_sites=9", ["min_sites=9", "num_sites=5"]),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(override, named):
    with pytest.raises(ConfigError) as caught:
        compose_study([override])
    for fragment in named:
        assert fragment in str(caught.value)


def test_csv_dataset_needs_a_path_and_a_label_column():
    with pytest.raises(ValidationError, match="csv_path"):
        DataConfig(dataset="csv")


def test_sweep_expands_to_the_cartesian_product():
    runs = expand_sweep(["model=logreg,mlp", "federation.rounds=1,2", "seed=3"])
    assert len(runs) == 4
    assert ["model=mlp", "federation.rounds=2", "seed=3"] in runs


def test_bridge_round_trips_the_default_and_experiment_studies():
    for overrides in ([], ["experiment=digits"], ["data=csv", "data.csv_path=x.csv", "+data.feature_columns=[a,b]"]):
        study = compose_study(overrides)
        flat = to_run_config(study)
        assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
        assert from_run_config(flat) == study


@settings(max_examples=40, deadline=None)
@given(
    rounds=st.integers(1, 500),
    alpha=st.floats(0.01, 100),
    lr=st.floats(1e-5, 10),
    features=st.none() | st.lists(st.text("abcxyz_", min_size=1, max_size=5), max_size=4),
    target=st.none() | st.floats(0.1, 20),
)
def test_bridge_round_trip_property(rounds, alpha, lr, features, target):
    raw = StudyConfig().model_dump()
    raw["federation"]["rounds"] = rounds
    raw["data"]["dirichlet_alpha"] = alpha
    if features is not None:  # feature columns belong to a CSV dataset
        raw["data"].update(dataset="csv", csv_path="x.csv", label_column="y", feature_columns=features)
    raw["training"]["learning_rate"] = lr
    raw["privacy"]["target_epsilon"] = target
    raw["privacy"]["noise_multiplier"] = 1.1 if target is None else None  # exactly one of the two
    study = StudyConfig.model_validate(raw)
    assert from_run_config(to_run_config(study)) == study


def test_pyproject_run_config_matches_the_default_study():
    """`flwr run` only accepts keys pyproject declares; its defaults must be the default study."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flatten_dict(declared) == to_run_config(compose_study([])), (
        "run `python -m flsuite.config.pyproject_sync` to update pyproject.toml"
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["federation.min_sites=2"], "at least 3 sites"),
        (["secagg.neighbours=3"], "must be even"),
        (["secagg.max_dropouts=4"], "at most 2 sites may drop"),
        (["secagg.threshold_fraction=0.5"], "secagg.threshold_fraction=0.5"),
    ],
)
def test_secure_aggregation_settings_that_cannot_protect_the_cohort_are_refused(overrides, named):
    with pytest.raises(ConfigError, match=named):
        compose_study(["secagg.enabled=true", *overrides])


def test_secure_aggregation_threshold_is_more_than_half_the_share_group():
    settings = compose_study(["secagg.enabled=true"]).secagg.settings_for(5)
    assert settings.threshold > settings.share_group / 2
    assert settings.tolerated_dropouts == settings.share_group - settings.threshold
