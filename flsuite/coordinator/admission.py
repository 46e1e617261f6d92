"""Who trains in a DP study, and which of their train replies count.

With privacy on, only planned sites train. ``DpAdmission.plan`` asks every node for its
status and plans them (``planning.plan_privacy``). A node that appears later is admitted
only by planning it by the same rules (status query, its sigma, a planning event in the
outputs), or it is left out with its reason; it is never sent a train request unplanned.

``DpAdmission.check_reply`` accepts a train reply only when its DP event matches what was
planned for that site (study, round, q, sigma, steps per round, clip C =
``privacy.max_grad_norm``, delta), its status declares the record count it was planned
with (``declared``: the site's aggregation weight), and, when the study's sites send
signed ledger heads (a planning status carried one), its head is there, names the site
and its dataset, never shrinks, and its signature verifies against the site's pinned
identity (``sites_dir/identities.json``). A reply that fails is rejected: left out of the average
and recorded with its reason. Without a pinned identities file (a deployment without one)
a head is recorded as unverified, never claimed as verified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import RecordDict
from flwr.serverapp import Grid

from flsuite import protocol
from flsuite.config.schema import StudyConfig
from flsuite.coordinator.planning import (
    PrivacyPlan,
    StatusReplies,
    ledger_head_of,
    over_budget_text,
    plan_privacy,
    plan_site,
    status_replies,
)
from flsuite.coordinator.reply_records import ReplyRecords
from flsuite.errors import PlanError, ProtocolError
from flsuite.privacy import PlanRow
from flsuite.secagg import load_pinned_identities

__all__ = ["PINNED_IDENTITIES", "UNVERIFIED", "VERIFIED", "DpAdmission", "HeadVerifier", "PlannedSite"]

#: The pinned identities file of simulated sites, under sites_dir (flsuite.site.simulated.PINNED_FILE).
PINNED_IDENTITIES = "identities.json"
VERIFIED = "verified"
UNVERIFIED = "unverified: the coordinator has no pinned identities file"


@dataclass(frozen=True)
class PlannedSite:
    """What one node was planned for: the DP event each of its train replies must carry."""

    node_id: int
    name: str
    sample_rate: float
    noise_multiplier: float
    steps_per_round: int
    max_grad_norm: float
    delta: float
    admitted_round: int  # 0: planned before round 1
    records: int = 0  # the record count its planning status declared: its aggregation weight

    def mismatches(self, event: protocol.DpEvent, *, study_id: str, server_round: int) -> list[str]:
        """How ``event`` differs from this plan (empty: it matches)."""
        found = []
        for field, got, want in (("site", event.site, self.name), ("study_id", event.study_id, study_id), ("round", event.round, server_round),
                                 ("steps", event.steps, self.steps_per_round)):
            if got != want:
                found.append(f"{field} {got!r}, planned {want!r}")
        for field, got, want in (("sample rate q", event.sample_rate, self.sample_rate), ("sigma", event.noise_multiplier, self.noise_multiplier),
                                 ("clip C", event.max_grad_norm, self.max_grad_norm), ("delta", event.delta, self.delta)):
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0):
                found.append(f"{field} {got!r}, planned {want!r}")
        return found


class HeadVerifier:
    """Checks a ledger head's Ed25519 signature against the site's pinned identity."""

    def __init__(self, pinned: Mapping[str, bytes] | None, source: str = "") -> None:
        self.pinned = dict(pinned) if pinned is not None else None
        self.source = source

    @classmethod
    def for_study(cls, study: StudyConfig) -> HeadVerifier:
        """The sites' pinned identities under ``study.sites_dir``; none when there is no such file."""
        path = Path(study.sites_dir) / PINNED_IDENTITIES if study.sites_dir else None
        if path is None or not path.is_file():
            return cls(None)
        return cls(load_pinned_identities(path), str(path))

    @property
    def label(self) -> str:
        """What a head that passed ``problem`` is: verified, or unverified (nothing to check it against)."""
        return VERIFIED if self.pinned is not None else UNVERIFIED

    def problem(self, head: protocol.LedgerHead, site: str) -> str | None:
        """Why the head is not site's signed head, or None."""
        if head.site != site:
            return f"the ledger head names site {head.site!r}, not {site!r}"
        if self.pinned is None:
            return None
        public = self.pinned.get(site)
        if public is None:
            return f"site {site!r} has no pinned identity in {self.source}: its ledger head cannot be verified"
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(head.signature), head.payload())
        except (InvalidSignature, ValueError):
            return f"the ledger head's signature does not verify against site {site!r}'s pinned identity ({self.source})"
        return None


