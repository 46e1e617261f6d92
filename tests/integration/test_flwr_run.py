"""Issue 14.4: the apps run a study the way `flwr run .` starts it, with nothing prepared.

`flwr run .` hands the ServerApp pyproject's run_config (relative sites_dir, empty output_dir)
and gives the simulated sites only a partition id; nothing of flsuite ran before. The first
tests start the apps so on the inline engine; the slow one runs `flwr run .` itself, as README
says, from a copy of the project in tmp_path, and stops the local SuperLink that Flower leaves
running by its PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flsuite.config import compose_study, to_run_config
from flsuite.coordinator import build_server_app
from flsuite.deployment.network import free_port
from flsuite.deployment.processes import flower_environment, flower_executable, terminate
from flsuite.errors import ConfigError, StudyAborted
from flsuite.flower import run_inline
from flsuite.site import build_client_app

REPO = Path(__file__).resolve().parents[2]


def flwr_like_run_config(*overrides: str) -> dict:
    """The run_config as `flwr run .` sends it: relative sites_dir, no output_dir."""
    config = to_run_config(compose_study(list(overrides)))
    assert config["sites_dir"] == ".flsuite/sites" and config["output_dir"] == ""
    return config


def test_a_secure_dp_study_started_like_flwr_run_prepares_its_sites_and_writes_under_flsuite_home(
        tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "superlink-started-here"
    elsewhere.mkdir()
    monkeypatch.setenv("FLSUITE_HOME", str(home))
    monkeypatch.chdir(elsewhere)  # where Flower's local SuperLink happened to start
    run_config = flwr_like_run_config("federation.rounds=2", "federation.num_sites=3", "federation.min_sites=3",
                                      "secagg.enabled=true", "privacy=dp")
    run_inline(build_server_app(), build_client_app(), run_config=run_config,
               node_configs=[{"partition-id": i} for i in range(3)], run_id=41)
    output = home / "outputs" / "run-41"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2, summary
    assert (output / "metrics.csv").is_file() and Path(summary["registry"]).is_dir()
    sites = home / ".flsuite" / "sites"
    for index in range(3):  # identity keys and ledgers that only `flsuite run` used to create
        assert (sites / f"site-{index}" / "identity.key").is_file()
        assert (sites / f"site-{index}" / "ledger.jsonl").is_file()
    assert not any(elsewhere.iterdir()), "nothing may be written where the SuperLink started"


def test_fewer_simulated_nodes_than_sites_fail_the_run_with_the_fix(tmp_path, monkeypatch):
    # Flower's simulation starts 2 nodes unless told otherwise; the 5-site study must fail the run.
    monkeypatch.setenv("FLSUITE_HOME", str(tmp_path))
    monkeypatch.setattr("flsuite.coordinator.flower_run.NODE_WAIT_S", 0.5)  # nodes that are not there never come
    with pytest.raises(ConfigError, match="num-supernodes=5"):
        run_inline(build_server_app(), build_client_app(), run_config=flwr_like_run_config(),
                   node_configs=[{"partition-id": i} for i in range(2)], run_id=1)
    assert not (tmp_path / ".flsuite").exists()  # nothing created for a study that cannot run


def test_a_study_that_aborts_fails_the_flower_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FLSUITE_HOME", str(tmp_path))
    run_config = flwr_like_run_config("federation.rounds=1", "federation.num_sites=3", "federation.min_sites=3",
                                      "secagg.enabled=false", "privacy=none")
    with pytest.raises(StudyAborted):
        run_inline(build_server_app(), build_client_app(), run_config=run_config,
                   node_configs=[{"partition-id": i} for i in range(3)], run_id=2,
                   drop=lambda message: message.metadata.message_type == "train")  # every training reply is lost
    assert json.loads((tmp_path / "outputs" / "run-2" / "summary.json").read_text())["status"] != "completed"


def _superlinks_of(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLink processes whose environment names this test's FLWR_HOME."""
    found = []
    marker = f"FLWR_HOME={flwr_home}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.deployment
def test_flwr_run_from_a_fresh_copy_runs_the_default_study_and_writes_its_outputs(tmp_path):
    project = tmp_path / "flsuite"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "outputs", ".flsuite", ".pytest_cache")
    shutil.copytree(REPO, project, ignore=ignore)
    flwr_home, flsuite_home = tmp_path / "flwr-home", tmp_path / "flsuite-home"
    env = flower_environment({  # README's lines run in the activated venv: Flower's programs on PATH
        "PYTHONPATH": str(project),
        "FLWR_HOME": str(flwr_home),
        "FLSUITE_HOME": str(flsuite_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # README's line: flsuite is installed with CPU torch; no per-run `uv sync`.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    })
    command = [flower_executable("flwr"), "run", ".", "--federation-config", "num-supernodes=5", "--stream"]
    try:
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=1500,  # noqa: S603
                                check=False)
    finally:
        terminate(_superlinks_of(flwr_home), timeout=10)
    log = result.stdout + result.stderr
    runs = sorted((flsuite_home / "outputs").glob("run-*"))
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), log[-6000:]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 10, summary
    config = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert config["secagg"]["enabled"] and config["privacy"]["enabled"], config
    assert set(summary["privacy"]["sites"]) == {f"site-{i}" for i in range(5)}
    rows = json.loads((runs[0] / "metrics.json").read_text())
    assert len(rows) == 10 and all(row["sites"] == 5 and not row["failures"] for row in rows), rows
    assert Path(summary["registry"]).is_dir() and (runs[0] / "privacy.csv").is_file()
    for index in range(5):
        assert (flsuite_home / ".flsuite" / "sites" / f"site-{index}" / "identity.key").is_file()
