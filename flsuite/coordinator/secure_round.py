"""Secure aggregation on the coordinator: one round's training exchange through a Grid.

Four stages, each one ``grid.send_and_receive`` with a finite timeout: "setup" and
"share-keys" (message type "query"), "train" (message type "train", carrying the global
model and the site's train config) and "unmask" ("query"). Nodes that do not answer in
time, or answer with an error, are dropped; below the minimum the round aborts with
SecAggAborted, nothing is unmasked, and the caller keeps the global model. Every stage's
deadline is the study's ``secagg.stage_deadline_s`` (``federation.round_timeout_s`` unless
``secagg.stage_timeout_s`` is set): the same deadline per stage as a plain round's. A node
that answers some stage late, with an error or malformed, missed the round
(``SecureRoundResult.missed``, ``SecAggAborted.missed``): the round loop prunes it after
``federation.max_missed_rounds`` misses in a row.

A masked train reply carries its site's status and DP event in the clear next to the
masked vector. A ``reply_check`` (a DP study's) looks at them before the unmask stage: a
reply it rejects is dropped there, like a site that fell silent, so its masked input is
removed from the sum (its mask is reconstructed from the shares) and never averaged.

Weights are the declared ones (``declared``: each node's record count from its status or
the DP plan): a masked reply whose clear status declares another count is dropped the same
way, and the unmasked sum must carry exactly the survivors' declared weights and lie in
the range honest updates fill (``flsuite.secagg.quantize.sum_problem``); a sum that fails
aborts the round and nothing is published. Fewer valid masked replies than ``quorum``
(``federation.min_sites``) abort it before anything is unmasked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flsuite import protocol
from flsuite.coordinator.integrity import status_count_problem
from flsuite.coordinator.reply_records import ReplyRecords
from flsuite.coordinator.rounds import (
    Rejection,
    ReplyCheck,
    RoundOutcome,
    RoundRules,
    refusals_from,
    reported_name,
    site_report,
)
from flsuite.errors import ConfigError, ProtocolError, SecAggAborted
from flsuite.models import ModelLayout, array_values, decoded
from flsuite.secagg import CoordinatorRound, SecAggSettings, model_hash

_log = logging.getLogger(__name__)

__all__ = ["SecureRoundResult", "SecureTrainRound", "secure_train_round"]

SECAGG_RECORD, MASKED_RECORD = protocol.SECAGG_RECORD, protocol.MASKED_RECORD


@dataclass(frozen=True)
class SecureRoundResult:
    """Outcome of a secure round.

    arrays: global + sum(w*update)/sum(w), with the global model's names, shapes, dtypes.
    total_weight: sum of the survivors' weights w = min(num-examples, weight_cap)/weight_cap.
    survivors: nodes whose updates are in the average; dropped: the rest of the cohort.
    replies: per survivor, the records of its train reply other than the masked vector
        (MetricRecords without the example count, ConfigRecords such as a DP event).
    parsed: per survivor, its reply's site status and DP event, as the checks parsed them.
    error_bound: largest quantisation error of any averaged-update coordinate (before the
        cast to the model's dtypes).
    clipped_values: per survivor, update values clipped to the range (only with clip_out_of_range).
    refusals: per node, why it was dropped when it said so (error replies, malformed replies).
    site_refusals: per node, the typed refusal of a site that declined to train (its budget, ...).
    rejected: per node, (site name, reason) of a masked train reply the reply check refused
        before the unmask stage: dropped, its masked input is not in the average.
    wrong_shares: per node, the shares it revealed at unmask that are off their secret's
        polynomial (outvoted; the node stays, since the share's dealer may have dealt it wrong).
    """

    arrays: ArrayRecord
    total_weight: float
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    replies: dict[int, RecordDict]
    parsed: dict[int, ReplyRecords]
    error_bound: float
    clipped_values: dict[int, int] = field(default_factory=dict)
    refusals: dict[int, str] = field(default_factory=dict)
    site_refusals: dict[int, protocol.Refusal] = field(default_factory=dict)
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)
    missed: tuple[int, ...] = ()  # nodes that gave no valid answer in time at some stage (not refusals or rejections)
    wrong_shares: dict[int, str] = field(default_factory=dict)


def secure_train_round(grid: Grid, *, node_ids: Iterable[int], server_round: int, global_arrays: ArrayRecord,
                       train_configs: Mapping[int, ConfigRecord], settings: SecAggSettings,
                       timeout_s: float, reply_check: ReplyCheck | None = None, quorum: int = 1,
                       declared: Mapping[int, int] | None = None, pinned: Mapping[str, bytes] | None = None) -> SecureRoundResult:
    """Train one round on ``node_ids`` and return the securely aggregated weighted average.

    ``reply_check(round, node, content, records)`` sees each masked train reply's clear records
    (status, DP event, ..., parsed once: ``ReplyRecords``) before the unmask stage; a reply it
    rejects is dropped there.
    ``declared``: each node's declared record count; the unmasked total weight must be the
    survivors' (None: not checked, and then a wrong share or masked vector is caught only when
    it puts the average beyond the clip range; a study always declares). ``quorum``: fewest
    valid masked replies to unmask. ``pinned``: the sites' pinned identities, when the
    coordinator has them: a site whose setup keys they do not sign is dropped at setup.
    """
    nodes = sorted(set(node_ids))
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ConfigError(f"secagg timeout_s={timeout_s!r}: every stage needs a finite timeout > 0 seconds.")
    missing = [n for n in nodes if n not in train_configs]
    if missing:
        raise ConfigError(f"train_configs lacks a ConfigRecord for nodes {missing}")
    global_values = decoded(global_arrays)  # decoded once: layout, hash and vector
    layout = ModelLayout.of_values(global_values)
    if layout.size == 0:
        raise ConfigError(f"the global model has no weights to average (arrays: {sorted(global_values)}); secure "
                          "aggregation needs a model with at least one value.")
    global_vector = layout.flatten_values(global_values)
    if declared is not None and any(n not in declared for n in nodes):
        raise ConfigError(f"declared lacks a record count for nodes {[n for n in nodes if n not in declared]}")
    coordinator = CoordinatorRound(settings, run_id=grid.run.run_id, server_round=server_round, cohort=nodes,
                                   model_hash=model_hash(global_values), vector_length=layout.size + 1,
                                   declared={n: declared[n] for n in nodes} if declared is not None else None,
                                   pinned=pinned)
    refusals: dict[int, str] = {}
    site_refusals: dict[int, protocol.Refusal] = {}
    records: dict[int, RecordDict] = {}
    parsed: dict[int, ReplyRecords] = {}  # each masked reply's records, parsed once by the checks
    rejected: dict[int, tuple[str, str]] = {}
    silent: set[int] = set()  # asked at a stage, no usable answer in time (no reply, an error, a malformed one)

    def missed() -> tuple[int, ...]:
        invalid = silent | set(coordinator.rejected)
        return tuple(sorted(n for n in invalid if n in nodes and n not in site_refusals and n not in rejected))

    def checked(masked: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """The masked replies the checks accept; the others are dropped before unmasking."""
        for node in sorted(masked):
            content = records.get(node, RecordDict())
            parsed[node] = reply_records = ReplyRecords.parse(content)
            why = None
            if declared is not None and reply_records.has_status:
                why = status_count_problem(reply_records, declared=declared[node])
            if why is None and reply_check is not None:
                why = reply_check(server_round, node, content, reply_records)
            if why is None:
                why = reply_records.problem()
            if why is not None:
                rejected[node] = (reported_name(node, records.get(node, RecordDict())), why)
                refusals[node] = f"{protocol.MASKED_TRAIN}: reply rejected: {why}"
                del masked[node]
        return masked

    def exchange(requests: Mapping[int, Mapping[str, Any]], stage: str) -> dict[int, dict[str, Any]]:
        messages = []
        for node, request in requests.items():
            content = RecordDict({SECAGG_RECORD: ConfigRecord(dict(request))})
            if stage == protocol.MASKED_TRAIN:
                content[protocol.ARRAYS] = global_arrays
                content[protocol.CONFIG] = train_configs[node]
            message_type = protocol.TRAIN if stage == protocol.MASKED_TRAIN else protocol.QUERY
            messages.append(Message(content, dst_node_id=node, message_type=message_type, group_id=str(server_round), ttl=float(timeout_s)))
        replies: dict[int, dict[str, Any]] = {}
        for reply in grid.send_and_receive(messages, timeout=float(timeout_s)):
            node = reply.metadata.src_node_id
            if node not in requests or node in replies or node in refusals:
                continue
            if reply.has_error():
                refusals[node] = f"{stage}: {reply.error.reason or f'error {reply.error.code}'}"
                continue
            config_records = reply.content.config_records  # Flower builds a new dict at each access
            if protocol.REFUSAL in config_records:
                try:
                    refusal = protocol.Refusal.from_record(config_records[protocol.REFUSAL])
                except ProtocolError as error:
                    refusals[node] = f"{stage}: {error}"
                    continue
                site_refusals[node] = refusal
                refusals[node] = f"{stage}: site {refusal.site!r} refused ({refusal.kind}): {refusal.message}"
                continue
            if SECAGG_RECORD not in config_records:
                refusals[node] = f"{stage}: reply without a {SECAGG_RECORD!r} record"
                continue
            answer = dict(config_records[SECAGG_RECORD])
            if stage == protocol.MASKED_TRAIN:
                masked = reply.content.array_records.get(MASKED_RECORD)
                vector = protocol.MASKED_VECTOR
                try:
                    answer[vector] = array_values(masked[vector]) if masked is not None and vector in masked else None
                except Exception as error:  # a site's bytes that do not decode: that site is dropped, not the round
                    refusals[node] = f"{stage}: the masked vector cannot be read ({type(error).__name__}: {error})"
                    continue
                records[node] = RecordDict({name: rec for name, rec in reply.content.items()
                                            if name not in (SECAGG_RECORD, MASKED_RECORD)
                                            and not isinstance(rec, ArrayRecord)})
            replies[node] = answer
        silent.update(node for node in requests if node not in replies and node not in site_refusals)
        return replies

    try:
        keys = exchange(coordinator.setup_requests(), protocol.SETUP)
        shares = exchange(coordinator.receive_keys(keys), protocol.SHARE_KEYS)
        masked = checked(exchange(coordinator.receive_shares(shares), protocol.MASKED_TRAIN))
        unmask_requests = coordinator.receive_masked(masked)
        if len(unmask_requests) < quorum:
            raise SecAggAborted(f"round {server_round}: {len(unmask_requests)} valid masked repl{'y' if len(unmask_requests) == 1 else 'ies'}, "
                                f"fewer than federation.min_sites={quorum}. Nothing was unmasked.", stage=protocol.MASKED_TRAIN)
        unmasks = exchange(unmask_requests, protocol.UNMASK)
        summed = coordinator.receive_unmask(unmasks)
    except SecAggAborted as exc:
        every = {**coordinator.rejected, **refusals}
        detail = "; ".join(f"node {n}: {why}" for n, why in sorted(every.items()))
        aborted = SecAggAborted(f"{exc}{' Refusals: ' + detail if detail else ''}", stage=exc.stage, refusals=every)
        aborted.site_refusals = dict(site_refusals)
        aborted.rejected = dict(rejected)  # type: ignore[attr-defined]
        aborted.missed = missed()  # type: ignore[attr-defined]
        raise aborted from None
    if summed.total_weight <= 0:
        raise SecAggAborted(f"round {server_round}: the survivors' total weight is 0 (no examples); nothing to average",
                            stage=protocol.UNMASK)
    average = summed.weighted_update_sum / summed.total_weight
    if not np.all(np.isfinite(average)):
        raise SecAggAborted(f"round {server_round}: the unmasked average is not finite; nothing was published", stage=CoordinatorRound.SUM_CHECK)
    # A weighted average of updates within [-R, R] lies within it too (up to the quantisation error): one that does
    # not was made of a wrong share or a garbage masked vector, which the sum check cannot see without declared weights.
    outside = int(np.count_nonzero(np.abs(average) > settings.clip_range + summed.error_bound))
    if outside:
        raise SecAggAborted(f"round {server_round}: {outside} coordinates of the unmasked average lie beyond the clip range "
                            f"±{settings.clip_range}, which no honest sites' average can: a site sent a wrong share or masked "
                            "vector; nothing was published", stage=CoordinatorRound.SUM_CHECK)
    for node, why in summed.wrong_shares.items():
        _log.warning("round %d: node %d revealed a wrong share, outvoted by the others: %s", server_round, node, why)
    for node, why in summed.unreadable_shares.items():
        _log.warning("round %d: node %d holds no share of some peers (the others' shares rebuilt their secrets): %s",
                     server_round, node, why)
    return SecureRoundResult(
        arrays=layout.rebuild(global_vector + average), total_weight=summed.total_weight,
        survivors=summed.survivors, dropped=summed.dropped,
        replies={n: records[n] for n in summed.survivors if n in records},
        parsed={n: parsed[n] for n in summed.survivors if n in parsed}, error_bound=summed.error_bound,
        clipped_values=summed.clipped_values, refusals={**summed.rejected, **refusals}, site_refusals=site_refusals,
        rejected=rejected, missed=missed(), wrong_shares=summed.wrong_shares)


class SecureTrainRound:
    """A round's training exchange wrapped in secure aggregation.

    The cohort trains through the four secure-aggregation stages; the strategy sees one
    "reply", the securely averaged model weighted by the sum of the sites' weights. An
    aborted round changes nothing: no model, and the reason in ``RoundOutcome.aborted``.
    """

    def __init__(self, grid: Grid, strategy: Strategy, *, settings_for: Callable[[int], SecAggSettings], timeout_s: float,
                 reply_check: ReplyCheck | None = None, pinned: Mapping[str, bytes] | None = None) -> None:
        self.grid = grid
        self.strategy = strategy
        self.settings_for = settings_for
        self.timeout_s = timeout_s
        self.reply_check = reply_check
        self.pinned = pinned

    def __call__(self, server_round: int, cohort: list[int], configs: Mapping[int, ConfigRecord], arrays: ArrayRecord,
                 rules: RoundRules | None = None) -> RoundOutcome:
        rules = rules or RoundRules()
        try:
            secure = secure_train_round(
                self.grid,
                node_ids=cohort,
                server_round=server_round,
                global_arrays=arrays,
                train_configs=configs,
                settings=self.settings_for(len(cohort)),
                timeout_s=self.timeout_s,
                reply_check=self.reply_check,
                quorum=rules.quorum,
                declared=rules.declared,
                pinned=self.pinned,
            )
        except SecAggAborted as exc:  # nothing was unmasked; the global model stays as it was
            refusals = [*refusals_from(server_round, exc.site_refusals), *_rejections(server_round, getattr(exc, "rejected", {}))]  # type: ignore[arg-type]
            return RoundOutcome(None, [], refusals, 0, aborted={"stage": exc.stage, "reason": str(exc)},
                                missed=tuple(getattr(exc, "missed", ())))
        refusals = [*refusals_from(server_round, secure.site_refusals), *_rejections(server_round, secure.rejected)]
        averaged = Message(
            RecordDict({protocol.ARRAYS: secure.arrays, protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: secure.total_weight})}),
            dst_node_id=0,
            message_type=protocol.TRAIN,
        )
        new_arrays, _ = self.strategy.aggregate_train(server_round, [averaged])
        sites = [site_report(node, content, secure.parsed[node]) for node, content in secure.replies.items()]
        details = {
            "survivors": len(secure.survivors),
            "dropped": len(secure.dropped),
            "quantisation_error_bound": secure.error_bound,
            "clipped_values": sum(secure.clipped_values.values()),
            "wrong_shares": len(secure.wrong_shares),
        }
        return RoundOutcome(new_arrays, sites, refusals, len(secure.dropped) - len(refusals), secure=details, missed=secure.missed)


def _rejections(server_round: int, rejected: Mapping[int, tuple[str, str]]) -> list[Rejection]:
    return [Rejection(round=server_round, node_id=node, name=name, reason=why) for node, (name, why) in sorted(rejected.items())]
