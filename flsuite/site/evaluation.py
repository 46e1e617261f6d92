"""A site's private evaluation of the global model: its held-out records, noisy counts, ledger event.

With monitoring on in a DP study (``StudyConfig.site_evaluation``) every site splits its records
once, by a seed derived from the study's data seed and the site's name: ``monitoring.holdout_fraction``
of them are held out and never trained on; the rest are what it trains on, declares and plans with.

When the coordinator asks (an evaluate message with ``protocol.SITE_EVALUATION`` in its config),
the site reserves the release in its ledger under its cap (the same one-operation check as
training: refused with "budget-exhausted" and nothing released when it does not fit), counts
per class the held-out records the global model gets right, adds Gaussian noise from fresh OS
entropy (``flsuite.privacy.release``), replaces the reservation by the final Gaussian event and
anchors the new head, and only then replies: the noisy counts, the DP event and its status.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flsuite import protocol
from flsuite.config.schema import StudyConfig
from flsuite.data.datasets import Dataset
from flsuite.errors import BudgetExhausted, DataError
from flsuite.privacy import EVALUATION_SENSITIVITY, GAUSSIAN, DpEvent, release_counts, utc_now_iso
from flsuite.site.replies import budget_refusal_reply

__all__ = ["GAUSSIAN_RNG", "class_counts", "evaluate_private", "holdout_split", "training_part"]

GAUSSIAN_RNG = "numpy PCG64 seeded per release from os.urandom (128 bits)"


def holdout_split(data: Dataset, *, site: str, seed: int, fraction: float) -> tuple[Dataset, Dataset]:
    """(training part, held-out part): a permutation seeded by (data seed, site name), so a site
    holds out the same records in every round and every study with that seed."""
    if len(data) < 2:
        raise DataError(f"site {site!r} has {len(data)} record(s): per-site evaluation needs at least 2 (or set monitoring=none)")
    digest = hashlib.sha256(json.dumps(["holdout", seed, site]).encode()).digest()
    order = np.random.default_rng(int.from_bytes(digest[:16], "little")).permutation(len(data))
    held = min(len(data) - 1, max(1, int(round(fraction * len(data)))))
    return data.subset(np.sort(order[held:])), data.subset(np.sort(order[:held]))


def training_part(study: StudyConfig, site: str, data: Dataset) -> tuple[Dataset, Dataset | None]:
    """The records the site trains on and those it holds out (None: no per-site evaluation)."""
    if not study.site_evaluation:
        return data, None
    return holdout_split(data, site=site, seed=study.data.seed, fraction=study.monitoring.holdout_fraction)


def class_counts(model: torch.nn.Module, data: Dataset) -> tuple[list[int], list[int]]:
    """Per class: held-out records the model classifies correctly, and held-out records."""
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.features)).argmax(dim=1).numpy()
    labels = data.labels.astype(np.int64)
    total = np.bincount(labels, minlength=data.num_classes)
    correct = np.bincount(labels[predicted == labels], minlength=data.num_classes)
    return [int(v) for v in correct], [int(v) for v in total]


def evaluate_private(msg: Message, context: Context, *, setup, model: torch.nn.Module) -> Message:
    """Reserve the release (or refuse), count, add fresh noise, record the event, reply."""
    from flsuite.site.privacy_guard import RESERVATION_RNG, site_privacy

    study = setup.study
    if setup.holdout is None:
        raise DataError(f"site {setup.name!r} holds out no records: the study has monitoring off")
    guard = site_privacy(context.node_config, site=setup.name, labels=setup.data.labels, study=study)
    sigma = study.monitoring.noise_multiplier
    server_round = int(msg.content[protocol.CONFIG].get(protocol.SERVER_ROUND, 0))
    fields = {
        "study_id": study.name,
        "run_id": str(context.run_id),
        "round": server_round,
        "site": setup.name,
        "dataset": guard.dataset,
        "sample_rate": 1.0,
        "noise_multiplier": sigma,
        "steps": 1,
        "max_grad_norm": EVALUATION_SENSITIVITY,
        "delta": guard.budget.delta,
        "accountant": guard.budget.accountant,
        "mechanism": GAUSSIAN,
    }

    def count() -> tuple[list[float], list[float]]:
        correct, total = class_counts(model, setup.holdout)
        return release_counts(correct, total, noise_multiplier=sigma)

    try:  # the event is durable and anchored before the counts leave the site
        (noisy_correct, noisy_total), event = guard.release(
            DpEvent(**fields, rng=RESERVATION_RNG, recorded_at=utc_now_iso()),
            count,
            final=lambda _: DpEvent(**fields, rng=GAUSSIAN_RNG, recorded_at=utc_now_iso()),
            what="evaluation",
        )
    except BudgetExhausted as refusal:
        return budget_refusal_reply(msg, site=setup.name, refusal=refusal)
    records = {
        protocol.EVALUATION_COUNTS: ConfigRecord({protocol.CORRECT: noisy_correct, protocol.TOTAL: noisy_total}),
        protocol.DP_EVENT: ConfigRecord(protocol.dp_event_to_record(event)),
    }
    if study.monitoring.drift and msg.content[protocol.CONFIG].get(protocol.DRIFT_CHECK, False):
        from flsuite.site.drift import drift_release

        drift = drift_release(guard, setup, run_id=fields["run_id"], server_round=server_round)
        if drift is not None:  # None: the cap cannot fit it, nothing was released
            records[protocol.DRIFT] = ConfigRecord(drift[0])
            records[protocol.DRIFT_EVENT] = ConfigRecord(protocol.dp_event_to_record(drift[1]))
    records[protocol.SITE] = ConfigRecord(guard.status().to_record())
    return Message(RecordDict(records), reply_to=msg)
