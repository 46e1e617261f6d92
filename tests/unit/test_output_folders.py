"""Output folders named after the experiment and its overrides; Hydra's run and sweep dirs honoured."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from flsuite.config.output_folders import MAX_NAME, HydraDirs, run_folder, safe_name, split_hydra_dirs, sweep_folders
from flsuite.errors import ConfigError

STAMP = datetime(2026, 11, 30, 10, 11, 12)
NONE = HydraDirs()


def test_a_run_is_named_after_its_experiment_and_overrides():
    folder = run_folder("digits_dp", ["experiment=digits_dp", "privacy.target_epsilon=1"], STAMP, output_dir=None, dirs=NONE)
    assert folder == Path("outputs/2026-11-30/10-11-12_digits_dp_privacy.target_epsilon=1")
    assert run_folder("default", [], STAMP, output_dir=None, dirs=NONE).name == "10-11-12_default"


def test_unsafe_characters_and_long_names_are_tamed():
    name = safe_name("10-11-12", "csv", "data.csv_path=/home/me/my data/../x.csv")
    assert "/" not in name and " " not in name and name.startswith("10-11-12_csv_data.csv_path=-home-me-my-data-")
    long_a = safe_name("t", *(f"federation.rounds={i}" for i in range(40)))
    long_b = safe_name("t", *(f"federation.rounds={i}" for i in range(41)))
    assert len(long_a) <= MAX_NAME and len(long_b) <= MAX_NAME and long_a != long_b


def test_hydra_dirs_are_taken_out_of_the_overrides_and_honoured():
    overrides, dirs = split_hydra_dirs(["federation.rounds=2", "hydra.run.dir=runs/${now:%Y}/x"], multirun=False)
    assert overrides == ["federation.rounds=2"]
    assert run_folder("smoke", overrides, STAMP, output_dir=None, dirs=dirs) == Path("runs/2026/x")
    overrides, dirs = split_hydra_dirs(["model=logreg,mlp", "++hydra.sweep.dir=sw"], multirun=True)
    root, runs = sweep_folders("smoke", [["model=logreg"], ["model=mlp"]], STAMP, output_dir=None, dirs=dirs)
    assert root == Path("sw") and runs == [Path("sw/0_model=logreg"), Path("sw/1_model=mlp")]


@pytest.mark.parametrize(
    ("overrides", "multirun", "fragment"),
    [
        (["hydra.job.chdir=true"], False, "honours only"),
        (["hydra.run.dir=x"], True, "applies to a single run"),
        (["hydra.sweep.dir=x"], False, "applies to a sweep"),
        (["hydra.run.dir="], False, "names no folder"),
    ],
)
def test_hydra_settings_flsuite_cannot_honour_are_refused(overrides, multirun, fragment):
    with pytest.raises(ConfigError, match=fragment):
        split_hydra_dirs(overrides, multirun=multirun)


def test_output_dir_and_hydra_run_dir_together_are_refused():
    with pytest.raises(ConfigError, match="give one"):
        run_folder("smoke", [], STAMP, output_dir=Path("o"), dirs=HydraDirs(run_dir="r"))
    with pytest.raises(ConfigError, match=r"\$\{now:FORMAT\}"):
        run_folder("smoke", [], STAMP, output_dir=None, dirs=HydraDirs(run_dir="r/${oc.env:HOME}"))
