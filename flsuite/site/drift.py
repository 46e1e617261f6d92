"""A site's drift check: a DP histogram of its labels (and binned features) once per study, kept
in its own folder, compared with its previous study's by total variation beyond the noise.

Asked with the final round's private evaluation when ``monitoring.drift`` is on. The site
reserves the release under its cap (as for training and evaluation), computes the histograms of
the records it trains on, adds Gaussian noise (``flsuite.privacy.release``), records the final
Gaussian event, appends the noisy histograms to ``drift.jsonl`` beside its ledger and releases
only the comparison with its previous study (post-processing of two DP releases): the distance,
the noise margin and whether it passed ``monitoring.drift_threshold``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flsuite import protocol
from flsuite.errors import BudgetExhausted
from flsuite.privacy import GAUSSIAN, DpEvent, drift_between, drift_sensitivity, histograms, release_histograms, utc_now_iso
from flsuite.storage import durable

__all__ = ["DRIFT_FILE", "drift_release", "previous_release"]

DRIFT_FILE = "drift.jsonl"  # beside the site's ledger: one noisy release per study


def previous_release(text: str, *, dataset: str, run_id: str, shape: list[int]) -> dict[str, Any] | None:
    """The latest release of another run for this dataset with the same blocks in the drift file's
    ``text`` (None: first study)."""
    found = None
    for line in text.splitlines():
        entry = json.loads(line)
        if entry["dataset"] == dataset and entry["run_id"] != run_id and [len(b) for b in entry["histograms"]] == shape:
            found = entry
    return found


def drift_release(guard, setup, *, run_id: str, server_round: int) -> tuple[dict[str, Any], DpEvent] | None:
    """Reserve, release, record, compare; None (nothing released) when the cap cannot fit it."""
    from flsuite.site.evaluation import GAUSSIAN_RNG
    from flsuite.site.privacy_guard import RESERVATION_RNG

    study = setup.study
    monitoring = study.monitoring
    columns = list(monitoring.drift_features or [])
    fields = {
        "study_id": study.name, "run_id": run_id, "round": server_round, "site": setup.name, "dataset": guard.dataset,
        "sample_rate": 1.0, "noise_multiplier": monitoring.drift_noise_multiplier, "steps": 1,
        "max_grad_norm": drift_sensitivity(len(columns)), "delta": guard.budget.delta, "accountant": guard.budget.accountant,
        "mechanism": GAUSSIAN,
    }

    def noisy_histograms() -> list[list[float]]:
        data = setup.data
        blocks = histograms(data.labels, data.features, num_classes=data.num_classes, columns=columns, bins=monitoring.drift_bins)
        return release_histograms(blocks, noise_multiplier=monitoring.drift_noise_multiplier)

    try:
        noisy, event = guard.release(DpEvent(**fields, rng=RESERVATION_RNG, recorded_at=utc_now_iso()), noisy_histograms,
                                     final=lambda _: DpEvent(**fields, rng=GAUSSIAN_RNG, recorded_at=utc_now_iso()),
                                     what="drift release")
    except BudgetExhausted:
        return None
    path = Path(guard.ledger.path).parent / DRIFT_FILE
    entry = {"dataset": guard.dataset, "study_id": study.name, "run_id": run_id, "recorded_at": event.recorded_at,
             "columns": columns, "bins": monitoring.drift_bins, "noise_multiplier": monitoring.drift_noise_multiplier,
             "histograms": noisy}
    # Under the ledger's lock: a second study's release at this site cannot rewrite the file in
    # between and lose this line (or this one lose its).
    with guard.ledger.locked():
        old = path.read_bytes() if path.is_file() else b""  # read once: the previous release and the rewrite
        previous = previous_release(old.decode(), dataset=guard.dataset, run_id=run_id, shape=[len(b) for b in noisy])
        durable.write_atomic(path, old + (json.dumps(entry, sort_keys=True) + "\n").encode())
    report: dict[str, Any] = {protocol.DRIFT_PREVIOUS: previous["run_id"] if previous else ""}
    if previous is not None:
        result = drift_between(previous["histograms"], noisy, noise_multiplier=monitoring.drift_noise_multiplier,
                               threshold=monitoring.drift_threshold)
        report.update({protocol.DRIFT_DISTANCE: result.distance, protocol.DRIFT_MARGIN: result.margin,
                       protocol.DRIFT_FLAGGED: result.flagged})
    return report, event
