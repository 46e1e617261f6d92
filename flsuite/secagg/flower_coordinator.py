"""The coordinator side on Flower: one secure training round through a Grid.

Four stages, each one ``grid.send_and_receive`` with a finite timeout: "setup" and
"share-keys" (message type "query"), "train" (message type "train", carrying the global
model and the site's train config) and "unmask" ("query"). Nodes that do not answer in
time, or answer with an error, are dropped; below the minimum the round aborts with
SecAggAborted, nothing is unmasked, and the caller keeps the global model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from flsuite.errors import ConfigError

from .coordinator import CoordinatorRound
from .errors import SecAggAborted
from .flower_model import ModelLayout, model_digest
from .flower_site import MASKED_RECORD, SECAGG_RECORD
from .settings import SecAggSettings

__all__ = ["SecureRoundResult", "secure_train_round"]


@dataclass(frozen=True)
class SecureRoundResult:
    """Outcome of a secure round.

    arrays: global + sum(w*update)/sum(w), with the global model's names, shapes, dtypes.
    total_weight: sum of the survivors' weights w = min(num-examples, weight_cap)/weight_cap.
    survivors: nodes whose updates are in the average; dropped: the rest of the cohort.
    replies: per survivor, the records of its train reply other than the masked vector
        (MetricRecords without "num-examples", ConfigRecords such as a DP event).
    error_bound: largest quantisation error of any averaged-update coordinate (before the
        cast to the model's dtypes).
    clipped_values: per survivor, update values clipped to the range (only with clip_out_of_range).
    refusals: per node, why it was dropped when it said so (error replies, malformed replies).
    """

    arrays: ArrayRecord
    total_weight: float
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    replies: dict[int, RecordDict]
    error_bound: float
    clipped_values: dict[int, int] = field(default_factory=dict)
    refusals: dict[int, str] = field(default_factory=dict)


def secure_train_round(grid: Grid, *, node_ids: Iterable[int], server_round: int, global_arrays: ArrayRecord,
                       train_configs: Mapping[int, ConfigRecord], settings: SecAggSettings,
                       timeout_s: float) -> SecureRoundResult:
    """Train one round on ``node_ids`` and return the securely aggregated weighted average."""
    nodes = sorted(set(node_ids))
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ConfigError(f"secagg timeout_s={timeout_s!r}: every stage needs a finite timeout > 0 seconds.")
    missing = [n for n in nodes if n not in train_configs]
    if missing:
        raise ConfigError(f"train_configs lacks a ConfigRecord for nodes {missing}")
    layout = ModelLayout.of(global_arrays)
    global_vector = layout.flatten(global_arrays)
    coordinator = CoordinatorRound(settings, run_id=grid.run.run_id, server_round=server_round, cohort=nodes,
                                   model_hash=model_digest(global_arrays), vector_length=layout.size + 1)
    refusals: dict[int, str] = {}
    records: dict[int, RecordDict] = {}

    def exchange(requests: Mapping[int, Mapping[str, Any]], stage: str) -> dict[int, dict[str, Any]]:
        messages = []
        for node, request in requests.items():
            content = RecordDict({SECAGG_RECORD: ConfigRecord(dict(request))})
            if stage == "train":
                content["arrays"] = global_arrays
                content["config"] = train_configs[node]
            messages.append(Message(content, dst_node_id=node, message_type="train" if stage == "train" else "query",
                                    group_id=str(server_round), ttl=float(timeout_s)))
        replies: dict[int, dict[str, Any]] = {}
        for reply in grid.send_and_receive(messages, timeout=float(timeout_s)):
            node = reply.metadata.src_node_id
            if node not in requests or node in replies or node in refusals:
                continue
            if reply.has_error():
                refusals[node] = f"{stage}: {reply.error.reason or f'error {reply.error.code}'}"
                continue
            if SECAGG_RECORD not in reply.content.config_records:
                refusals[node] = f"{stage}: reply without a {SECAGG_RECORD!r} record"
                continue
            answer = dict(reply.content.config_records[SECAGG_RECORD])
            if stage == "train":
                masked = reply.content.array_records.get(MASKED_RECORD)
                answer["masked"] = masked["masked"].numpy() if masked is not None and "masked" in masked else None
                records[node] = RecordDict({name: rec for name, rec in reply.content.items()
                                            if name not in (SECAGG_RECORD, MASKED_RECORD)
                                            and not isinstance(rec, ArrayRecord)})
            replies[node] = answer
        return replies

    try:
        keys = exchange(coordinator.setup_requests(), "setup")
        shares = exchange(coordinator.receive_keys(keys), "share-keys")
        masked = exchange(coordinator.receive_shares(shares), "train")
        unmasks = exchange(coordinator.receive_masked(masked), "unmask")
        summed = coordinator.receive_unmask(unmasks)
    except SecAggAborted as exc:
        every = {**coordinator.rejected, **refusals}
        detail = "; ".join(f"node {n}: {why}" for n, why in sorted(every.items()))
        raise SecAggAborted(f"{exc}{' Refusals: ' + detail if detail else ''}", stage=exc.stage, refusals=every) from None
    if summed.total_weight <= 0:
        raise SecAggAborted(f"round {server_round}: the survivors' total weight is 0 (no examples); nothing to average",
                            stage="unmask")
    average = summed.weighted_update_sum / summed.total_weight
    return SecureRoundResult(
        arrays=layout.rebuild(global_vector + average), total_weight=summed.total_weight,
        survivors=summed.survivors, dropped=summed.dropped,
        replies={n: records[n] for n in summed.survivors if n in records}, error_bound=summed.error_bound,
        clipped_values=summed.clipped_values, refusals={**summed.rejected, **refusals})
