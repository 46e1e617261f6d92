"""The coordinator's side of a study, as the ServerApp runs it on any engine.

Reads the study from the run_config, plans its privacy (only planned sites train in a
DP study, and only replies that match the plan are averaged: ``admission``), evaluates
on the held-out split that no site sees, runs the rounds, and writes the output folder with
the study's verdict: "completed" only when every planned round completed (``verdict``).
``flsuite.coordinator.app`` builds the ServerApp around ``run_study`` and raises when the
study did not complete, so Flower records the run as failed. A study with ``resume`` set
continues the one in its output folder after its last published version (``resume``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flsuite.config.bridge import from_run_config
from flsuite.config.schema import StudyConfig
from flsuite.coordinator import progress
from flsuite.coordinator.admission import DpAdmission, HeadVerifier
from flsuite.coordinator.outputs import StudyOutputs
from flsuite.coordinator.planning import plan_privacy
from flsuite.coordinator.publishing import RegistryPublisher, new_run_id
from flsuite.coordinator.resume import ResumedPlan, ResumePoint, ResumeRecorder, ResumeState, restore_outputs
from flsuite.coordinator.rounds import PlainTrainRound, ReplyCheck, RoundLoop, RoundOutcome, RoundRecord, RoundRules, TrainRound
from flsuite.coordinator.strategies import build_strategy, restore_momentum
from flsuite.coordinator.verdict import FailureWatch, Verdict, study_verdict
from flsuite.data.datasets import Dataset
from flsuite.data.study_data import model_shape, split_study
from flsuite.errors import DataError, PlanError, StudyAborted
from flsuite.models.weights import load_arrays, model_to_arrays
from flsuite.models.zoo import build_model
from flsuite.training.local import evaluate

log = logging.getLogger("flwr")  # the ServerApp's log: what `flwr log` shows


def study_from_context(context: Context) -> StudyConfig:
    if not context.run_config:
        raise PlanError("the ServerApp received no run_config: start the study with flsuite or `flwr run`")
    return from_run_config(context.run_config)


def run_study(grid: Grid, context: Context) -> dict[str, Any]:
    """Run a whole study over ``grid`` and return its summary (also written to summary.json).

    The summary's status is the study's verdict (``flsuite.coordinator.verdict``); the
    ServerApp raises StudyAborted after this returns when it is not "completed". A write
    that fails (a full disk) stops the study: no later round runs, the summary says why.
    When even the summary cannot be written, StudyAborted names the path and the cause.
    """
    torch.set_num_threads(1)
    started = time.perf_counter()
    study = study_from_context(context)
    folder = Path(study.output_dir or f"outputs/run-{context.run_id}")
    try:
        return _run_study(grid, study, folder, started)
    except OSError as exc:
        raise StudyAborted(f"the study stopped: {os_error_text(exc, folder)}. Outputs written so far are in {folder}.") from None


def _run_study(grid: Grid, study: StudyConfig, folder: Path, started: float) -> dict[str, Any]:
    point = ResumePoint.load(study, folder) if study.resume else None  # verified registry, last version, or a refusal
    test_data = _held_out(study)
    shape = model_shape(study.data, test_data)
    model = build_model(
        study.model,
        num_features=shape.num_features,
        num_classes=shape.num_classes,
        image_shape=shape.image_shape,
        seed=study.seed,
    )
    outputs = StudyOutputs(folder, study)
    if point:
        restore_outputs(outputs, folder, point.round)
    run_id = point.state.run_id if point else new_run_id()
    publisher = (RegistryPublisher(study, folder, run_id=run_id, resumed_after=point.round if point else None)
                 if study.registry.enabled else None)
    if point and publisher:
        point.seed_publisher(publisher)
    recorder = ResumeRecorder(folder, point.state if point else ResumeState(run_id, study.name), publisher) if publisher else None
    watch = FailureWatch(grid)  # every error reply of a round, with its reason
    stops: list[str] = []  # why the coordinator itself could not go on

    def evaluator(arrays: ArrayRecord) -> dict[str, float]:
        load_arrays(model, arrays)
        return evaluate(model, test_data)

    def on_round(record: RoundRecord, arrays: ArrayRecord) -> None:
        # One line per round in the ServerApp's log, so `flwr log` shows progress in a deployment.
        log.info("round %d/%d: %s, %d sites", record.round, study.federation.rounds, _metrics_text(record.metrics), len(record.sites))
        try:
            outputs.on_round(record)
            if publisher:
                publisher.on_round(record, arrays)
            if recorder:
                recorder(record, arrays)
        except OSError as exc:  # a full disk: stop here, and say so in the summary
            where = publisher.path if publisher else folder
            stops.append(f"round {record.round}: could not write its outputs: {os_error_text(exc, where)}")
            log.error("%s", stops[-1])
        progress.publish(record)

    # With DP, only planned sites train: a node that appears later is planned first or left out,
    # and a train reply whose DP event or ledger head does not match the plan is not averaged.
    admission = None
    if study.privacy.enabled:
        admission = DpAdmission(study, watch, verifier=HeadVerifier.for_study(study), on_plan=outputs.write_privacy_plan,
                                planner=ResumedPlan.for_point(folder, point.first_round) if point else plan_privacy)
        admission.plan()
        if publisher:
            publisher.admission = admission

    monitor = _site_monitor(study, grid, folder, admission)
    if monitor and point:
        monitor.restore(point.round)  # site_evaluation.csv keeps the rounds before the resume

    seeded_arrays = model_to_arrays(model)
    initial_arrays = point.arrays_for(model) if point else seeded_arrays
    strategy = build_strategy(study.federation, initial_arrays)
    if point and point.weights is not None:  # FedAvgM's momentum, from the last two published models
        restore_momentum(strategy, point.previous_arrays(seeded_arrays), initial_arrays)
    rounds = train_round(study, watch, strategy, reply_check=admission.check_reply if admission else None)

    def watched_round(
        server_round: int, cohort: list[int], configs: Mapping[int, ConfigRecord], arrays: ArrayRecord, rules: RoundRules | None = None
    ) -> RoundOutcome:
        if stops:  # the coordinator cannot write what a round produces: no site is asked to train again
            return RoundOutcome(None, [], [], 0)
        watch.round = server_round
        return rounds(server_round, cohort, configs, arrays, rules)

    coordinator = RoundLoop(
        study,
        watch,
        strategy=strategy,
        train_round=watched_round,
        initial_arrays=initial_arrays,
        evaluator=evaluator if test_data else None,
        listeners=[monitor.on_round, on_round] if monitor else [on_round],  # the monitor adds per-site metrics first
        site_configs=admission.site_configs if admission else None,
        admit=admission.admit if admission else None,
        declared=admission.declared if admission else None,
        forget=admission.forget if admission else None,
        site_names=admission.site_names if admission else None,
        first_round=point.first_round if point else 1,
    )
    result = coordinator.run()
    if admission:
        result.planning = list(admission.events)

    def verdict() -> Verdict:
        return study_verdict(result, rounds_planned=study.federation.rounds, rounds_completed=len(outputs.rows), stopped=stops)

    extra: dict[str, Any] = {}
    if publisher:
        try:
            publisher.finish(result, failures=watch.failures)
        except OSError as exc:
            stops.append(f"could not record the study in its registry: {os_error_text(exc, publisher.path)}")
        try:
            publisher.close(verdict())
        except OSError as exc:
            stops.append(f"could not record the study's end in its registry: {os_error_text(exc, publisher.path)}")
        extra = publisher.outputs()
    if monitor:
        extra["monitoring"] = monitor.summary()
    final = verdict()
    for reason in final.reasons:
        log.info("study %s %s: %s", study.name, final.status, reason)
    return outputs.finish(result, wall_s=time.perf_counter() - started, verdict=final, failures=watch.failures, extra=extra)


def os_error_text(exc: OSError, where: Path) -> str:
    """An OSError in plain words, naming the file (or, when the error does not, the folder written to)."""
    path = exc.filename or where
    cause = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or str(exc) or type(exc).__name__
    return f"{path}: {cause}"


def train_round(study: StudyConfig, grid: Grid, strategy: Strategy, *, reply_check: ReplyCheck | None = None) -> TrainRound:
    """A plain round, or one wrapped in secure aggregation when the study asks for it."""
    if not study.secagg.enabled:
        return PlainTrainRound(grid, strategy, timeout_s=study.federation.round_timeout_s, reply_check=reply_check)
    from flsuite.coordinator.secure_round import SecureTrainRound

    return SecureTrainRound(grid, strategy, settings_for=study.secagg.settings_for,
                            timeout_s=study.secagg.stage_deadline_s(study.federation.round_timeout_s), reply_check=reply_check,
                            pinned=HeadVerifier.for_study(study).pinned)


def _site_monitor(study: StudyConfig, grid: Grid, folder: Path, admission: DpAdmission | None):
    """Per-site private evaluation (``flsuite.coordinator.monitoring``), in a DP study with monitoring on."""
    if not study.site_evaluation:
        return None
    from flsuite.coordinator.monitoring import SiteMonitor

    return SiteMonitor(study, grid, folder, admission=admission)


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4f}" for key, value in sorted(metrics.items())) or "no central evaluation"


def _held_out(study: StudyConfig) -> Dataset | None:
    """The coordinator's test split; None when the coordinator cannot read the data (real sites' CSVs)."""
    try:
        return split_study(study.data, study.federation.num_sites).test
    except DataError:
        if study.data.dataset == "csv":
            return None
        raise
