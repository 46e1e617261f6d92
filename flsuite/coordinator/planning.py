"""The coordinator's privacy plan: ask each site for its size and spend, then choose sigma.

With ``privacy.target_epsilon`` the coordinator computes, before round 1, the noise
multiplier that lands each site at or below the target after all planned rounds and
local steps, from that site's own size; a study that would pass a site's remaining
budget fails here, naming the site and by how much. With a fixed noise multiplier the
plan only projects, and sites refuse once their cap is reached.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from flsuite import protocol
from flsuite.config.schema import StudyConfig
from flsuite.errors import PlanError, ProtocolError
from flsuite.privacy import PlanRow, SitePlanInput, StudyOverBudget, plan_study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivacyPlan:
    """One row per site, and the sigma to send to each node."""

    rows: list[PlanRow]
    sigma_by_node: dict[int, float]
    over_budget: list[PlanRow]


def query_status(grid: Grid, node_ids: list[int], *, timeout: float) -> dict[int, protocol.SiteStatus]:
    """Each site's name, size and privacy status (sites that do not answer are left out)."""
    messages = [
        Message(
            RecordDict({protocol.CONFIG: ConfigRecord({protocol.QUERY_KIND: protocol.STATUS_QUERY})}),
            dst_node_id=node,
            message_type=protocol.QUERY,
        )
        for node in node_ids
    ]
    statuses, failures = {}, []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason.strip().splitlines()[0]}")
            continue
        try:
            statuses[reply.metadata.src_node_id] = protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE])
        except (KeyError, ProtocolError) as error:
            failures.append(f"node {reply.metadata.src_node_id}: an unusable status reply ({error})")
    if failures:
        log.warning("left out of the privacy plan (no status): %s", "; ".join(failures))
    if not statuses:
        raise PlanError("no site reported its privacy status: " + ("; ".join(failures) or "none answered in time"))
    return statuses


def plan_privacy(study: StudyConfig, statuses: Mapping[int, protocol.SiteStatus]) -> PrivacyPlan:
    """Plan every site with its own delta and cap; raise only when a target cannot be met."""
    privacy = study.privacy
    rows, sigma_by_node, over = [], {}, []
    for node, status in sorted(statuses.items(), key=lambda item: item[1].name):
        if not status.private:
            raise PlanError(f"site {status.name!r} reported no privacy status (cap, delta): it cannot be planned for DP")
        site = SitePlanInput(name=status.name, records=status.records, prior_phases=status.prior_phases, max_epsilon=status.max_epsilon)
        try:
            row = plan_study(
                [site],
                batch_size=study.training.batch_size,
                local_epochs=study.training.local_epochs,
                rounds=study.federation.rounds,
                delta=float(status.delta),
                target_epsilon=privacy.target_epsilon,
                noise_multiplier=privacy.noise_multiplier,
                accountant=privacy.accountant,
            )[0]
        except StudyOverBudget as exc:
            row = exc.rows[0]
            over.append(row)
        rows.append(row)
        sigma_by_node[node] = row.noise_multiplier
    if over and privacy.target_epsilon is not None:
        raise StudyOverBudget(
            "the study does not fit every site's remaining privacy budget: "
            + "; ".join(
                f"site {r.site!r} would reach epsilon {r.projected_epsilon:.3f} (spent {r.prior_epsilon:.3f} before) "
                f"against its cap {r.max_epsilon:g}: over by {r.projected_epsilon - (r.max_epsilon or 0):.3f}"
                for r in over
            )
            + ". Lower privacy.target_epsilon, run fewer rounds or local epochs, or leave those sites out.",
            rows=rows,
            over_budget=over,
        )
    return PrivacyPlan(rows=rows, sigma_by_node=sigma_by_node, over_budget=over)
