"""`flsuite run tracking=mlflow`, then MLflow's own client reading the store (issue 13's acceptance)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install 'flsuite[mlflow]'")

from mlflow.tracking import MlflowClient  # noqa: E402

from flsuite.registry import Registry  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


@pytest.mark.slow
def test_a_tracked_study_is_found_by_mlflows_client_with_its_rounds_and_model_versions(tmp_path):
    out = tmp_path / "outputs"
    result = run_cli("run", "experiment=smoke", "tracking=mlflow", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")  # the default store: in the outputs root
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["name"] == "smoke"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(summary["final_accuracy"])
    names = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"site_metrics.csv", "privacy.csv", "metrics.png", "summary.json"} <= names
    assert not [name for name in names if name.endswith(".key")]

    versions = client.search_model_versions("name='flsuite-smoke'")
    with Registry.open(summary["registry"]) as registry:
        published = {info.number: info for info in registry.versions()}
    assert sorted(int(v.tags["flsuite.version"]) for v in versions) == sorted(published) == summary["registry_versions"]
    for version in versions:
        info = published[int(version.tags["flsuite.version"])]
        assert version.tags["flsuite.signature_digest"] == info.manifest_hash
        assert json.loads(version.tags["flsuite.dp_certificate"]) == info.dp_certificate


@pytest.mark.slow
def test_a_tracked_sweep_is_one_experiment_with_one_run_each(tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("run", "-m", "federation.rounds=1,2", "tracking=mlflow", "privacy=none", "secagg=none",
                     "registry.enabled=false", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert {e.name for e in client.search_experiments()} - {"Default"} == {"default"}  # "Default" is MLflow's own
    runs = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    rounds = {r.data.tags["flsuite.sweep_index"]: len(client.get_metric_history(r.info.run_id, "accuracy")) for r in runs}
    assert rounds == {"0": 1, "1": 2}


@pytest.mark.parametrize("kind", [  # the store-opening cases import MLflow in a fresh process: slow here, fast in the unit tests
    "scheme", pytest.param("not-a-database", marks=pytest.mark.slow), pytest.param("under-a-file", marks=pytest.mark.slow)])
def test_a_bad_tracking_uri_exits_2_before_any_training(kind, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "junk.db").write_text("this is not SQLite\n" * 100)
    uri = {"scheme": "mlflow.db", "not-a-database": f"sqlite:///{tmp_path / 'junk.db'}",
           "under-a-file": f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"}[kind]
    out = tmp_path / "o"
    result = run_cli("run", "experiment=smoke", "tracking=mlflow", f"tracking.uri={uri}", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tracking.uri=" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not out.exists()  # nothing trained, nothing written
