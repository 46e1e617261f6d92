"""`flsuite launch` before anything runs: the plan, the run_config it sends, the staged app,
and the clear errors for bad input and a coordinator that does not answer.

No Flower processes start here (the end-to-end launches are in test_deployment_study.py);
the federation on disk is real (PKI, coordinator config, FLWR_HOME connection).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from flsuite.config import from_run_config
from flsuite.coordinator.launch import (
    check_coordinator_answers,
    default_app_dir,
    plan_launch,
    read_connection,
    run_config_toml,
    stage_app,
)
from flsuite.coordinator.submit import failure_reason, progress_line
from flsuite.coordinator.superlink import flwr_home
from flsuite.deployment.testing import FederationFiles
from flsuite.errors import ConfigError, CoordinatorUnreachable, DeploymentError


def test_plan_marks_the_study_deployment_with_absolute_paths(files: FederationFiles, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    coordinator = files.coordinator()
    plan = plan_launch(["federation.rounds=2", "federation.num_sites=3", "registry.path=models/reg"],
                       coordinator=coordinator, output_dir=Path("out"))
    assert plan.study.engine.name == "deployment"
    assert plan.output_dir == tmp_path / "out" and plan.study.output_dir == str(tmp_path / "out")
    assert plan.study.registry.path == str(tmp_path / "models" / "reg")
    assert plan.study.federation.rounds == 2
    assert plan.connection.federation == coordinator.federation == "flsuite-test"
    assert plan.connection.ca_certificate == coordinator.tls.ca_certificate
    assert plan.registered_sites == 3


def test_default_output_folder_is_dated_and_absolute(files: FederationFiles, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = plan_launch(["name=trial", "federation.rounds=2"], coordinator=files.coordinator())
    assert plan.output_dir.is_absolute() and plan.output_dir.is_relative_to(tmp_path / "outputs")
    # named as `flsuite run` names its folder: TIME_NAME_OVERRIDES (it was TIME_NAME, without the overrides)
    assert re.fullmatch(r"\d\d-\d\d-\d\d_trial_name=trial_federation.rounds=2", plan.output_dir.name)
    named = plan_launch(["name=trial", "hydra.run.dir=studies/${now:%Y}/one"], coordinator=files.coordinator())
    assert named.output_dir == (tmp_path / "studies" / datetime.now().strftime("%Y") / "one")
    with pytest.raises(ConfigError, match="hydra.job.chdir=true"):
        plan_launch(["hydra.job.chdir=true"], coordinator=files.coordinator())


def test_run_config_file_reads_back_as_the_same_study_through_flower(files: FederationFiles, tmp_path: Path) -> None:
    from flwr.common.config import flatten_dict, parse_config_args

    plan = plan_launch(["secagg.enabled=true", "federation.min_sites=3", "data=csv", "data.csv_path=sites.csv", "data.feature_columns=[a,b]",
                        'name="two words"'], coordinator=files.coordinator(), output_dir=tmp_path / "o d")
    path = tmp_path / "run_config.toml"
    path.write_text(run_config_toml(plan.run_config()))
    assert tomllib.loads(path.read_text()) == plan.run_config()
    parsed = parse_config_args([str(path)])  # exactly what `flwr run --run-config FILE` does
    assert parsed == plan.run_config()
    assert from_run_config(parsed) == plan.study
    staged = stage_app(default_app_dir(), tmp_path / "app")
    declared = tomllib.loads((staged / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(parsed) == set(flatten_dict(declared))  # flwr refuses undeclared keys


def test_staged_app_builds_a_flower_app_bundle_without_the_repository_clutter(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    source = (default_app_dir() / "pyproject.toml").read_bytes()
    app = stage_app(default_app_dir(), tmp_path / "app")
    assert (default_app_dir() / "pyproject.toml").read_bytes() == source  # only the staged copy is synced
    assert (app / "server" / "app.py").is_file() and (app / "clients" / "app.py").is_file()
    assert (app / "configs" / "config.yaml").is_file()
    assert not (app / ".venv").exists() and not (app / "tests").exists() and not list(app.rglob("__pycache__"))
    fab = build_fab_from_disk(app)
    assert 0 < len(fab) < 10 * 1024 * 1024


def test_bad_overrides_fail_before_anything_runs(files: FederationFiles, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="federation.rounds=0"):
        plan_launch(["federation.rounds=0"], coordinator=files.coordinator(), output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="engine=ray"):
        plan_launch(["engine=ray"], coordinator=files.coordinator(), output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unknown_or_mismatched_federation_is_named(files: FederationFiles, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--federation other does not match federation: flsuite-test"):
        plan_launch([], federation="other", coordinator=files.coordinator(), output_dir=tmp_path / "o")
    home = flwr_home(files.coordinator())
    with pytest.raises(DeploymentError, match=r"federation nowhere is not in .*config.toml \(known: flsuite-test\)"):
        read_connection(home, "nowhere")
    with pytest.raises(DeploymentError, match="does not exist, so no connection is known"):
        read_connection(tmp_path, "flsuite-test")


def test_an_output_folder_holding_a_study_is_refused(files: FederationFiles, tmp_path: Path) -> None:
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a study"):
        plan_launch([], coordinator=files.coordinator(), output_dir=tmp_path / "done")


def test_a_coordinator_that_does_not_answer_is_named(files: FederationFiles, tmp_path: Path) -> None:
    plan = plan_launch([], coordinator=files.coordinator(), output_dir=tmp_path / "o")
    with pytest.raises(CoordinatorUnreachable, match=rf"federation flsuite-test: .*{plan.connection.address}.* does not answer"):
        check_coordinator_answers(plan.connection, timeout=2)


def test_launch_command_exits_2_with_one_line_when_the_coordinator_is_down(files: FederationFiles, tmp_path: Path) -> None:
    completed = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "flsuite.cli.main", "launch", "federation.rounds=2", "--config", str(files.coordinator_config),
         "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("error: federation flsuite-test: the coordinator address 127.0.0.1:")
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "o").exists()


def test_launch_command_exits_2_on_a_bad_override(files: FederationFiles, tmp_path: Path) -> None:
    completed = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "flsuite.cli.main", "launch", "federation.min_sites=9", "--config", str(files.coordinator_config)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert "min_sites=9 is more than num_sites" in completed.stderr and "Traceback" not in completed.stderr


def test_progress_line_names_round_metrics_and_failures() -> None:
    row = {"round": 1, "accuracy": 0.91234, "loss": 0.3, "auc": None, "sites": 2, "failures": 1, "wall_s": 61.4}
    assert progress_line(row, 2) == "round 1/2: accuracy 0.912, loss 0.300, 2 sites, 1 failed (61 s)"
    assert progress_line({"round": 2, "sites": 3, "failures": 0}, 2) == "round 2/2: 3 sites"


def test_failure_reason_is_the_last_exception_line_of_the_servers_log() -> None:
    log = [
        "ERROR :     ServerApp raised an exception",
        "Traceback (most recent call last):",
        '  File "server/app.py", line 13, in main',
        "flsuite.errors.PlanError: site node 1 could not report its privacy status: Error: Node Unavailable",
        "ERROR :     Exit Code: 201",
    ]
    assert failure_reason(log) == "PlanError: site node 1 could not report its privacy status: Error: Node Unavailable"
    assert failure_reason(["INFO :      Starting logstream", "Successfully started run 7"]) is None
