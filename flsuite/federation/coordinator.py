"""The coordinator's round loop: choose a cohort, train, aggregate, evaluate, report.

It drives Flower's Message API through a ``Grid`` (inline, Ray or a real SuperLink) and a
Flower strategy for aggregation. Sites that refuse (privacy budget spent) are left out
of later rounds; when fewer than the minimum remain the study ends cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from flsuite.config.schema import StudyConfig
from flsuite.federation import records
from flsuite.federation.cohort import CohortGrid, choose_cohort
from flsuite.federation.strategies import build_strategy

Evaluator = Callable[[ArrayRecord], dict[str, float]]


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


@dataclass
class StudyResult:
    """Everything a study produced, in memory."""

    rounds: list[RoundRecord] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    status: str = "completed"
    message: str = ""
    arrays: ArrayRecord | None = None


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
    ) -> None:
        self.study = study
        self.grid = grid
        self.evaluator = evaluator
        self.listeners = list(listeners or [])
        self.strategy = build_strategy(study.federation, initial_arrays)
        self.arrays = initial_arrays
        self.excluded: set[int] = set()

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
        config = ConfigRecord({"seed": self.study.seed})
        messages = self.strategy.configure_train(server_round, self.arrays, config, CohortGrid(self.grid, cohort))
        replies = list(
            self.grid.send_and_receive(
                [_own_copy(message) for message in messages], timeout=self.study.federation.round_timeout_s
            )
        )
        trained, refused, failures = _sort_replies(replies, server_round)
        result.refusals.extend(refused)
        self.excluded.update(refusal.node_id for refusal in refused)
        if not trained:
            return None
        arrays, _ = self.strategy.aggregate_train(server_round, trained)
        if arrays is not None:
            self.arrays = arrays
        metrics = self.evaluator(self.arrays) if self.evaluator else {}
        sites = [_site_report(reply) for reply in trained]
        return RoundRecord(
            round=server_round,
            metrics=metrics,
            sites=sorted(sites, key=lambda s: s.name),
            failures=failures + len(cohort) - len(replies),
            wall_s=time.perf_counter() - started,
        )


def _own_copy(message: Message) -> Message:
    """Flower strategies send one shared RecordDict to every node; give each message its own."""
    content = RecordDict({key: value for key, value in message.content.items()})
    content[records.CONFIG] = ConfigRecord(dict(message.content[records.CONFIG]))
    return Message(content, dst_node_id=message.metadata.dst_node_id, message_type=message.metadata.message_type)


def _sort_replies(replies: list[Message], server_round: int) -> tuple[list[Message], list[Refusal], int]:
    trained, refused, failures = [], [], 0
    for reply in replies:
        if reply.has_error():
            failures += 1
        elif records.REFUSAL in reply.content:
            refusal = reply.content[records.REFUSAL]
            remaining = refusal.get("remaining-epsilon")
            refused.append(
                Refusal(
                    round=server_round,
                    node_id=reply.metadata.src_node_id,
                    name=str(refusal.get("site", "?")),
                    kind=str(refusal.get("kind", "refused")),
                    reason=str(refusal.get("reason", "")),
                    remaining_epsilon=float(remaining) if remaining is not None else None,
                )
            )
        else:
            trained.append(reply)
    return trained, refused, failures


def _site_report(reply: Message) -> SiteReport:
    content = reply.content
    site = content.get(records.SITE)
    dp_event = content.get(records.DP_EVENT)
    return SiteReport(
        node_id=reply.metadata.src_node_id,
        name=str(site["name"]) if site else str(reply.metadata.src_node_id),
        metrics={key: float(value) for key, value in content[records.METRICS].items()},
        dp_event=dict(dp_event) if dp_event is not None else None,
    )
