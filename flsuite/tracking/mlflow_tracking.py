"""Log a study to MLflow (``tracking=mlflow``; the optional extra ``flsuite[mlflow]``).

One MLflow run per study. It starts before the study trains, with the resolved config as
params (flattened as Flower's run_config: ``federation.rounds``, ``privacy.target_epsilon``,
...). When the study has ended and its outputs are written, the run gets:

- metrics per round, ``step`` = round: accuracy, loss, auc, train_loss (when every site
  released it), sites, failures, wall_s; and each site's epsilon spent so far
  (``epsilon/site-0``, from privacy.csv);
- artifacts: the output folder's tables, plot, config and summary (never a key file);
- each model version the study published, as a version of the registered model
  ``flsuite-<study name>``, registered from its safetensors weights and signed manifest
  logged under ``models/version-N`` (no pickle), tagged with flsuite's version number,
  the DP certificate (JSON) and the signature digest (the SHA-256 of the canonical
  manifest that the coordinator's Ed25519 signature covers). A version encrypted at rest
  in the flsuite registry is registered from its manifest alone: its weights stay there.

The run ends FINISHED when the study completed, FAILED when it did not or raised, KILLED on
Ctrl-C. MLflow is imported only when tracking is on; no torch, no flwr here.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flsuite.config import to_run_config
from flsuite.config.schema import StudyConfig
from flsuite.errors import ConfigError

INSTALL = "pip install 'flsuite[mlflow]'"
STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
ROUND_METRICS = ("accuracy", "loss", "auc", "train_loss", "sites", "failures", "wall_s")
ARTIFACT_SUFFIXES = (".csv", ".json", ".png", ".yaml", ".html")  # outputs, never key files
MODEL_PREFIX = "flsuite-"
MAX_TAG = 5000
BATCH = 100  # MLflow takes at most 100 params and 1000 metrics in one log_batch


def default_uri(outputs_root: Path) -> str:
    """A SQLite store in the outputs root: ``sqlite:////abs/outputs/mlflow.db``."""
    return f"sqlite:///{(Path(outputs_root) / STORE_FILE).absolute()}"


def registered_model_name(study: StudyConfig) -> str:
    return MODEL_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", study.name)


