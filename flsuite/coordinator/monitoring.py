"""Per-site accuracy and the fairness gap, from the sites' private evaluation releases.

After each round of ``monitoring.every`` (and the final round) of a DP study with monitoring
on, the coordinator sends the new global model to the round's sites with an evaluate request
asking for ``SITE_EVALUATION``. Each site answers with noisy per-class counts on its held-out
records and the Gaussian DP event it recorded (``flsuite.site.evaluation``). The coordinator
accepts a site's counts only with an accounted event that matches the study: mechanism
"gaussian", q = 1, sigma = ``monitoring.noise_multiplier``, sensitivity sqrt(2), one release,
this study and round, the site's own name, and a signed ledger head that passes the same
checks as a train reply's. Anything else is withheld, with its reason, never reported.

Per round it reports each site's accuracy with its noise std, the worst site and the gap
between the best and the worst site: into the round's metrics (so the registry's version
metrics carry them), ``site_evaluation.csv`` and summary.json's "monitoring" section. A
resumed study keeps the earlier rounds' rows (``SiteMonitor.restore``) and adds its own. With
``monitoring.drift`` the final round's request also asks for the drift release
(``flsuite.site.drift``); a site whose comparison is flagged is listed under "drift".
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from flsuite import protocol
from flsuite.config.schema import StudyConfig
from flsuite.coordinator.outputs import write_csv
from flsuite.coordinator.resume import read_round_rows
from flsuite.coordinator.rounds import RoundRecord
from flsuite.errors import ProtocolError
from flsuite.privacy import EVALUATION_SENSITIVITY, GAUSSIAN, drift_sensitivity, evaluation_rounds, noisy_accuracy

__all__ = ["EVALUATION_COLUMNS", "EVALUATION_FILE", "SiteMonitor", "counts_problem", "drift_report", "event_problem",
           "round_summary"]

log = logging.getLogger("flwr")

EVALUATION_FILE = "site_evaluation.csv"
EVALUATION_COLUMNS = ["round", "site", "accuracy", "noise_std", "noise_multiplier", "released_total", "epsilon_spent"]
#: Names of the round metrics monitoring adds (and the registry's version metrics carry).
WORST, BEST, GAP, NOISE = "site_accuracy_worst", "site_accuracy_best", "site_accuracy_gap", "site_accuracy_noise_std"


def event_problem(study: StudyConfig, server_round: int, name: str, record: Any, *, sigma: float, sensitivity: float,
                  what: str) -> str | None:
    """Why ``record`` is not the Gaussian event that accounts this release (None: it is)."""
    try:
        event = protocol.dp_event_from_record(dict(record))
    except ProtocolError as error:
        return f"the {what}'s DP event is unusable ({error})"
    wrong = [
        f"{field} {got!r}, expected {want!r}"
        for field, got, want in (
            ("mechanism", event.mechanism, GAUSSIAN),
            ("study", event.study_id, study.name),
            ("round", event.round, server_round),
            ("site", event.site, name),
            ("releases", event.steps, 1),
        )
        if got != want
    ]
    wrong += [
        f"{field} {got!r}, expected {want!r}"
        for field, got, want in (("q", event.sample_rate, 1.0), ("sigma", event.noise_multiplier, sigma),
                                 ("sensitivity", event.max_grad_norm, sensitivity))
        if not math.isclose(got, want, rel_tol=1e-9)
    ]
    return f"the {what}'s DP event does not match the study: " + "; ".join(wrong) if wrong else None


def counts_problem(study: StudyConfig, server_round: int, name: str, content: RecordDict) -> str | None:
    """Why a site's evaluation reply may not be reported (None: its counts are accounted and usable)."""
    records = content.config_records
    if protocol.EVALUATION_COUNTS not in records:
        return "no evaluation counts in the reply"
    if protocol.DP_EVENT not in records:
        return "evaluation counts without an accounted DP event: withheld"
    why = event_problem(study, server_round, name, records[protocol.DP_EVENT], sigma=study.monitoring.noise_multiplier,
                        sensitivity=EVALUATION_SENSITIVITY, what="evaluation")
    if why is not None:
        return why
    counts = records[protocol.EVALUATION_COUNTS]
    correct, total = counts.get(protocol.CORRECT), counts.get(protocol.TOTAL)
    if not isinstance(correct, list) or not isinstance(total, list) or len(correct) != len(total) or not total:
        return "the evaluation counts are not two per-class lists of equal length"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (*correct, *total)):
        return "the evaluation counts are not finite numbers"
    return None


