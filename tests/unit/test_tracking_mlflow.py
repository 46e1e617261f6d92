"""MLflow tracking against a real local MLflow store (SQLite in tmp_path, no mock).

The output folder here is written by hand, as StudyOutputs lays it out, and the registry
is a real signed flsuite registry; tests/integration/test_tracking_cli.py runs real studies.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install 'flsuite[mlflow]'")

from mlflow.tracking import MlflowClient  # noqa: E402

from flsuite.config.schema import StudyConfig, TrackingConfig  # noqa: E402
from flsuite.errors import ConfigError, StudyAborted  # noqa: E402
from flsuite.registry import Registry, create_key_file  # noqa: E402
from flsuite.registry.testing import publish_sample  # noqa: E402
from flsuite.tracking import INSTALL, StudyTracking, registered_model_name  # noqa: E402
from tests.conftest import REPO  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its tables takes seconds); each test uses its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tracked_study(name: str, uri: str, **tracking) -> StudyConfig:
    return StudyConfig(name=name, tracking=TrackingConfig(backend="mlflow", uri=uri, **tracking))


def study_folder(folder: Path, *, rounds: int = 2) -> Path:
    """An output folder as a study leaves it (publishing adds the registry and, beside it, the signing key)."""
    folder.mkdir(parents=True)
    rows = [{"round": r, "accuracy": 0.8 + r / 100, "loss": 0.5 - r / 100, "auc": 0.9, "train_loss": "withheld" if r == 1 else 0.3,
             "sites": 2, "failures": 0, "wall_s": 0.5} for r in range(1, rounds + 1)]
    (folder / "metrics.json").write_text(json.dumps(rows))
    (folder / "metrics.csv").write_text("round,accuracy\n" + "".join(f"{r['round']},{r['accuracy']}\n" for r in rows))
    (folder / "site_metrics.csv").write_text("round,site,num-examples\n1,site-a,40\n")
    (folder / "privacy.csv").write_text("round,site,epsilon\n" + "".join(f"{r},site-a,{r * 0.5}\n" for r in range(1, rounds + 1)))
    (folder / "metrics.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "summary.json").write_text("{}")
    (folder / "config.yaml").write_text("name: x\n")
    return folder


def publish(folder: Path, count: int) -> list[int]:
    with Registry.open(folder / "registry", signing_key_path=folder / "coordinator-signing.key") as registry:
        return [publish_sample(registry, round=r + 1).number for r in range(count)]


def only_run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += all_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_a_tracked_study_has_its_config_metrics_files_and_registered_versions(store, tmp_path):
    folder = study_folder(tmp_path / "out")
    numbers = publish(folder, 2)
    study = tracked_study("tracked", store)
    tracking = StudyTracking.prepare([study], [folder], outputs_root=tmp_path, labels=["experiment=smoke"])
    with tracking.track(0) as tracked:
        tracked.finish({"status": "completed", "registry": str(folder / "registry"), "registry_versions": numbers})

    client = MlflowClient(store)
    run = only_run(client, "tracked")
    assert run.info.status == "FINISHED" and run.data.tags["flsuite.overrides"] == "experiment=smoke"
    assert run.data.params["federation.rounds"] == "10" and run.data.params["tracking.backend"] == "mlflow"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [m.step for m in history] == [1, 2] and [m.value for m in history] == pytest.approx([0.81, 0.82])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [2]  # round 1 withheld it
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epsilon/site-a")] == [0.5, 1.0]
    artifacts = all_artifacts(client, run.info.run_id)
    for name in ("site_metrics.csv", "privacy.csv", "metrics.png", "summary.json", "config.yaml"):
        assert name in artifacts

    versions = sorted(client.search_model_versions(f"name='{registered_model_name(study)}'"), key=lambda v: int(v.version))
    with Registry.open(folder / "registry") as registry:
        assert [int(v.tags["flsuite.version"]) for v in versions] == [info.number for info in registry.versions()] == numbers
        for mlflow_version, info in zip(versions, registry.versions()):
            assert mlflow_version.run_id == run.info.run_id
            assert mlflow_version.tags["flsuite.signature_digest"] == info.manifest_hash
            assert mlflow_version.tags["flsuite.signature"] == info.manifest_sig
            assert json.loads(mlflow_version.tags["flsuite.dp_certificate"]) == info.dp_certificate
            local = client.download_artifacts(run.info.run_id, f"models/version-{info.number}/model.safetensors", str(tmp_path))
            assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == info.blob_sha256  # the signed weights, as safetensors


def test_the_coordinators_signing_key_never_leaves_for_mlflow(store, tmp_path):
    """Attack: the private key lies in the output folder, beside the tables MLflow is given."""
    folder = study_folder(tmp_path / "out")
    numbers = publish(folder, 1)
    assert (folder / "coordinator-signing.key").is_file()
    tracking = StudyTracking.prepare([tracked_study("keyleak", store)], [folder], outputs_root=tmp_path)
    with tracking.track(0) as tracked:
        tracked.finish({"status": "completed", "registry": str(folder / "registry"), "registry_versions": numbers})
    client = MlflowClient(store)
    artifacts = all_artifacts(client, only_run(client, "keyleak").info.run_id)
    assert artifacts and not [name for name in artifacts if name.endswith(".key") or "signing" in name]


def test_weights_encrypted_at_rest_are_not_copied_to_mlflow(store, tmp_path):
    """Attack: an encrypted registry's weights must not reach MLflow in plaintext; the version is still registered."""
    folder = study_folder(tmp_path / "out")
    key = create_key_file(tmp_path / "blob.key")
    with Registry.open(folder / "registry", signing_key_path=folder / "coordinator-signing.key", encryption_key=key) as registry:
        number = publish_sample(registry, round=1).number
    study = tracked_study("encrypted", store)
    with StudyTracking.prepare([study], [folder], outputs_root=tmp_path).track(0) as tracked:
        tracked.finish({"status": "completed", "registry": str(folder / "registry"), "registry_versions": [number]})
    client = MlflowClient(store)
    run = only_run(client, "encrypted")
    assert all_artifacts(client, run.info.run_id, "models") == [f"models/version-{number}/manifest.json"]
    (version,) = client.search_model_versions(f"name='{registered_model_name(study)}'")
    assert version.tags["flsuite.encrypted"] == "true" and version.tags["flsuite.version"] == str(number)