def client_class() -> Any:
    """MLflow's client class, or a ConfigError that says how to install it."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(f"tracking=mlflow needs MLflow, an optional extra of flsuite: {INSTALL} (or use tracking=none)") from None
    for name in ("mlflow", "alembic"):  # store creation and migrations log at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


class MlflowTracking:
    """An MLflow store and experiment that `flsuite run` checked before any study trained."""

    def __init__(self, client: Any, uri: str, experiment_id: str) -> None:
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id

    @classmethod
    def connect(cls, uri: str, experiment: str) -> MlflowTracking:
        """Open the store at ``uri`` (a SQLite store is created) and find or create ``experiment``.

        Anything that goes wrong is a ConfigError naming ``tracking.uri``: called before
        the first study trains, so a bad store costs no training.
        """
        client_type = client_class()
        store = _sqlite_path(uri)
        artifact_location = None
        if store is not None:
            try:
                store.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"tracking.uri={uri!r}: cannot create the folder of its SQLite file ({exc.strerror or exc}); "
                                  "give sqlite:///PATH/mlflow.db in a folder you can write to") from None
            artifact_location = (store.absolute().parent / ARTIFACTS_FOLDER).as_uri()
        try:
            with _fail_fast():
                client = client_type(tracking_uri=uri, registry_uri=uri)
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
                elif found.lifecycle_stage != "active":
                    raise ConfigError(f"MLflow experiment {experiment!r} at {uri} was deleted: restore it "
                                      "(`mlflow experiments restore`) or set tracking.experiment to another name")
                else:
                    experiment_id = found.experiment_id
        except ConfigError:
            raise
        except Exception as exc:  # MLflow and SQLAlchemy raise many kinds; all mean this store cannot be used
            raise ConfigError(f"tracking.uri={uri!r} cannot be used as an MLflow store: {_first_line(exc)}; give "
                              "sqlite:///PATH/mlflow.db or the http(s):// address of a running MLflow server") from None
        return cls(client, uri, experiment_id)

    def start(self, study: StudyConfig, *, run_name: str, tags: dict[str, str]) -> str:
        """Create the study's run with its resolved config as params; returns the run id."""
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name[:250],
                                     tags={"mlflow.source.name": "flsuite run", **tags})
        params = [Param(key, str(value)) for key, value in to_run_config(study).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(run.info.run_id, params=params[start:start + BATCH])
        return run.info.run_id

    def finish(self, run_id: str, study: StudyConfig, folder: Path, summary: dict[str, Any] | None, status: str) -> None:
        """Log what the study left in ``folder`` (and its registry) and end the run with ``status``."""
        self._log_metrics(run_id, folder)
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_file() and path.suffix in ARTIFACT_SUFFIXES:
                self.client.log_artifact(run_id, str(path))
        if summary is not None:
            self.client.set_tag(run_id, "flsuite.status", summary.get("status", ""))
            reasons = "; ".join(str(r) for r in summary.get("reasons") or [])
            if reasons:
                self.client.set_tag(run_id, "flsuite.reasons", _clip(reasons))
            if summary.get("registry") and summary.get("registry_versions"):
                self._register_versions(run_id, study, Path(summary["registry"]), list(summary["registry_versions"]))
        self.client.set_terminated(run_id, status)

    def _log_metrics(self, run_id: str, folder: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        rounds = folder / "metrics.json"
        for row in json.loads(rounds.read_text()) if rounds.is_file() else []:
            metrics += [Metric(key, float(row[key]), now, int(row["round"])) for key in ROUND_METRICS if _number(row.get(key))]
        privacy = folder / "privacy.csv"
        if privacy.is_file():
            with privacy.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("epsilon"):
                        key = "epsilon/" + re.sub(r"[^\w\-. /]", "-", row["site"])
                        metrics.append(Metric(key, float(row["epsilon"]), now, int(row["round"])))
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + BATCH])

    def _register_versions(self, run_id: str, study: StudyConfig, registry_path: Path, numbers: list[int]) -> None:
        from flsuite.registry import Registry

        name = registered_model_name(study)
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, description=f"Global models of the flsuite study {study.name!r}, "
                                                "mirrored from its signed flsuite registry")
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        with Registry.open(registry_path) as registry, tempfile.TemporaryDirectory(prefix="flsuite-mlflow-") as scratch:
            for number in numbers:
                info = registry.version(number)
                folder = Path(scratch) / f"version-{number}"
                folder.mkdir()
                if info.encrypted:  # its weights stay encrypted in the flsuite registry
                    (folder / "manifest.json").write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True))
                else:
                    registry.export(number, folder / "model.safetensors")  # and model.safetensors.manifest.json
                self.client.log_artifacts(run_id, str(folder), f"models/version-{number}")
                self.client.create_model_version(
                    name, source=f"{artifact_uri}/models/version-{number}", run_id=run_id, tags=version_tags(info, registry_path),
                    description=f"flsuite registry version {number} (round {info.round})")


def version_tags(info: Any, registry_path: Path) -> dict[str, str]:
    """The tags of an MLflow model version: what ties it to its signed flsuite version."""
    certificate = info.dp_certificate
    return {
        "flsuite.version": str(info.number),
        "flsuite.round": str(info.round),
        "flsuite.run_id": info.run_id,
        "flsuite.dp_certificate": json.dumps(certificate, sort_keys=True) if certificate is not None else "none",
        "flsuite.signature_digest": info.manifest_hash,
        "flsuite.signature": info.manifest_sig,
        "flsuite.blob_sha256": info.blob_sha256,
        "flsuite.encrypted": str(info.encrypted).lower(),
        "flsuite.registry": str(registry_path),
    }


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


@contextmanager
def _fail_fast() -> Iterator[None]:
    """No retries while checking the store: an unreachable server is an error now, not in minutes."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
