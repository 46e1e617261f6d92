"""`flsuite run` writes where it says: named folders, Hydra's run and sweep dirs, the sweep table on disk."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli

FAST = ["experiment=smoke", "privacy=none", "secagg=none", "federation.rounds=1"]


@pytest.mark.slow  # a whole `flsuite run`: 8 s on a slow host
def test_hydra_run_dir_is_honoured(tmp_path):
    target = tmp_path / "chosen"
    result = run_cli("run", *FAST, f"sites_dir={tmp_path / 'sites'}", f"hydra.run.dir={target}", "--format", "json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((target / "summary.json").read_text())["status"] == "completed"
    assert json.loads(result.stdout)["output_dir"] == str(target.resolve())  # stdout holds only the summary
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # a whole `flsuite run`: 8 s on a slow host
def test_the_default_folder_is_named_after_the_experiment_and_overrides(tmp_path):
    result = run_cli("run", *FAST, "sites_dir=sites", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [folder] = (tmp_path / "outputs").glob("*/*")
    assert folder.name.endswith("_smoke_privacy=none_secagg=none_federation.rounds=1_sites_dir=sites")
    assert (folder / "summary.json").is_file()


def test_an_unknown_hydra_setting_is_refused_not_ignored(tmp_path):
    result = run_cli("run", *FAST, "hydra.job.chdir=true", cwd=tmp_path)
    assert result.returncode == 2 and "hydra.job.chdir" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_sweep_writes_its_table_to_hydra_sweep_dir(tmp_path):
    target = tmp_path / "sweep"
    result = run_cli("run", "-m", *FAST[:-1], "federation.rounds=1,2", f"sites_dir={tmp_path / 'sites'}",
                     f"hydra.sweep.dir={target}", "--format", "csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((target / "sweep.csv").open()))
    assert [r["output folder"] for r in rows] == [str(target / "0_federation.rounds=1"), str(target / "1_federation.rounds=2")]
    assert list(csv.DictReader(result.stdout.splitlines())) == rows  # stdout holds only the table
    assert json.loads((target / "sweep.json").read_text())["rows"][1]["status"] == "completed"
    assert (target / "1_federation.rounds=2" / "summary.json").is_file()