def drift_report(study: StudyConfig, server_round: int, name: str, content: RecordDict) -> dict[str, Any]:
    """A site's drift comparison, or why it is withheld (``{"withheld": reason}``)."""
    records = content.config_records
    if protocol.DRIFT not in records:
        return {"withheld": "no drift release (the site's cap could not fit it, or it sent none)"}
    if protocol.DRIFT_EVENT not in records:
        return {"withheld": "a drift comparison without an accounted DP event"}
    monitoring = study.monitoring
    why = event_problem(study, server_round, name, records[protocol.DRIFT_EVENT], sigma=monitoring.drift_noise_multiplier,
                        sensitivity=drift_sensitivity(len(monitoring.drift_features or [])), what="drift release")
    if why is not None:
        return {"withheld": why}
    drift = records[protocol.DRIFT]
    previous = str(drift.get(protocol.DRIFT_PREVIOUS, ""))
    if not previous:
        return {"previous_run": None, "distance": None, "margin": None, "flagged": False}
    return {"previous_run": previous, "distance": float(drift[protocol.DRIFT_DISTANCE]),
            "margin": float(drift[protocol.DRIFT_MARGIN]), "flagged": bool(drift[protocol.DRIFT_FLAGGED])}


def round_summary(server_round: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One round's worst and best site, the gap between them and the largest noise std, from
    its site_evaluation rows (in site-name order: ties go to the first site)."""
    worst = min(rows, key=lambda row: row["accuracy"])
    best = max(rows, key=lambda row: row["accuracy"])
    return {
        "round": server_round, "sites": len(rows), "worst_site": worst["site"], "worst_accuracy": worst["accuracy"],
        "best_site": best["site"], "best_accuracy": best["accuracy"], "gap": best["accuracy"] - worst["accuracy"],
        "noise_std": max(row["noise_std"] for row in rows),
    }


class SiteMonitor:
    """Asks the round's sites for their private evaluation and keeps what it may report."""

    def __init__(self, study: StudyConfig, grid: Grid, folder: Path, *, admission: Any = None) -> None:
        self.study = study
        self.grid = grid
        self.folder = folder
        self.admission = admission  # a DP study's DpAdmission: ledger head checks, latest heads
        self.rounds = set(evaluation_rounds(study.federation.rounds, study.monitoring.every))
        self.rows: list[dict[str, Any]] = []
        self.round_rows: list[dict[str, Any]] = []
        self.withheld: list[dict[str, Any]] = []
        self.drift: dict[str, dict[str, Any]] = {}  # per site: its comparison with its previous study, or why withheld

    def on_round(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        """A round listener that runs before the outputs and the registry see ``record``: adds the
        round's per-site metrics to ``record.metrics`` and each site's newer status to its report."""
        if record.round not in self.rounds or not record.sites:
            return
        names = {site.node_id: site.name for site in record.sites}
        replies = self._ask(record.round, sorted(names), arrays)
        accuracies: dict[str, Any] = {}
        for node, name in sorted(names.items(), key=lambda item: item[1]):
            reply = replies.get(node)
            why, status = self._problem(record.round, node, name, reply)
            if why is not None:
                self.withheld.append({"round": record.round, "site": name, "reason": why})
                log.warning("round %d: site %s's evaluation withheld: %s", record.round, name, why)
                continue
            if self.study.monitoring.drift and record.round == self.study.federation.rounds:
                self.drift[name] = drift_report(self.study, record.round, name, reply.content)
            counts = reply.content.config_records[protocol.EVALUATION_COUNTS]
            result = noisy_accuracy(counts[protocol.CORRECT], counts[protocol.TOTAL], noise_multiplier=self.study.monitoring.noise_multiplier)
            accuracies[name] = result
            self.rows.append({
                "round": record.round, "site": name, "accuracy": result.accuracy, "noise_std": result.noise_std,
                "noise_multiplier": self.study.monitoring.noise_multiplier, "released_total": result.total,
                "epsilon_spent": status.spent_epsilon if status is not None else None,
            })
            if status is not None:  # the status after the release: its spend includes the evaluation
                record.sites[:] = [dataclasses.replace(s, status=status) if s.node_id == node else s for s in record.sites]
        if accuracies:
            summary = round_summary(record.round, [row for row in self.rows if row["round"] == record.round])
            self.round_rows.append(summary)
            record.metrics.update({WORST: summary["worst_accuracy"], BEST: summary["best_accuracy"], GAP: summary["gap"],
                                   NOISE: summary["noise_std"]})
        write_csv(self.folder / EVALUATION_FILE, self.rows, EVALUATION_COLUMNS)

    def restore(self, last_round: int) -> int:
        """On a resume: keep the rows of site_evaluation.csv of rounds 1..``last_round``, so the
        resumed rounds' rows are added after them (rows of a later round, written but never
        published, and a torn last line are dropped, as for the other round files). Returns how
        many rows were dropped."""
        rows, dropped = read_round_rows(self.folder / EVALUATION_FILE, last_round)
        self.rows[:] = rows
        self.round_rows[:] = [round_summary(r, [row for row in rows if row["round"] == r])
                              for r in sorted({row["round"] for row in rows})]
        if dropped:
            log.info("resume: %s: dropped %d row(s) of rounds after %d or torn", EVALUATION_FILE, dropped, last_round)
        return dropped

    def summary(self) -> dict[str, Any]:
        """summary.json's "monitoring" section."""
        monitoring = self.study.monitoring
        return {
            "every": monitoring.every,
            "rounds": sorted(self.rounds),
            "noise_multiplier": monitoring.noise_multiplier,
            "sensitivity": EVALUATION_SENSITIVITY,
            "holdout_fraction": monitoring.holdout_fraction,
            "per_round": list(self.round_rows),
            "final": self.round_rows[-1] if self.round_rows else None,
            "sites": {row["site"]: {"accuracy": row["accuracy"], "noise_std": row["noise_std"]} for row in self.rows
                      if self.round_rows and row["round"] == self.round_rows[-1]["round"]},
            "withheld": list(self.withheld),
            "drift": self._drift_summary(),
        }

    def _drift_summary(self) -> dict[str, Any] | None:
        monitoring = self.study.monitoring
        if not monitoring.drift:
            return None
        return {"threshold": monitoring.drift_threshold, "noise_multiplier": monitoring.drift_noise_multiplier,
                "features": list(monitoring.drift_features or []), "bins": monitoring.drift_bins, "sites": dict(sorted(self.drift.items())),
                "flagged": sorted(name for name, report in self.drift.items() if report.get("flagged"))}

    def _ask(self, server_round: int, nodes: list[int], arrays: ArrayRecord) -> dict[int, Message]:
        drift = self.study.monitoring.drift and server_round == self.study.federation.rounds  # once per study
        config = ConfigRecord({protocol.SERVER_ROUND: server_round, protocol.SITE_EVALUATION: True, protocol.DRIFT_CHECK: drift})
        messages = [
            Message(RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config}), dst_node_id=node, message_type=protocol.EVALUATE)
            for node in nodes
        ]
        replies = self.grid.send_and_receive(messages, timeout=self.study.federation.round_timeout_s)
        return {reply.metadata.src_node_id: reply for reply in replies if reply.metadata.src_node_id in nodes}

    def _problem(self, server_round: int, node: int, name: str, reply: Message | None) -> tuple[str | None, protocol.SiteStatus | None]:
        if reply is None:
            return "no evaluation reply in time", None
        if reply.has_error():
            return (reply.error.reason or f"error {reply.error.code}").strip().splitlines()[0], None
        records = reply.content.config_records
        if protocol.REFUSAL in records:
            try:
                return f"refused: {protocol.Refusal.from_record(dict(records[protocol.REFUSAL])).message}", None
            except ProtocolError as error:
                return f"an unusable refusal ({error})", None
        why = counts_problem(self.study, server_round, name, reply.content)
        if why is not None:
            return why, None
        if protocol.SITE not in records:
            return "the evaluation reply carries no site status", None
        try:
            status = protocol.SiteStatus.from_record(dict(records[protocol.SITE]))
        except ProtocolError as error:
            return f"the evaluation reply's site status is unusable ({error})", None
        if status.name != name:
            return f"the evaluation reply names site {status.name!r}, not {name!r}", None
        return self._head_problem(name, status), status

    def _head_problem(self, name: str, status: protocol.SiteStatus) -> str | None:
        """The signed ledger head's checks, as for a train reply (a study whose sites sign heads needs one)."""
        admission = self.admission
        if admission is None:
            return None
        head = status.ledger_head
        if head is None:
            return "no signed ledger head with the evaluation" if admission.require_head else None
        why = admission.head_problem(name, head, None)
        if why is None:
            admission.heads[name] = head
        return why
