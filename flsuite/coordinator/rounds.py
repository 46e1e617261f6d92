"""The coordinator's round loop: choose a cohort, train, aggregate, evaluate, report.

It drives Flower's Message API through a ``Grid`` (in-process, Ray or a real SuperLink)
and a Flower strategy for aggregation. How one round's training is exchanged is a
``TrainRound``: ``PlainTrainRound`` sends each site the model and averages the replies;
``flsuite.coordinator.secure_round.SecureTrainRound`` wraps the same round in secure
aggregation, so the strategy only ever sees the securely averaged model. Sites that
refuse (privacy budget spent) are left out of later rounds; when fewer than the minimum
remain the study ends cleanly. A ``ReplyCheck`` (a DP study's: ``flsuite.coordinator.admission``)
may reject a site's train reply: it is left out of the average, recorded as a ``Rejection``,
and the site is not asked again. An ``Admit`` hook decides which available nodes may train.

Every reply is checked before it is averaged (``flsuite.coordinator.integrity``): the
global model's array names, shapes and dtypes, finite values, an update norm within
``federation.max_update_norm``, and an example count equal to the record count its site
declared in its status (asked once per node, or the DP plan's): that declaration, not the
reply, is the site's weight. A round with fewer valid replies than ``federation.min_sites``
publishes nothing: it is recorded as aborted with its reason (``RoundRules.quorum``).

A round closes at its deadline with the valid replies that arrived. A cohort node without
one (``RoundOutcome.missed``) missed the round; ``federation.max_missed_rounds`` misses in a
row prune it from later rounds (``flsuite.coordinator.pruning``), recorded in the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flsuite import protocol
from flsuite.config.schema import StudyConfig
from flsuite.coordinator.cohort import CohortGrid, choose_cohort
from flsuite.coordinator.integrity import DeclaredSizes, reply_weight_problem, update_problem
from flsuite.coordinator.pruning import MissedRounds, PrunedSite, pruning_text
from flsuite.coordinator.reply_records import ReplyRecords
from flsuite.coordinator.strategies import averaged_reply
from flsuite.errors import ProtocolError
from flsuite.models import decoded

__all__ = [
    "PlainTrainRound",
    "Refusal",
    "RoundLoop",
    "RoundOutcome",
    "RoundRecord",
    "REJECTED_REPLY",
    "Rejection",
    "ReplyCheck",
    "RoundRules",
    "SiteReport",
    "StudyResult",
    "TrainRound",
    "site_report",
]

Evaluator = Callable[[ArrayRecord], dict[str, float]]
SiteConfigs = Callable[[int, list[int]], Mapping[int, dict[str, Any]]]
#: (server round, node, reply content, its records parsed once) -> None to accept the train reply, else why it is rejected.
ReplyCheck = Callable[[int, int, RecordDict, ReplyRecords], "str | None"]
#: (server round, available nodes) -> the nodes that may train this round.
Admit = Callable[[int, list[int]], list[int]]

REJECTED_REPLY = "rejected-reply"  # the kind of a round refusal the coordinator made: a reply it did not accept


@dataclass(frozen=True)
class SiteReport:
    """What one site said in one round: its metrics, its status and the DP event it recorded."""

    node_id: int
    name: str
    metrics: dict[str, float]
    status: protocol.SiteStatus | None = None
    dp_event: protocol.DpEvent | None = None


@dataclass(frozen=True)
class Refusal:
    """A site that declined to train in a round, and why (its typed refusal)."""

    round: int
    node_id: int
    refusal: protocol.Refusal

    @property
    def name(self) -> str:
        return self.refusal.site

    @property
    def kind(self) -> str:
        return self.refusal.kind

    @property
    def reason(self) -> str:
        return self.refusal.message

    def to_summary(self) -> dict[str, Any]:
        refusal = self.refusal
        return {
            "round": self.round,
            "node_id": self.node_id,
            "name": refusal.site,
            "kind": refusal.kind,
            "reason": refusal.message,
            "remaining_epsilon": refusal.remaining_epsilon,
        }


@dataclass(frozen=True)
class Rejection:
    """A train reply the coordinator refused (kind "rejected-reply"): it is not in the average."""

    round: int
    node_id: int
    name: str
    reason: str
    kind: str = REJECTED_REPLY

    def to_summary(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "node_id": self.node_id,
            "name": self.name,
            "kind": self.kind,
            "reason": self.reason,
            "remaining_epsilon": None,
        }


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
    refusals: list[Refusal | Rejection] = field(default_factory=list)
    planning: list[dict[str, Any]] = field(default_factory=list)  # sites planned or left out (DP studies)
    aborted_rounds: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[PrunedSite] = field(default_factory=list)  # nodes pruned after too many missed rounds
    readmitted: list[dict[str, Any]] = field(default_factory=list)  # pruned nodes that reconnected and were planned afresh
    status: str = "completed"
    message: str = ""
    arrays: ArrayRecord | None = None


@dataclass
class RoundOutcome:
    """What one round's training exchange produced: the new global model, or None (aborted)."""

    arrays: ArrayRecord | None
    sites: list[SiteReport]
    refusals: list[Refusal | Rejection]
    failures: int
    secure: dict[str, Any] | None = None
    aborted: dict[str, Any] | None = None
    missed: tuple[int, ...] = ()  # cohort nodes with no valid reply in time (no reply, an error reply)


