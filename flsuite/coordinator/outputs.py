"""The files a study leaves in its output folder.

``config.yaml`` (the resolved config), ``metrics.csv``/``metrics.json`` (one row per
round), ``site_metrics.csv`` (one row per site and round), ``summary.json`` and
``metrics.png`` (accuracy and AUC, loss, epsilon per site: ``metrics_plot``). summary.json carries the study's verdict (``flsuite.coordinator.verdict``):
its status, every reason it did not complete, every refusal, aborted round and site
failure with its reason. Each file is written whole (temp file, then rename), so a crash never
leaves half a file.

A site that does not release its training loss (a DP site: the loss of its records is not
accounted) has "withheld" in its place: in site_metrics.csv, and for the round's
train_loss in metrics.csv/metrics.json and the summary whenever any site of the round
withheld it (an average over the others would pass for the round's).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from flsuite import protocol
from flsuite.config.schema import UNIT_OF_PRIVACY, StudyConfig
from flsuite.coordinator.rounds import RoundRecord, SiteReport, StudyResult
from flsuite.coordinator.verdict import SiteFailure, Verdict
from flsuite.storage import durable

ROUND_COLUMNS = ["round", "accuracy", "loss", "auc", "train_loss", "sites", "failures", "wall_s"]
WITHHELD = "withheld"  # a metric the site did not release


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write an output file whole (text as UTF-8)."""
    durable.write_atomic(path, data.encode() if isinstance(data, str) else data)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write rows as a CSV file whole, with ``columns`` in that order."""
    write_atomic(path, _csv(rows, columns))


def round_row(record: RoundRecord) -> dict[str, Any]:
    return {
        "round": record.round,
        "accuracy": record.metrics.get("accuracy"),
        "loss": record.metrics.get("loss"),
        "auc": record.metrics.get("auc"),
        "train_loss": round_train_loss(record.sites),
        "sites": len(record.sites),
        "failures": record.failures,
        "wall_s": round(record.wall_s, 4),
    }


def round_train_loss(sites: list[SiteReport]) -> float | str | None:
    """The sites' training loss weighted by examples; "withheld" when any site did not release its own."""
    if any(protocol.TRAIN_LOSS not in site.metrics for site in sites):
        return WITHHELD
    weights = [site.metrics.get(protocol.NUM_EXAMPLES, 0.0) for site in sites]
    losses = [site.metrics[protocol.TRAIN_LOSS] for site in sites]
    total = sum(weights)
    return sum(w * loss for w, loss in zip(weights, losses)) / total if total else (sum(losses) / len(losses) if losses else None)


def site_row(server_round: int, site: SiteReport) -> dict[str, Any]:
    """One site's metrics of one round; its training loss says "withheld" when the site did not release it."""
    return {"round": server_round, "site": site.name, protocol.TRAIN_LOSS: WITHHELD, **site.metrics}


def privacy_row(server_round: int, site: SiteReport) -> dict[str, Any]:
    """One site's DP event of one round, with the epsilon it has spent in total since."""
    event, status = site.dp_event, site.status
    assert event is not None and status is not None
    return {
        "round": server_round,
        "site": site.name,
        "sample_rate": event.sample_rate,
        "noise_multiplier": event.noise_multiplier,
        "steps": event.steps,
        "max_grad_norm": event.max_grad_norm,
        "delta": event.delta,
        "accountant": event.accountant,
        "rng": event.rng,
        "epsilon": status.spent_epsilon,
        "max_epsilon": status.max_epsilon,
        "empty_batches": int(site.metrics.get(protocol.EMPTY_BATCHES, 0)),
    }


