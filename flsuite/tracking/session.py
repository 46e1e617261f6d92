"""What ``flsuite run`` tracks: every run of a sweep, checked before the first trains.

``StudyTracking.prepare`` connects to each store the runs name (nothing is imported when
no run is tracked); ``track(index)`` wraps one run's study: it starts the run, and ends it
FAILED (with whatever outputs exist) when the study raises, KILLED on Ctrl-C. A sweep logs
every run into one experiment, its first run's (``tracking.experiment``, default its name).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flsuite.config.schema import StudyConfig
from flsuite.errors import ConfigError
from flsuite.tracking.mlflow_tracking import MlflowTracking, default_uri


class TrackedRun:
    """One study's run in its tracking store; ``finish(summary)`` logs its outputs and ends it."""

    def __init__(self, tracking: MlflowTracking | None, study: StudyConfig, folder: Path, run_id: str | None) -> None:
        self.tracking, self.study, self.folder, self.run_id = tracking, study, folder, run_id
        self.finished = False

    def finish(self, summary: dict[str, Any]) -> None:
        """End the run: FINISHED when the study completed, FAILED when it did not."""
        self.finished = True
        if self.tracking is None or self.run_id is None:
            return
        status = "FINISHED" if summary.get("status") == "completed" else "FAILED"
        try:
            self.tracking.finish(self.run_id, self.study, self.folder, summary, status)
        except Exception as exc:
            raise ConfigError(f"the study's outputs are in {self.folder}, but logging them to MLflow at {self.tracking.uri} "
                              f"failed: {exc}") from None

    def abandon(self, status: str) -> None:
        """The study raised: log what it left and end the run with ``status``; never raises over the study's error."""
        if self.tracking is None or self.run_id is None or self.finished:
            return
        self.finished = True
        try:
            self.tracking.finish(self.run_id, self.study, self.folder, None, status)
        except Exception:
            try:
                self.tracking.client.set_terminated(self.run_id, status)
            except Exception:
                pass


class StudyTracking:
    """The tracking of a sweep's runs (a single study is a sweep of one)."""

    def __init__(self, studies: Sequence[StudyConfig], folders: Sequence[Path], labels: Sequence[str],
                 stores: Sequence[MlflowTracking | None], sweep: bool) -> None:
        self.studies, self.folders, self.labels, self.stores, self.sweep = studies, folders, labels, stores, sweep

    @classmethod
    def prepare(cls, studies: Sequence[StudyConfig], folders: Sequence[Path], *, outputs_root: Path,
                labels: Sequence[str] | None = None, sweep: bool = False) -> StudyTracking:
        """Connect to every store the studies track to (ConfigError when one cannot be used)."""
        experiment = None
        stores: list[MlflowTracking | None] = []
        connected: dict[tuple[str, str], MlflowTracking] = {}
        for study in studies:
            if study.tracking.backend == "none":
                stores.append(None)
                continue
            experiment = experiment if sweep and experiment else (study.tracking.experiment or study.name)
            uri = study.tracking.uri or default_uri(outputs_root)
            if (uri, experiment) not in connected:
                connected[uri, experiment] = MlflowTracking.connect(uri, experiment)
            stores.append(connected[uri, experiment])
        return cls(studies, folders, labels or [""] * len(studies), stores, sweep)

    @contextmanager
    def track(self, index: int) -> Iterator[TrackedRun]:
        study, folder, store = self.studies[index], self.folders[index], self.stores[index]
        run_id = None
        if store is not None:
            tags = {"flsuite.output_dir": str(Path(folder).absolute()), "flsuite.overrides": self.labels[index]}
            if self.sweep:
                tags |= {"flsuite.sweep": str(Path(folder).absolute().parent), "flsuite.sweep_index": str(index)}
            name = f"{index}: {self.labels[index] or '(defaults)'}" if self.sweep else Path(folder).name
            try:
                run_id = store.start(study, run_name=name, tags=tags)
            except Exception as exc:
                raise ConfigError(f"could not start an MLflow run at {store.uri}: {exc}") from None
        run = TrackedRun(store, study, Path(folder), run_id)
        try:
            yield run
        except KeyboardInterrupt:
            run.abandon("KILLED")
            raise
        except BaseException:
            run.abandon("FAILED")
            raise
        if not run.finished:
            run.abandon("FAILED")