@dataclass(frozen=True)
class RoundRules:
    """What a round's replies are held to.

    quorum: fewest valid replies the round publishes with (``federation.min_sites``);
    declared: per node, the record count its site declared (its weight; None: a reply's
        own positive count is taken, as when a train round is used on its own);
    max_update_norm: the largest ||w_site - w_global|| a plain round averages (None: no bound).
    """

    quorum: int = 1
    declared: Mapping[int, int] | None = None
    max_update_norm: float | None = None


class TrainRound(Protocol):
    """One round's training exchange with the cohort, aggregated by the strategy."""

    def __call__(self, server_round: int, cohort: list[int], configs: Mapping[int, ConfigRecord], arrays: ArrayRecord,
                 rules: RoundRules | None = None) -> RoundOutcome: ...


class PlainTrainRound:
    """Send each site the global model, collect the replies, average the accepted ones weighted by their
    (declared) counts, and let the strategy take its server step from that one average (``averaged_reply``)."""

    def __init__(self, grid: Grid, strategy: Strategy, *, timeout_s: float, reply_check: ReplyCheck | None = None) -> None:
        self.grid = grid
        self.strategy = strategy
        self.timeout_s = timeout_s
        self.reply_check = reply_check

    def __call__(self, server_round: int, cohort: list[int], configs: Mapping[int, ConfigRecord], arrays: ArrayRecord,
                 rules: RoundRules | None = None) -> RoundOutcome:
        rules = rules or RoundRules()
        messages = [
            Message(RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: configs[node]}), dst_node_id=node, message_type=protocol.TRAIN)
            for node in cohort
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout_s))
        trained: list[tuple[Message, ReplyRecords]] = []
        failures = len(cohort) - len(replies)
        refusals: list[Refusal | Rejection] = []
        answered: set[int] = set()  # nodes that trained, refused or were rejected: they did not miss the round
        global_values = decoded(arrays)  # once per round, not once per reply
        for reply in replies:
            node = reply.metadata.src_node_id
            if not reply.has_error():
                answered.add(node)
            if reply.has_error():
                failures += 1
            elif protocol.REFUSAL in reply.content.config_records:
                refusal = _refusal(server_round, node, reply.content)
                if refusal is None:
                    failures += 1
                    answered.discard(node)
                else:
                    refusals.append(refusal)
            else:
                records = ReplyRecords.parse(reply.content)
                why = self._problem(server_round, node, reply.content, records, global_values, rules)
                if why is None:
                    trained.append((reply, records))
                else:
                    refusals.append(Rejection(round=server_round, node_id=node, name=reported_name(node, reply.content), reason=why))
        missed = tuple(node for node in cohort if node not in answered)
        if len(trained) < rules.quorum:
            return RoundOutcome(None, [], refusals, failures, missed=missed,
                                aborted=quorum_failure(server_round, len(trained), len(cohort), rules.quorum))
        checked = [_checked_reply(reply, rules) for reply, _ in trained]
        new_arrays, _ = self.strategy.aggregate_train(server_round, [averaged_reply(checked)])
        if new_arrays is None:
            return RoundOutcome(None, [], refusals, failures, missed=missed,
                                aborted={"stage": protocol.TRAIN, "reason": "the strategy produced no model"})
        sites = [site_report(reply.metadata.src_node_id, reply.content, records) for reply, records in trained]
        return RoundOutcome(new_arrays, sites, refusals, failures, missed=missed)

    def _problem(self, server_round: int, node: int, content: RecordDict, records: ReplyRecords,
                 global_values: Mapping[str, Any], rules: RoundRules) -> str | None:
        """Why a train reply may not be averaged (its model, its weight, the DP plan, its records), or None."""
        declared = rules.declared.get(node) if rules.declared is not None else None
        if rules.declared is not None and declared is None:
            return f"node {node} declared no record count (its status), so it has no aggregation weight"
        why = update_problem(global_values, content, max_update_norm=rules.max_update_norm)
        if why is None:
            why = reply_weight_problem(content, records, declared=declared)
        if why is None and self.reply_check is not None:
            why = self.reply_check(server_round, node, content, records)
        return why if why is not None else records.problem()


