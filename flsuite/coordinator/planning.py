"""The coordinator's privacy plan: ask each site for its size and spend, then choose sigma.

With ``privacy.target_epsilon`` the coordinator computes, before round 1, the noise
multiplier that lands each site at or below the target after all planned rounds and
local steps, from that site's own size; a study that would pass a site's remaining
budget fails here, naming the site and by how much. With a fixed noise multiplier the
plan only projects, and sites refuse once their cap is reached. ``plan_site`` plans one
site by the same rules (a site admitted after round 1, see ``admission``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from flsuite import protocol
from flsuite.config.schema import StudyConfig
from flsuite.errors import PlanError, ProtocolError
from flsuite.privacy import PlanRow, SitePlanInput, StudyOverBudget, evaluation_phases, evaluation_rounds, plan_study

__all__ = ["PrivacyPlan", "StatusReplies", "ledger_head_of", "over_budget_text", "plan_privacy", "plan_site", "query_status", "status_replies",
           "study_evaluation_phases"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivacyPlan:
    """One row per site, and the sigma to send to each node."""

    rows: list[PlanRow]
    sigma_by_node: dict[int, float]
    over_budget: list[PlanRow]


@dataclass
class StatusReplies:
    """The status replies of one query: each node's status and signed ledger head, and who failed."""

    statuses: dict[int, protocol.SiteStatus] = field(default_factory=dict)
    heads: dict[int, protocol.LedgerHead] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


def ledger_head_of(status: protocol.SiteStatus | None, content: RecordDict) -> protocol.LedgerHead | None:
    """The signed ledger head a reply carries in its status (None without one)."""
    return None if status is None else status.ledger_head


def status_replies(grid: Grid, node_ids: list[int], *, timeout: float) -> StatusReplies:
    """Ask each node for its status; never raises for a node that fails (see ``failures``)."""
    messages = [
        Message(
            RecordDict({protocol.CONFIG: ConfigRecord({protocol.QUERY_KIND: protocol.STATUS_QUERY})}),
            dst_node_id=node,
            message_type=protocol.QUERY,
        )
        for node in node_ids
    ]
    answers = StatusReplies()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if node not in node_ids:
            continue
        if reply.has_error():
            answers.failures[node] = (reply.error.reason or f"error {reply.error.code}").strip().splitlines()[0]
            continue
        try:
            status = protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE])
            head = ledger_head_of(status, reply.content)
        except (KeyError, ProtocolError) as error:
            answers.failures[node] = f"an unusable status reply ({error})"
            continue
        answers.statuses[node] = status
        if head is not None:
            answers.heads[node] = head
    for node in node_ids:
        if node not in answers.statuses and node not in answers.failures:
            answers.failures[node] = f"no status reply within {timeout:g} s"
    return answers


def query_status(grid: Grid, node_ids: list[int], *, timeout: float) -> dict[int, protocol.SiteStatus]:
    """Each site's name, size and privacy status (sites that do not answer are left out)."""
    answers = status_replies(grid, node_ids, timeout=timeout)
    failures = [f"node {node}: {why}" for node, why in sorted(answers.failures.items())]
    if failures:
        log.warning("left out of the privacy plan (no status): %s", "; ".join(failures))
    if not answers.statuses:
        raise PlanError("no site reported its privacy status: " + ("; ".join(failures) or "none answered in time"))
    return answers.statuses


def plan_privacy(study: StudyConfig, statuses: Mapping[int, protocol.SiteStatus]) -> PrivacyPlan:
    """Plan every site with its own delta and cap; raise only when a target cannot be met."""
    privacy = study.privacy
    rows, sigma_by_node, over = [], {}, []
    for node, status in sorted(statuses.items(), key=lambda item: item[1].name):
        row, fits = plan_site(study, status)
        if not fits:
            over.append(row)
        rows.append(row)
        sigma_by_node[node] = row.noise_multiplier
    if over and privacy.target_epsilon is not None:
        raise StudyOverBudget(
            "the study does not fit every site's remaining privacy budget: "
            + "; ".join(over_budget_text(r) for r in over)
            + ". Lower privacy.target_epsilon, run fewer rounds or local epochs, or leave those sites out.",
            rows=rows,
            over_budget=over,
        )
    return PrivacyPlan(rows=rows, sigma_by_node=sigma_by_node, over_budget=over)


def plan_site(study: StudyConfig, status: protocol.SiteStatus) -> tuple[PlanRow, bool]:
    """One site's plan row with its own delta and cap, and whether the study fits its remaining budget."""
    if not status.private:
        raise PlanError(f"site {status.name!r} reported no privacy status (cap, delta): it cannot be planned for DP")
    privacy = study.privacy
    site = SitePlanInput(name=status.name, records=status.records, prior_phases=status.prior_phases, max_epsilon=status.max_epsilon)
    try:
        row = plan_study(
            [site],
            batch_size=study.training.batch_size,
            local_epochs=study.training.local_epochs,
            rounds=study.federation.rounds,
            delta=float(status.delta),  # type: ignore[arg-type]
            target_epsilon=privacy.target_epsilon,
            noise_multiplier=privacy.noise_multiplier,
            accountant=privacy.accountant,
            evaluation_phases=study_evaluation_phases(study),
        )[0]
    except StudyOverBudget as exc:
        return exc.rows[0], False
    return row, True


def study_evaluation_phases(study: StudyConfig, *, first_round: int = 1) -> tuple[tuple[float, float, int], ...]:
    """The Gaussian releases each site makes for per-site evaluation (and drift) in this study (none without
    monitoring), from round ``first_round`` on: 1 (the default) for the whole study, as ``plan_site`` counts
    them; a resumed study's first round for the releases still to come (``ResumedPlan``): one rule for both."""
    if not study.site_evaluation:
        return ()
    monitoring = study.monitoring
    rounds = study.federation.rounds
    phases = evaluation_phases(rounds, monitoring.every, monitoring.noise_multiplier)
    if first_round > 1:
        left = sum(1 for r in evaluation_rounds(rounds, monitoring.every) if r >= first_round)
        phases = tuple((q, sigma, left) for q, sigma, _ in phases)
    if monitoring.drift and first_round <= rounds:  # one histogram release per study, with the final round
        phases += ((1.0, float(monitoring.drift_noise_multiplier), 1),)
    return phases


def over_budget_text(row: PlanRow) -> str:
    return (
        f"site {row.site!r} would reach epsilon {row.projected_epsilon:.3f} (spent {row.prior_epsilon:.3f} before) "
        f"against its cap {row.max_epsilon:g}: over by {row.projected_epsilon - (row.max_epsilon or 0):.3f}"
    )

