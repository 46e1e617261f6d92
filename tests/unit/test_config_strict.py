"""The schema refuses values that would only fail later: non-finite numbers, true/false or
text for numbers, out-of-range seeds, zero noise, CSV settings without a CSV dataset."""

from __future__ import annotations

import pytest

from flsuite.config import StudyConfig, compose_study, from_run_config, to_run_config
from flsuite.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["training.learning_rate=inf"], ["training.learning_rate=inf", "finite number"]),
        (["training.learning_rate=nan"], ["training.learning_rate=nan", "finite number"]),
        (["privacy.max_epsilon=-inf"], ["privacy.max_epsilon=-inf", "finite number"]),
        (["privacy.noise_multiplier=0"], ["privacy.noise_multiplier=0", "> 0"]),
        (["seed=-1"], ["seed=-1", ">= 0"]),
        (["seed=4294967296"], ["seed=4294967296", "<= 4294967295"]),
        (["data.seed=-1"], ["data.seed=-1", ">= 0"]),
        (["federation.rounds=true"], ["federation.rounds=True", "integer", "true/false is not a number"]),
        (["training.learning_rate=false"], ["training.learning_rate=False", "true/false is not a number"]),
        (["federation.rounds=2.5"], ["federation.rounds=2.5", "expected an integer"]),
        (["federation.rounds='3'"], ["federation.rounds='3'", "not text"]),
        (["privacy.enabled=1"], ["privacy.enabled=1", "expected true or false"]),
        (["data.csv_path=x.csv"], ["data.csv_path='x.csv'", "data.dataset='breast_cancer'", "`data=csv`"]),
        (["data.label_column=outcome"], ["data.label_column='outcome'", "`data=csv`"]),
        (["data.num_classes=3"], ["data.num_classes=3", "`data=csv`"]),
        (["+data.feature_columns=[a,b]"], ["data.feature_columns=['a', 'b']", "`data=csv`"]),
    ],
)
def test_bad_values_are_refused_naming_the_key_the_value_and_what_is_allowed(overrides, named):
    with pytest.raises(ConfigError) as caught:
        compose_study(overrides)
    message = str(caught.value)
    for fragment in named:
        assert fragment in message
    assert "\n" not in message


def test_every_bad_field_is_named_in_one_message():
    with pytest.raises(ConfigError) as caught:
        compose_study(["seed=-1", "training.learning_rate=inf", "federation.rounds=true"])
    message = str(caught.value)
    assert "seed=-1" in message and "training.learning_rate=inf" in message and "federation.rounds=True" in message


def test_integers_are_still_numbers():
    study = compose_study(["training.learning_rate=1", "federation.round_timeout_s=60", "seed=4294967295"])
    assert study.training.learning_rate == 1.0 and study.federation.round_timeout_s == 60.0
    assert study.seed == 2**32 - 1


def test_csv_settings_with_a_csv_dataset_are_accepted():
    study = compose_study(["data=csv", "data.csv_path=x.csv", "data.num_classes=3", "+data.feature_columns=[a,b]"])
    assert (study.data.csv_path, study.data.num_classes, study.data.feature_columns) == ("x.csv", 3, ["a", "b"])


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=digits_dp"], ["privacy.noise_multiplier=1.2"], ["data=csv", "data.csv_path=x.csv", "+data.feature_columns=[a,b]"]],
)
def test_values_arriving_as_text_from_flower_still_validate(overrides):
    study = compose_study(overrides)
    as_text = {key: (str(value).lower() if isinstance(value, bool) else str(value)) for key, value in to_run_config(study).items()}
    assert from_run_config(as_text) == study


@pytest.mark.parametrize(
    ("key", "text", "named"),
    [
        ("federation.rounds", "true", ["federation.rounds='true'", "expected an integer"]),
        ("federation.rounds", "2.5", ["federation.rounds='2.5'", "expected an integer"]),
        ("training.learning_rate", "inf", ["training.learning_rate=inf", "finite number"]),
        ("seed", "-1", ["seed=-1", ">= 0"]),
        ("privacy.enabled", "yes", ["privacy.enabled='yes'", "expected true or false"]),
    ],
)
def test_bad_text_from_flower_is_refused(key, text, named):
    run_config = {**to_run_config(StudyConfig()), key: text}
    with pytest.raises(ConfigError) as caught:
        from_run_config(run_config)
    for fragment in named:
        assert fragment in str(caught.value)