class DpAdmission:
    """A DP study's gate: plans the sites, admits late ones by planning them, checks every train reply."""

    def __init__(self, study: StudyConfig, grid: Grid, *, verifier: HeadVerifier,
                 on_plan: Callable[[list[PlanRow]], None] | None = None,
                 planner: Callable[[StudyConfig, Mapping[int, protocol.SiteStatus]], PrivacyPlan] = plan_privacy) -> None:
        self.study = study
        self.planner = planner  # a resumed study's keeps the plan it started with (flsuite.coordinator.resume)
        self.grid = grid
        self.verifier = verifier
        self.on_plan = on_plan
        self.timeout = study.federation.round_timeout_s
        self.planned: dict[int, PlannedSite] = {}
        self.rows: list[PlanRow] = []
        self.left_out: dict[int, str] = {}
        self.events: list[dict[str, Any]] = []  # planning events: planned or left out, with round and reason
        self.require_head = False  # set at planning: a site sent a signed ledger head, so every train reply must
        self.prior_events: dict[str, tuple[protocol.DpEvent, ...]] = {}  # per site, its ledger's events at planning
        self.heads: dict[str, protocol.LedgerHead] = {}  # per site, the latest signed head that passed the checks
        self.statuses: dict[str, protocol.SiteStatus] = {}  # per site, the latest status it sent with an accepted reply

    # -- planning -----------------------------------------------------------------------------
    def plan(self) -> None:
        """Plan every node present now; StudyOverBudget/PlanError as ``plan_privacy`` raises them."""
        nodes = sorted(self.grid.get_node_ids())
        answers = status_replies(self.grid, nodes, timeout=self.timeout)
        if not answers.statuses:
            reasons = "; ".join(f"node {n}: {why}" for n, why in sorted(answers.failures.items()))
            raise PlanError("no site reported its privacy status: " + (reasons or "none answered in time"))
        self.require_head = bool(answers.heads)
        usable: dict[int, protocol.SiteStatus] = {}
        for node in nodes:
            why = self._unusable(node, answers, taken={s.name for s in usable.values()})
            if why is None:
                usable[node] = answers.statuses[node]
            else:
                self._leave_out(0, node, why, answers)
        if not usable:
            raise PlanError("no site can be planned: " + "; ".join(f"node {n}: {why}" for n, why in sorted(self.left_out.items())))
        plan = self.planner(self.study, usable)
        rows = {row.site: row for row in plan.rows}
        for node, status in sorted(usable.items(), key=lambda item: item[1].name):
            self._admit(0, node, status, rows[status.name], answers.heads.get(node))
        self._plan_changed()

    def admit(self, server_round: int, available: list[int]) -> list[int]:
        """The available nodes that may train: planned ones; a new node is planned first, or left out."""
        new = sorted(n for n in available if n not in self.planned and n not in self.left_out)
        if new:
            answers = status_replies(self.grid, new, timeout=self.timeout)
            for node in new:
                taken = {site.name for n, site in self.planned.items() if n in available}
                why = self._unusable(node, answers, taken=taken)
                row = None
                if why is None:
                    try:
                        row, fits = plan_site(self.study, answers.statuses[node])
                    except PlanError as error:
                        why = str(error)
                    else:
                        if not fits and self.study.privacy.target_epsilon is not None:
                            why = f"the study does not fit its remaining privacy budget: {over_budget_text(row)}"
                if why is not None or row is None:
                    self._leave_out(server_round, node, why or "not planned", answers)
                    continue
                status = answers.statuses[node]
                for old, site in list(self.planned.items()):  # the same site, back as a new node
                    if site.name == status.name:
                        del self.planned[old]
                        self.left_out[old] = f"site {site.name!r} came back as node {node}"
                self._admit(server_round, node, status, row, answers.heads.get(node))
                self._plan_changed()
        return [n for n in available if n in self.planned]

    def site_names(self) -> dict[int, str]:
        """Each planned node's site name."""
        return {node: site.name for node, site in self.planned.items()}

    def forget(self, node: int) -> None:
        """Drop ``node``'s plan, so that the next ``admit`` plans it afresh (a pruned node that reconnected)."""
        self.planned.pop(node, None)
        self.left_out.pop(node, None)

    @property
    def declared(self) -> Mapping[int, int]:
        """Each planned node's record count, as its planning status declared it: its aggregation weight."""
        return _PlannedRecords(self.planned)

    def site_configs(self, server_round: int, cohort: list[int]) -> dict[int, dict[str, Any]]:
        """Each planned node's sigma, in its train config."""
        return {node: {protocol.NOISE_MULTIPLIER: self.planned[node].noise_multiplier} for node in cohort if node in self.planned}

    # -- replies ------------------------------------------------------------------------------
    def check_reply(self, server_round: int, node: int, content: RecordDict, records: ReplyRecords) -> str | None:
        """None when the train reply (its records parsed once: ``records``) may be averaged; else why it is rejected."""
        planned = self.planned.get(node)
        if planned is None:
            return f"node {node} is not in the privacy plan"
        if not records.has_status:
            return "the reply carries no site status"
        status = records.status
        if status is None:
            return f"the reply's site status is unusable ({records.status_error})"
        if status.name != planned.name:
            return f"the reply names site {status.name!r}, but node {node} was planned as {planned.name!r}"
        if status.records != planned.records:
            return f"the reply's status declares {status.records} records, the site was planned with {planned.records}"
        if not records.has_dp_event:
            return f"no DP event: site {planned.name!r} was planned for DP-SGD with sigma {planned.noise_multiplier:.4g}"
        event = records.dp_event
        if event is None:
            return f"the reply's DP event is unusable ({records.dp_event_error})"
        mismatches = planned.mismatches(event, study_id=self.study.name, server_round=server_round)
        if mismatches:
            return "the DP event does not match the plan: " + "; ".join(mismatches)
        try:
            head = ledger_head_of(status, content)
        except ProtocolError as error:
            return f"the reply's ledger head is unusable ({error})"
        if head is None:
            if self.require_head:
                return "no signed ledger head (the study's sites sent one at planning, so every DP train reply must)"
        else:
            why = self.head_problem(planned.name, head, getattr(event, "dataset", None))
            if why is not None:
                return why
            self.heads[planned.name] = head
        self.statuses[planned.name] = status
        return None

    def head_check(self, site: str) -> str | None:
        """How the site's recorded ledger head was checked (None: it sent none)."""
        return self.verifier.label if site in self.heads else None

    # -- internals ----------------------------------------------------------------------------
    def _unusable(self, node: int, answers: StatusReplies, *, taken: set[str]) -> str | None:
        if node not in answers.statuses:
            return f"no usable status: {answers.failures.get(node, 'no reply')}"
        status = answers.statuses[node]
        if status.name in taken:
            return f"another node is already planned as site {status.name!r}"
        head = answers.heads.get(node)
        if head is None:
            return "no signed ledger head in its status, while the study's sites send one" if self.require_head else None
        return self.head_problem(status.name, head, None)

    def head_problem(self, site: str, head: protocol.LedgerHead, event_dataset: str | None) -> str | None:
        """Why a site's signed ledger head is not acceptable (signature, dataset, a ledger cut), or None."""
        why = self.verifier.problem(head, site)
        if why is not None:
            return why
        known = self.heads.get(site)
        if known is not None and head.dataset != known.dataset:
            return f"the ledger head is for dataset {head.dataset!r}, but site {site!r} signed {known.dataset!r} before"
        if known is not None and head.entries < known.entries:
            return f"the ledger head has {head.entries} entries, fewer than the {known.entries} site {site!r} signed before: its ledger was cut"
        if event_dataset is not None and event_dataset != head.dataset:
            return f"the DP event is for dataset {event_dataset!r}, the ledger head for {head.dataset!r}"
        return None

    def _admit(self, server_round: int, node: int, status: protocol.SiteStatus, row: PlanRow, head: protocol.LedgerHead | None) -> None:
        self.planned[node] = PlannedSite(
            node_id=node,
            name=status.name,
            sample_rate=row.sample_rate,
            noise_multiplier=row.noise_multiplier,
            steps_per_round=row.steps_per_round,
            max_grad_norm=self.study.privacy.max_grad_norm,
            delta=float(status.delta),  # type: ignore[arg-type]
            admitted_round=server_round,
            records=status.records,
        )
        self.rows.append(row)
        self.prior_events[status.name] = status.prior_events
        if head is not None:
            self.heads[status.name] = head
        self.events.append({
            "round": server_round, "node_id": node, "site": status.name, "action": "planned",
            "noise_multiplier": row.noise_multiplier, "sample_rate": row.sample_rate, "steps_per_round": row.steps_per_round,
            "projected_epsilon": row.projected_epsilon, "ledger_head": head is not None,
        })

    def _leave_out(self, server_round: int, node: int, why: str, answers: StatusReplies) -> None:
        self.left_out[node] = why
        status = answers.statuses.get(node)
        self.events.append({"round": server_round, "node_id": node, "site": status.name if status else None, "action": "left-out", "reason": why})

    def _plan_changed(self) -> None:
        if self.on_plan is not None:
            self.on_plan(list(self.rows))


class _PlannedRecords(Mapping[int, int]):
    """A live view of the planned nodes' record counts (late sites appear as they are planned)."""

    def __init__(self, planned: Mapping[int, PlannedSite]) -> None:
        self._planned = planned

    def __getitem__(self, node: int) -> int:
        return self._planned[node].records

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._planned)

    def __len__(self) -> int:
        return len(self._planned)