class StudyOutputs:
    """Writes a study's files as it goes: config first, metrics each round, summary last."""

    def __init__(self, folder: Path, study: StudyConfig) -> None:
        self.folder = folder
        self.study = study
        self.rows: list[dict[str, Any]] = []
        self.site_rows: list[dict[str, Any]] = []
        self.privacy_rows: list[dict[str, Any]] = []
        self.plan_rows: list[dict[str, Any]] = []
        self._texts = {name: CsvText() for name in ("metrics.csv", "site_metrics.csv", "privacy.csv")}
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "config.yaml", yaml.safe_dump(study.model_dump(mode="json", exclude={"resume"}), sort_keys=False))

    def on_round(self, record: RoundRecord) -> None:
        self.rows.append(round_row(record))
        for site in record.sites:
            self.site_rows.append(site_row(record.round, site))
            if site.dp_event is not None and site.status is not None:
                self.privacy_rows.append(privacy_row(record.round, site))
        self._write_metrics()

    def write_privacy_plan(self, rows: list[Any]) -> None:
        self.plan_rows = [dict(vars(row)) for row in rows]
        write_atomic(self.folder / "privacy_plan.csv", _csv(self.plan_rows, list(self.plan_rows[0]) if self.plan_rows else []))

    def finish(self, result: StudyResult, *, wall_s: float, verdict: Verdict, failures: Iterable[SiteFailure] = (),
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write summary.json (and the metrics files, the plot) with the study's ``verdict``; returns the summary."""
        last = self.rows[-1] if self.rows else {}
        summary = {
            "name": self.study.name,
            "status": verdict.status,
            "message": verdict.message,
            "reasons": list(verdict.reasons),
            "dataset": self.study.data.dataset,
            "model": self.study.model.name,
            "sites": self.study.federation.num_sites,
            "sites_trained": len({row["site"] for row in self.site_rows}),
            "rounds_planned": self.study.federation.rounds,
            "rounds_completed": len(self.rows),
            "final_accuracy": last.get("accuracy"),
            "final_auc": last.get("auc"),
            "final_loss": last.get("loss"),
            "final_train_loss": last.get("train_loss"),
            "wall_s": round(wall_s, 3),
            "engine": self.study.engine.name,
            "output_dir": str(self.folder.resolve()),
            "refusals": [refusal.to_summary() for refusal in result.refusals],
            "aborted_rounds": result.aborted_rounds,
            "pruned_sites": [pruned.to_summary() for pruned in result.pruned],
            "readmitted_sites": list(result.readmitted),
            "site_failures": [failure.to_summary() for failure in failures],
            "privacy": self._privacy_summary(result),
            **(extra or {}),
        }
        self._write_metrics()  # also when no round finished: the files exist, with their headers
        write_atomic(self.folder / "summary.json", json.dumps(summary, indent=2))
        self._plot()
        return summary

    def _privacy_summary(self, result: StudyResult) -> dict[str, Any] | None:
        privacy = self.study.privacy
        if not privacy.enabled:
            return None
        latest: dict[str, dict[str, Any]] = {}
        for row in self.privacy_rows:
            latest[row["site"]] = row
        sites = {
            name: {"epsilon_spent": row["epsilon"], "max_epsilon": row["max_epsilon"], "delta": row["delta"], "rng": row["rng"]}
            for name, row in sorted(latest.items())
        }
        planned = {row["site"]: row for row in self.plan_rows}
        for name, row in planned.items():
            sites.setdefault(name, {"epsilon_spent": row["prior_epsilon"], "max_epsilon": row["max_epsilon"], "delta": None, "rng": None})
            sites[name]["planned_sigma"] = row["noise_multiplier"]
        return {
            "unit_of_privacy": UNIT_OF_PRIVACY,
            "accountant": privacy.accountant,
            "target_epsilon": privacy.target_epsilon,
            "noise_multiplier": privacy.noise_multiplier,
            "max_grad_norm": privacy.max_grad_norm,
            "sites": sites,
            "planning": list(result.planning),  # every site planned (round 0: before round 1) or left out, with why
        }

    def _write_metrics(self) -> None:
        write_atomic(self.folder / "metrics.json", json.dumps(self.rows, indent=2))
        write_atomic(self.folder / "metrics.csv", self._texts["metrics.csv"].of(self.rows, ROUND_COLUMNS))
        site_columns = sorted({key for row in self.site_rows for key in row} - {"round", "site"})
        write_atomic(self.folder / "site_metrics.csv", self._texts["site_metrics.csv"].of(self.site_rows, ["round", "site", *site_columns]))
        if self.privacy_rows:
            privacy_columns = ["round", "site", *sorted({k for row in self.privacy_rows for k in row} - {"round", "site"})]
            write_atomic(self.folder / "privacy.csv", self._texts["privacy.csv"].of(self.privacy_rows, privacy_columns))

    def _plot(self) -> None:
        from flsuite.coordinator.metrics_plot import metrics_png

        title = f"{self.study.name}: {self.study.data.dataset}, {self.study.federation.num_sites} sites"
        write_atomic(self.folder / "metrics.png", metrics_png(self.rows, self.privacy_rows, title))


class CsvText:
    """A CSV file's text that grows with its rows: each row is formatted once. The rows of a study's
    files are only ever appended, and every round writes the whole file again, so formatting them
    all each round grew with the study. New columns (a metric first seen) format every row again,
    as does a list whose rendered rows are no longer the same row objects (a row is not changed
    after it is added)."""

    def __init__(self) -> None:
        self._columns: list[str] | None = None
        self._rendered: list[dict[str, Any]] = []  # the rows formatted so far (the same objects)
        self._text = ""

    def of(self, rows: list[dict[str, Any]], columns: list[str]) -> str:
        done = len(self._rendered)
        if columns != self._columns or len(rows) < done or any(a is not b for a, b in zip(rows[:done], self._rendered)):
            self._columns, self._rendered, self._text, done = list(columns), [], _csv([], columns), 0
        self._text += _csv(rows[done:], columns, header=False)
        self._rendered.extend(rows[done:])
        return self._text


def _csv(rows: list[dict[str, Any]], columns: list[str], *, header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