def quorum_failure(server_round: int, valid: int, asked: int, quorum: int) -> dict[str, Any]:
    """The record of a round aborted for want of valid replies."""
    return {
        "stage": protocol.TRAIN,
        "reason": f"round {server_round}: {valid} valid repl{'y' if valid == 1 else 'ies'} from the {asked} site(s) asked, fewer than "
        f"federation.min_sites={quorum}; nothing was published for this round",
    }


def _checked_reply(reply: Message, rules: RoundRules) -> Message:
    """What goes into the round's average of an accepted reply: its model and metrics, weighted by the declared count."""
    metrics = dict(reply.content.metric_records[protocol.METRICS])
    node = reply.metadata.src_node_id
    if rules.declared is not None:
        metrics[protocol.NUM_EXAMPLES] = rules.declared[node]
    content = RecordDict({protocol.ARRAYS: reply.content.array_records[protocol.ARRAYS], protocol.METRICS: MetricRecord(metrics)})
    return Message(content, dst_node_id=node, message_type=protocol.TRAIN)


class RoundLoop:
    """Runs the rounds of one study over a Grid, one ``TrainRound`` per round."""

    def __init__(
        self,
        study: StudyConfig,
        grid: Grid,
        *,
        strategy: Strategy,
        train_round: TrainRound,
        initial_arrays: ArrayRecord,
        evaluator: Evaluator | None,
        listeners: list[Callable[[RoundRecord, ArrayRecord], None]] | None = None,
        site_configs: SiteConfigs | None = None,
        excluded: set[int] | None = None,
        admit: Admit | None = None,
        declared: Mapping[int, int] | None = None,
        forget: Callable[[int], None] | None = None,
        site_names: Callable[[], Mapping[int, str]] | None = None,
        first_round: int = 1,
    ) -> None:
        self.study = study
        self.first_round = first_round  # a resumed study starts after its last published round
        self.grid = grid
        self.strategy = strategy
        self.train_round = train_round
        self.evaluator = evaluator
        self.listeners = list(listeners or [])
        self.site_configs = site_configs
        self.arrays = initial_arrays
        self.excluded: set[int] = set(excluded or ())  # refused, rejected, or left out of the privacy plan
        self.admit = admit  # a DP study's: only planned nodes train
        # Each node's declared record count (its weight): a DP plan's (``declared``), else its status, asked once.
        self.sizes = DeclaredSizes(grid, timeout_s=study.federation.round_timeout_s, max_records=study.federation.max_site_records,
                                   known=declared)
        # Nodes that miss max_missed_rounds rounds in a row are pruned; ``forget`` drops a reconnected one's plan.
        deadline = study.secagg.stage_deadline_s(study.federation.round_timeout_s) if study.secagg.enabled else study.federation.round_timeout_s
        self.pruning = MissedRounds(study.federation.max_missed_rounds, deadline_s=deadline)
        self.forget = forget
        self.site_names = site_names  # a DP plan's node -> site name, for nodes that never replied to the loop
        self.names: dict[int, str] = {}  # node -> the site name its replies gave
        self.known: set[int] = set()  # every node a round was asked to train

    def run(self) -> StudyResult:
        result = StudyResult()
        federation = self.study.federation
        for server_round in range(self.first_round, federation.rounds + 1):
            listed = list(self.grid.get_node_ids())
            self._readmit(server_round, listed, result)
            held_out = self.pruning.held_out()
            gone = sorted(self.known - set(listed) - self.excluded - held_out)  # a dead node's heartbeats stopped
            self._missed(server_round, gone, gone, "node-list")
            available = [n for n in listed if n not in self.excluded and n not in held_out]
            if self.admit is not None:
                available = self.admit(server_round, available)
            available = self._declared(server_round, available, result)
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
                    f"fewer than federation.min_sites={federation.min_sites}{pruning_text(self.pruning.pruned.values())}"
                )
                break
            record = self._round(server_round, cohort, result)
            if record is None:
                continue
            result.rounds.append(record)
            for listener in self.listeners:
                listener(record, self.arrays)
        result.arrays = self.arrays
        result.pruned = list(self.pruning.history)
        result.readmitted = list(self.pruning.readmitted)
        return result

    def _readmit(self, server_round: int, listed: list[int], result: StudyResult) -> None:
        """A pruned node that left the node list and is back: its declaration and plan are dropped, so it is planned afresh."""
        for node in self.pruning.returning(server_round, listed):
            self.sizes.records.pop(node, None)
            if self.forget is not None:
                self.forget(node)

    def _missed(self, server_round: int, asked: list[int], missed: list[int] | tuple[int, ...], stage: str) -> None:
        names = {**(self.site_names() if self.site_names else {}), **self.names}
        self.pruning.update(server_round, asked, missed, names=names, stage=stage)

    def _declared(self, server_round: int, available: list[int], result: StudyResult) -> list[int]:
        """The available nodes with a declared record count; a node that declares an unusable one is rejected."""
        answers = self.sizes.declare(available)
        self.names.update(answers.names)
        silent = sorted(answers.silent)  # a status query left unanswered in time counts as a missed round
        self._missed(server_round, silent, silent, "status")
        for node, why in sorted(answers.rejected.items()):
            result.refusals.append(Rejection(round=server_round, node_id=node, name=answers.names.get(node, str(node)),
                                             reason=f"its status: {why}"))
            self.excluded.add(node)
        return [n for n in available if self.sizes.get(n) is not None]

    def _rules(self, cohort: list[int]) -> RoundRules:
        federation = self.study.federation
        declared = {node: count for node in cohort if (count := self.sizes.get(node)) is not None}
        return RoundRules(quorum=federation.min_sites, declared=declared, max_update_norm=federation.max_update_norm)

    def _round(self, server_round: int, cohort: list[int], result: StudyResult) -> RoundRecord | None:
        started = time.perf_counter()
        outcome = self.train_round(server_round, cohort, self._configs(server_round, cohort), self.arrays, self._rules(cohort))
        result.refusals.extend(outcome.refusals)
        self.excluded.update(refusal.node_id for refusal in outcome.refusals)
        self.names.update({site.node_id: site.name for site in outcome.sites})
        self.known.update(cohort)
        self._missed(server_round, cohort, outcome.missed, protocol.TRAIN)
        if outcome.aborted is not None:
            result.aborted_rounds.append({"round": server_round, **outcome.aborted})
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

    def _configs(self, server_round: int, cohort: list[int]) -> dict[int, ConfigRecord]:
        """Each site's train config: the strategy's (server round, FedProx's mu, ...) plus the plan's."""
        base = ConfigRecord({protocol.SEED: self.study.seed})
        messages = list(self.strategy.configure_train(server_round, self.arrays, base, CohortGrid(self.grid, cohort)))
        shared = dict(messages[0].content[protocol.CONFIG]) if messages else dict(base)
        extras = self.site_configs(server_round, cohort) if self.site_configs else {}
        return {node: ConfigRecord({**shared, **extras.get(node, {})}) for node in cohort}


