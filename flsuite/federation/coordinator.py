"""The coordinator's round loop: choose a cohort, train, aggregate, evaluate, report.

It drives Flower's Message API through a ``Grid`` (inline, Ray or a real SuperLink) and a
Flower strategy for aggregation. With secure aggregation on, the round goes through
``flsuite.secagg`` and the strategy only ever sees the averaged model. Sites that
refuse (privacy budget spent) are left out of later rounds; when fewer than the
minimum remain the study ends cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flsuite.config.schema import StudyConfig
from flsuite.federation import records
from flsuite.federation.cohort import CohortGrid, choose_cohort
from flsuite.federation.strategies import build_strategy

Evaluator = Callable[[ArrayRecord], dict[str, float]]
SiteConfigs = Callable[[int, list[int]], Mapping[int, dict[str, Any]]]


@dataclass(frozen=True)
class SiteReport:
    """What one site said in one round."""

    node_id: int
    name: str
    metrics: dict[str, float]
    dp_event: dict | None = None


@dataclass(frozen=True)
class Refusal:
    """A site that declined to train, and why."""

    round: int
    node_id: int
    name: str
    kind: str
    reason: str
    remaining_epsilon: float | None = None


@dataclass
class RoundRecord:
    """The outcome of one round, as the coordinator saw it."""

    round: int
    metrics: dict[str, float]
    sites: list[SiteReport]
    failures: int
    wall_s: float
    secure: dict[str, Any] | None = None


@dataclass
class StudyResult:
    """Everything a study produced, in memory."""

    rounds: list[RoundRecord] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    aborted_rounds: list[dict[str, Any]] = field(default_factory=list)
    status: str = "completed"
    message: str = ""
    arrays: ArrayRecord | None = None


@dataclass
class _Outcome:
    arrays: ArrayRecord | None
    sites: list[SiteReport]
    refusals: list[Refusal]
    failures: int
    secure: dict[str, Any] | None = None


RoundListener = Callable[[RoundRecord, ArrayRecord], None]


class Coordinator:
    """Runs the rounds of one study over a Grid."""

    def __init__(
        self,
        study: StudyConfig,
        grid: Grid,
        *,
        initial_arrays: ArrayRecord,
        evaluator: Evaluator | None,
        listeners: list[RoundListener] | None = None,
        site_configs: SiteConfigs | None = None,
        excluded: set[int] | None = None,
    ) -> None:
        self.study = study
        self.grid = grid
        self.evaluator = evaluator
        self.listeners = list(listeners or [])
        self.site_configs = site_configs
        self.strategy = build_strategy(study.federation, initial_arrays)
        self.arrays = initial_arrays
        self.excluded: set[int] = set(excluded or ())  # refused, or left out of the privacy plan

    def run(self) -> StudyResult:
        result = StudyResult()
        federation = self.study.federation
        for server_round in range(1, federation.rounds + 1):
            available = [n for n in self.grid.get_node_ids() if n not in self.excluded]
            cohort = choose_cohort(
                available,
                fraction=federation.fraction_sites,
                minimum=federation.min_sites,
                seed=self.study.seed,
                server_round=server_round,
            )
            if cohort is None:
                result.status = "aborted"
                result.message = (
                    f"round {server_round}: only {len(available)} site(s) can still train, "
                    f"fewer than federation.min_sites={federation.min_sites}"
                )
                break
            record = self._train_round(server_round, cohort, result)
            if record is None:
                continue
            result.rounds.append(record)
            for listener in self.listeners:
                listener(record, self.arrays)
        result.arrays = self.arrays
        return result

    def _train_round(self, server_round: int, cohort: list[int], result: StudyResult) -> RoundRecord | None:
        started = time.perf_counter()
        base = ConfigRecord({"seed": self.study.seed})
        messages = list(self.strategy.configure_train(server_round, self.arrays, base, CohortGrid(self.grid, cohort)))
        shared = dict(messages[0].content[records.CONFIG]) if messages else dict(base)
        extras = self.site_configs(server_round, cohort) if self.site_configs else {}
        configs = {node: ConfigRecord({**shared, **extras.get(node, {})}) for node in cohort}
        if self.study.secagg.enabled:
            outcome = self._secure_round(server_round, cohort, configs, result)
        else:
            outcome = self._plain_round(server_round, cohort, configs)
        result.refusals.extend(outcome.refusals)
        self.excluded.update(refusal.node_id for refusal in outcome.refusals)
        if outcome.arrays is None:
            return None
        self.arrays = outcome.arrays
        metrics = self.evaluator(self.arrays) if self.evaluator else {}
        return RoundRecord(
            round=server_round,
            metrics=metrics,
            sites=sorted(outcome.sites, key=lambda s: s.name),
            failures=outcome.failures,
            wall_s=time.perf_counter() - started,
            secure=outcome.secure,
        )

    def _plain_round(self, server_round: int, cohort: list[int], configs: Mapping[int, ConfigRecord]) -> _Outcome:
        messages = [
            Message(RecordDict({records.ARRAYS: self.arrays, records.CONFIG: configs[node]}), dst_node_id=node, message_type="train")
            for node in cohort
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.study.federation.round_timeout_s))
        trained, refusals, failures = [], [], len(cohort) - len(replies)
        for reply in replies:
            if reply.has_error():
                refusal = _refusal(server_round, reply.metadata.src_node_id, reply.error.code, reply.error.reason)
                if refusal:
                    refusals.append(refusal)
                else:
                    failures += 1
            else:
                trained.append(reply)
        if not trained:
            return _Outcome(None, [], refusals, failures)
        arrays, _ = self.strategy.aggregate_train(server_round, trained)
        sites = [_site_report(reply.metadata.src_node_id, reply.content) for reply in trained]
        return _Outcome(arrays, sites, refusals, failures)

    def _secure_round(
        self, server_round: int, cohort: list[int], configs: Mapping[int, ConfigRecord], result: StudyResult
    ) -> _Outcome:
        from flsuite.secagg import SecAggAborted, secure_train_round

        try:
            secure = secure_train_round(
                self.grid,
                node_ids=cohort,
                server_round=server_round,
                global_arrays=self.arrays,
                train_configs=configs,
                settings=self.study.secagg.settings_for(len(cohort)),
                timeout_s=self.study.secagg.stage_timeout_s,
            )
        except SecAggAborted as exc:
            # Nothing was unmasked; the global model stays as it was.
            result.aborted_rounds.append({"round": server_round, "stage": exc.stage, "reason": str(exc)})
            return _Outcome(None, [], _budget_refusals(server_round, exc.refusals), 0)
        refusals = _budget_refusals(server_round, secure.refusals)
        # The strategy sees one "reply": the securely averaged model, weighted by the sum of weights.
        averaged = Message(
            RecordDict({records.ARRAYS: secure.arrays, records.METRICS: MetricRecord({records.NUM_EXAMPLES: secure.total_weight})}),
            dst_node_id=0,
            message_type="train",
        )
        arrays, _ = self.strategy.aggregate_train(server_round, [averaged])
        sites = [_site_report(node, content) for node, content in secure.replies.items()]
        details = {
            "survivors": len(secure.survivors),
            "dropped": len(secure.dropped),
            "quantisation_error_bound": secure.error_bound,
            "clipped_values": sum(secure.clipped_values.values()),
        }
        return _Outcome(arrays, sites, refusals, len(secure.dropped) - len(refusals), details)


def _refusal(server_round: int, node: int, code: int | None, reason: str) -> Refusal | None:
    parsed = records.parse_refusal(code, reason)
    if parsed is None:
        return None
    return Refusal(
        round=server_round,
        node_id=node,
        name=str(parsed.get("site", node)),
        kind=str(parsed["kind"]),
        reason=str(parsed.get("message", "")),
        remaining_epsilon=parsed.get("remaining_epsilon"),
    )


def _budget_refusals(server_round: int, reasons: Mapping[int, str]) -> list[Refusal]:
    """The budget refusals among secure aggregation's per-node reasons ('stage: reason')."""
    return [refusal for node, reason in reasons.items() if (refusal := _refusal(server_round, node, None, reason))]


def _site_report(node: int, content: RecordDict) -> SiteReport:
    site = content.get(records.SITE)
    dp_event = content.get(records.DP_EVENT)
    metrics = content.get(records.METRICS)
    return SiteReport(
        node_id=node,
        name=str(site["name"]) if site else str(node),
        metrics={key: float(value) for key, value in (metrics or {}).items()},
        dp_event=dict(dp_event) if dp_event is not None else None,
    )
