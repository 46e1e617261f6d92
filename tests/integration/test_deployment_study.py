"""End to end: a coordinator and 3 sites as real processes, TLS and node authentication on,
run a 2-round study submitted with `flwr run APP FEDERATION --stream` to completion.

Marked deployment and slow (about 1-2 minutes). Every process is stopped by PID at the end,
also when the test fails. The app is run from a copy of the project so that Flower's CLI
never rewrites the repository's pyproject.toml.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from flsuite.deployment import start_site
from flsuite.deployment.coordinator import flwr_home
from flsuite.deployment.processes import flower_environment, flower_executable
from flsuite.deployment.testing import FederationFiles, running_federation, write_federation

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[2]
SITES = ("hospital-a", "hospital-b", "hospital-c")


def write_site_data(files: FederationFiles) -> None:
    """Each site's CSV holds its own partition of the breast-cancer records."""
    from flsuite.config.schema import DataConfig
    from flsuite.data.study_data import split_study

    split = split_study(DataConfig(dataset="breast_cancer"), len(SITES))
    for name, data in zip(SITES, split.sites):
        with (files.root / "data" / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([f"f{i}" for i in range(data.num_features)] + ["label"])
            for features, label in zip(data.features.tolist(), data.labels.tolist()):
                writer.writerow([*features, label])


def copy_app(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (PROJECT / name).exists():
            shutil.copy(PROJECT / name, target / name)
    for folder in ("flsuite", "server", "clients", "configs"):
        shutil.copytree(PROJECT / folder, target / folder, ignore=ignore)
    return target


def test_two_round_study_across_processes_completes(tmp_path: Path) -> None:
    files = write_federation(tmp_path / "federation", sites=SITES)
    write_site_data(files)
    app = copy_app(tmp_path / "app")
    output = tmp_path / "study"
    with running_federation(files) as coordinator:
        for name in SITES:
            assert start_site(files.site(name), connect_timeout=90).node_id == coordinator.nodes[name]
        env = flower_environment({"FLWR_HOME": str(flwr_home(files.coordinator()))})
        run_config = (
            f'federation.rounds=2 federation.num_sites={len(SITES)} federation.min_sites={len(SITES)} '
            f'output_dir="{output}"'
        )
        completed = subprocess.run(
            [flower_executable("flwr"), "run", str(app), coordinator.federation, "--run-config", run_config, "--stream"],
            env=env, capture_output=True, text=True, timeout=540, check=False, cwd=tmp_path,
        )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]
    assert "Received 3 results and 0 failures" in log
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert summary["rounds_completed"] == 2 and summary["sites"] == len(SITES)
    assert summary["final_accuracy"] > 0.8