def _refusal(server_round: int, node: int, content: RecordDict) -> Refusal | None:
    try:
        return Refusal(round=server_round, node_id=node, refusal=protocol.Refusal.from_record(content.config_records[protocol.REFUSAL]))
    except ProtocolError:
        return None


def reported_name(node: int, content: RecordDict) -> str:
    """The site name a reply claims in its status record, else the node id (for the record of a rejection)."""
    record = content.config_records.get(protocol.SITE)
    name = record.get("name") if record is not None else None
    return name if isinstance(name, str) and name else str(node)


def site_report(node: int, content: RecordDict, records: ReplyRecords) -> SiteReport:
    """A site's accepted train reply as the coordinator records it (its name from its status).

    ``records`` is the reply's status and DP event, parsed once; a reply is accepted only when they
    parse (``ReplyRecords.problem`` is None). Only the metrics that are single numbers are kept.
    """
    metrics = content.metric_records.get(protocol.METRICS)
    status = records.status
    return SiteReport(
        node_id=node,
        name=status.name if status else str(node),
        metrics={key: float(value) for key, value in (metrics or {}).items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool)},
        status=status,
        dp_event=records.dp_event,
    )


def refusals_from(server_round: int, site_refusals: Mapping[int, protocol.Refusal]) -> list[Refusal]:
    """The typed refusals a secure round collected, as round refusals."""
    return [Refusal(round=server_round, node_id=node, refusal=refusal) for node, refusal in sorted(site_refusals.items())]
