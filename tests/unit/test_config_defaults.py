"""One source for every default: the schema's defaults are the default study, and every
YAML file states only what it changes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from flsuite.config import StudyConfig, compose_study, from_run_config, to_run_config
from flsuite.config.schema import PrivacyConfig
from flsuite.errors import ConfigError
from tests.conftest import REPO

CONFIGS = REPO / "configs"
GROUP_FILES = sorted(
    (path.parent.name, path.stem) for path in CONFIGS.glob("*/*.yaml") if path.parent.name != "experiment"
)
EXPERIMENTS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))


def test_the_default_study_is_the_schema_defaults():
    assert compose_study([]) == StudyConfig()


def test_an_empty_flower_run_config_is_the_default_study():
    """`flwr.simulation.run_simulation` hands the apps an empty run_config."""
    assert from_run_config({}) == compose_study([])


def test_config_yaml_states_nothing_the_schema_already_says():
    stated = _stated(CONFIGS / "config.yaml")
    defaults = StudyConfig()
    assert {key: value for key, value in stated.items() if _value(defaults, key) == value} == {}


@pytest.mark.parametrize(("group", "option"), GROUP_FILES)
def test_group_files_state_only_what_they_change(group, option, tmp_path, monkeypatch):
    path = CONFIGS / group / f"{option}.yaml"
    stated = _stated(path)
    baseline = _compose_without_body(tmp_path, monkeypatch, path, [f"{group}={option}"])
    prefix = "" if path.read_text().startswith("# @package _global_") else f"{group}."  # a model's own learning rate
    repeats = {key: value for key, value in stated.items() if _value(baseline, f"{prefix}{key}") == value}
    assert repeats == {}, f"{group}/{option}.yaml repeats what it would get anyway: {repeats}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_files_state_only_what_they_change(name, tmp_path, monkeypatch):
    path = CONFIGS / "experiment" / f"{name}.yaml"
    stated = _stated(path)
    baseline = _compose_without_body(tmp_path, monkeypatch, path, [f"experiment={name}"])
    repeats = {key: value for key, value in stated.items() if _value(baseline, key) == value}
    assert repeats == {}, f"experiment/{name}.yaml repeats what its defaults give: {repeats}"


def test_group_options_that_switch_a_feature_off_still_do():
    assert compose_study(["privacy=none"]).privacy.enabled is False
    assert compose_study(["secagg=none"]).secagg.enabled is False
    assert compose_study(["experiment=digits"]).privacy.enabled is False
    assert compose_study(["experiment=digits_dp"]).privacy.target_epsilon == 8.0


def test_a_fixed_noise_multiplier_replaces_the_default_target_epsilon():
    privacy = compose_study(["privacy.noise_multiplier=1.2"]).privacy
    assert (privacy.enabled, privacy.noise_multiplier, privacy.target_epsilon) == (True, 1.2, None)
    assert PrivacyConfig(noise_multiplier=1.2).target_epsilon is None
    assert PrivacyConfig().target_epsilon == 3.0


def test_a_noise_multiplier_next_to_an_explicit_target_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"privacy.noise_multiplier=1.2 and privacy.target_epsilon=8.0 are both set.*target_epsilon=null"):
        compose_study(["experiment=digits_dp", "privacy.noise_multiplier=1.2"])
    fixed = compose_study(["experiment=digits_dp", "privacy.noise_multiplier=1.2", "privacy.target_epsilon=null"])
    assert (fixed.privacy.noise_multiplier, fixed.privacy.target_epsilon) == (1.2, None)


def test_dp_without_any_noise_setting_is_refused():
    with pytest.raises(ConfigError, match="privacy.target_epsilon or privacy.noise_multiplier"):
        compose_study(["privacy.target_epsilon=null"])


def test_a_fixed_noise_study_round_trips_through_flower():
    study = compose_study(["privacy.noise_multiplier=1.2"])
    assert from_run_config(to_run_config(study)) == study


def test_flower_run_config_with_only_a_noise_override_names_the_fix():
    """`flwr run --run-config privacy.noise_multiplier=1.2` keeps pyproject's target_epsilon = 3.0."""
    run_config = {**to_run_config(StudyConfig()), "privacy.noise_multiplier": 1.2}
    with pytest.raises(ConfigError, match="Flower's run_config"):
        from_run_config(run_config)


def _stated(path: Path) -> dict[str, Any]:
    """The dotted keys and values a YAML file sets (its defaults list and `???` excluded)."""
    body = yaml.safe_load(path.read_text()) or {}
    body.pop("defaults", None)
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif value != "???":
                flat[f"{prefix}{key}"] = value

    walk(body, "")
    return flat


def _compose_without_body(tmp_path: Path, monkeypatch, path: Path, overrides: list[str]) -> StudyConfig:
    """Compose ``overrides`` on a copy of the tree where ``path`` keeps only its header and defaults list."""
    tree = tmp_path / "configs"
    shutil.copytree(CONFIGS, tree)
    text = path.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    defaults = (yaml.safe_load(text) or {}).get("defaults")
    rest = yaml.safe_dump({"defaults": defaults}) if defaults is not None else ""
    (tree / path.relative_to(CONFIGS)).write_text(header + rest)
    monkeypatch.setenv("FLSUITE_CONFIG_DIR", str(tree))
    return compose_study(overrides)


def _value(study: StudyConfig, dotted: str) -> Any:
    node: Any = study
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_the_run_config_is_validated_once_and_a_changed_one_again():
    """Sites read the study from every message's run_config: the same one gives the same study object."""
    run_config = to_run_config(compose_study(["federation.rounds=4"]))
    first = from_run_config(dict(run_config))
    assert from_run_config(dict(reversed(list(run_config.items())))) is first  # order does not matter
    changed = from_run_config({**run_config, "federation.rounds": 5})
    assert (first.federation.rounds, changed.federation.rounds) == (4, 5)


@pytest.mark.parametrize("value", [True, 1.0])
def test_a_value_equal_in_python_but_of_another_type_is_not_served_from_the_cache(value: object):
    """True == 1 == 1.0 in Python, but the strict schema refuses a bool or a float for the round count:
    a cache keyed on values alone would hand back the study validated for rounds=1."""
    run_config = to_run_config(compose_study(["federation.rounds=1"]))
    assert from_run_config(run_config).federation.rounds == 1
    with pytest.raises(ConfigError, match="federation.rounds"):
        from_run_config({**run_config, "federation.rounds": value})


def test_a_numpy_bool_is_not_served_the_study_of_a_python_bool():
    """np.False_ is not a Python bool to the strict schema, though its type is also named 'bool'."""
    import numpy as np

    run_config = to_run_config(compose_study([]))
    assert from_run_config(run_config).resume is False
    with pytest.raises(ConfigError, match="resume"):
        from_run_config({**run_config, "resume": np.False_})


def test_minus_zero_and_zero_are_different_run_configs():
    """0.0 == -0.0, but the study's config hash tells them apart: the cache must as well."""
    run_config = to_run_config(compose_study([]))
    plus = from_run_config({**run_config, "federation.proximal_mu": 0.0})
    minus = from_run_config({**run_config, "federation.proximal_mu": -0.0})
    assert str(plus.federation.proximal_mu) == "0.0" and str(minus.federation.proximal_mu) == "-0.0"