def test_a_study_that_did_not_complete_marks_its_run_failed(store, tmp_path):
    folder = study_folder(tmp_path / "out", rounds=1)
    with StudyTracking.prepare([tracked_study("aborted", store)], [folder], outputs_root=tmp_path).track(0) as tracked:
        tracked.finish({"status": "aborted", "reasons": ["round 2: too few sites left (1 of 3)"]})
    run = only_run(MlflowClient(store), "aborted")
    assert run.info.status == "FAILED" and "too few sites" in run.data.tags["flsuite.reasons"]


def test_a_study_that_raises_marks_its_run_failed_with_what_it_wrote(store, tmp_path):
    folder = study_folder(tmp_path / "out", rounds=1)
    tracking = StudyTracking.prepare([tracked_study("raised", store)], [folder], outputs_root=tmp_path)
    with pytest.raises(StudyAborted), tracking.track(0):
        raise StudyAborted("the study ended without writing summary.json")
    client = MlflowClient(store)
    run = only_run(client, "raised")
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1]


def test_a_sweep_logs_one_experiment_with_one_run_each(store, tmp_path):
    studies = [tracked_study("sweep-a", store), tracked_study("sweep-b", store)]  # even runs that rename the study
    folders = [study_folder(tmp_path / str(i)) for i in range(2)]
    tracking = StudyTracking.prepare(studies, folders, outputs_root=tmp_path, labels=["name=sweep-a", "name=sweep-b"], sweep=True)
    for index in range(2):
        with tracking.track(index) as tracked:
            tracked.finish({"status": "completed"})
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("sweep-a").experiment_id])
    assert sorted(r.data.tags["flsuite.sweep_index"] for r in runs) == ["0", "1"]
    assert client.get_experiment_by_name("sweep-b") is None


@pytest.mark.slow  # a new store: its tables take seconds to create
def test_the_default_store_is_sqlite_in_the_outputs_root(tmp_path):
    study = StudyConfig(name="rooted", tracking=TrackingConfig(backend="mlflow"))
    (tracking_store,) = StudyTracking.prepare([study], [tmp_path / "out"], outputs_root=tmp_path / "outputs").stores
    assert tracking_store is not None and tracking_store.uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert (tmp_path / "outputs" / "mlflow.db").is_file()


@pytest.mark.parametrize("kind", ["not-a-database", "folder-is-a-file"])
def test_a_store_that_cannot_be_used_is_a_config_error_naming_the_uri(kind, tmp_path):
    if kind == "not-a-database":
        path = tmp_path / "junk.db"
        path.write_text("this is not SQLite\n" * 100)
    else:
        (tmp_path / "afile").write_text("x")
        path = tmp_path / "afile" / "mlflow.db"
    with pytest.raises(ConfigError, match=r"tracking\.uri="):
        StudyTracking.prepare([tracked_study("bad", f"sqlite:///{path}")], [tmp_path / "out"], outputs_root=tmp_path)


def test_without_the_extra_tracking_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets where the extra is not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"pip install 'flsuite\[mlflow\]'") as error:
        StudyTracking.prepare([tracked_study("noextra", "sqlite:///x.db")], [tmp_path / "out"], outputs_root=tmp_path)
    assert INSTALL in str(error.value)


def test_untracked_studies_never_import_mlflow(tmp_path):
    code = ("import sys; from pathlib import Path; from flsuite.config.schema import StudyConfig; "
            "from flsuite.tracking import StudyTracking; "
            f"t = StudyTracking.prepare([StudyConfig()], [Path({str(tmp_path)!r})], outputs_root=Path({str(tmp_path)!r})); "
            "import contextlib\nwith t.track(0) as run: run.finish({'status': 'completed'})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]" and not list(tmp_path.iterdir())
