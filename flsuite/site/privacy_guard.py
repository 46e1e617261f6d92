"""A site's own privacy guard: its cap, its ledger, and DP-SGD training that spends from it.

The site decides, not the coordinator: its cap, delta and the dataset its budget belongs
to come from its own node config (a real site's YAML, a simulated site's folder), its
ledger lives on its own disk, anchored by a head signed with the site's identity key.
Before any training the site checks its ledger against that anchor (fail closed) and, in
one operation under the ledger's exclusive lock, projects everything the ledger charges
to its dataset plus the request and appends a durable reservation (or refuses). After
training the final event replaces the reservation and the new head is signed and anchored
before the reply leaves the site. With DP the reply releases only what is accounted: the
DP event, the status (record count, cap, spend, signed head) and the number of examples.

Every release under the cap (training, a private evaluation, a drift histogram) goes through
``SitePrivacy.release``: reserve, work, cancel on failure, spend: one rule, written once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from flwr.app import Context, Message

from flsuite import protocol
from flsuite.errors import BudgetExhausted, ConfigError, IntegrityError, PlanError
from flsuite.privacy import (
    DpEvent,
    LedgerAnchor,
    LedgerState,
    PrivacyLedger,
    Reservation,
    SiteBudget,
    check_delta,
    epsilon,
    poisson_schedule,
    utc_now_iso,
    valid_dataset_name,
)
from flsuite.secagg import load_identity
from flsuite.site.replies import budget_refusal_reply, train_reply

DEFAULT_DELTA = 1e-5
RESERVATION_RNG = "reservation"  # a reserved event's rng: the generator is chosen when it runs
_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SitePrivacy:
    """The site's cap (max_epsilon, delta), accountant, declared dataset, ledger and its anchor."""

    site: str
    dataset: str
    budget: SiteBudget
    ledger: PrivacyLedger
    anchor: LedgerAnchor
    records: int

    def verified(self) -> LedgerState:
        """The ledger, checked against its signed anchored head; IntegrityError when it is not
        what the site signed (hold the ledger's lock for a view consistent with the anchor)."""
        state = self.ledger.state()
        self.anchor.check(state)
        return state

    def spent(self) -> float:
        with self.ledger.locked(shared=True):
            charged = self.verified().charged(self.dataset)
        return epsilon(charged, delta=self.budget.delta, accountant=self.budget.accountant)

    def status(self) -> protocol.SiteStatus:
        """What planning needs: size, cap, delta, what the ledger charges to the dataset, signed head."""
        with self.ledger.locked(shared=True):
            state = self.verified()
        events = state.charged(self.dataset)
        return protocol.SiteStatus(
            name=self.site,
            records=self.records,
            max_epsilon=self.budget.max_epsilon,
            delta=self.budget.delta,
            spent_epsilon=epsilon(events, delta=self.budget.delta, accountant=self.budget.accountant),
            prior_events=events,
            ledger_head=self.anchor.sign(state.head),
        )

    def reserve(self, projected: DpEvent) -> Reservation:
        """Check the anchor and the cap and reserve ``projected``, all under the exclusive lock;
        BudgetExhausted (nothing written) when it does not fit."""
        if projected.dataset != self.dataset:
            raise ValueError(f"event for dataset {projected.dataset!r} at a guard of {self.dataset!r}")

        def admit(state: LedgerState) -> None:
            self.anchor.check(state)
            self.budget.admit(state.charged(self.dataset), projected.phase)

        with self.ledger.locked():
            reservation = self.ledger.reserve(projected, admit=admit)
            self.anchor.write(self.ledger.head())
        return reservation

    def spend(self, reservation: Reservation, event: DpEvent) -> None:
        """Replace the reservation by the final event and anchor the new head."""
        with self.ledger.locked():
            self.verified()
            self.anchor.write(self.ledger.spend(reservation, event))

    def cancel(self, reservation: Reservation, reason: str) -> None:
        """Release a reservation whose release failed before anything left the site."""
        with self.ledger.locked():
            self.verified()
            self.anchor.write(self.ledger.cancel(reservation, reason))

    def release(self, projected: DpEvent, work: Callable[[], T], *, final: Callable[[T], DpEvent], what: str) -> tuple[T, DpEvent]:
        """Reserve ``projected`` under the cap, run ``work``, then replace the reservation by
        ``final(result)``; returns (result, final event). The one way a site spends its budget.

        - Does not fit: BudgetExhausted from the reservation, nothing written, ``work`` not run.
        - ``work`` or ``final`` fails, by any exception (an interrupt too): nothing left the site
          (``work`` must release nothing itself), so the reservation is cancelled and the original
          error raised. A cancel that fails is logged and never masks it; the reservation then
          stays open, which counts as spent (fail closed).
        - ``final(result)`` charges more than ``projected`` reserved (another dataset, mechanism or
          delta, a higher q, more steps, a lower sigma): IntegrityError, handled as a failed ``work``.
        - Otherwise the final event is spent, durable and anchored, before the caller lets the
          result leave. A failure while spending is raised and never cancels: the count stays.
        """
        reservation = self.reserve(projected)
        try:
            result = work()
            event = final(result)
            problem = reservation.overspent_by(event)
            if problem:  # the work spent more than the cap admitted: it must not leave the site
                raise IntegrityError(f"site {self.site}: the {what} would spend more than it reserved: {problem}")
        except BaseException as error:
            try:
                self.cancel(reservation, f"{what} failed before any reply: {type(error).__name__}")
            except Exception:  # the reservation stays open and counts as spent
                _log.exception("site %s: could not cancel reservation %s of a failed %s", self.site, reservation.id, what)
            raise
        self.spend(reservation, event)
        return result, event


def site_privacy(node: Mapping[str, Any], *, site: str, labels, study) -> SitePrivacy:
    """The site's privacy guard from its OWN node config: cap, delta, dataset, ledger, identity key.

    Nothing the coordinator sends names the budget's key or the cap: the study contributes
    only its accountant. ``labels`` gives the record count; the records themselves are not
    read (the budget belongs to the declared dataset, never to the bytes of a study's view of it).
    """
    for key, what in (
        (protocol.LEDGER_PATH, "a privacy ledger on its own disk (set ledger in the site config)"),
        (protocol.MAX_EPSILON, "its own privacy cap (set privacy.max_epsilon in the site config)"),
        (protocol.DELTA, "its own delta (set privacy.delta in the site config)"),
        (protocol.IDENTITY_KEY, "its identity key, which signs its ledger head (the site bundle's identity key)"),
    ):
        if not node.get(key):
            raise PlanError(f"site {site!r} has no {key} in its node config: a site needs {what} before it trains with DP")
    dataset = str(node.get(protocol.DATASET) or site)
    if not valid_dataset_name(dataset):
        raise ConfigError(
            f"site {site!r}: dataset {dataset!r} is not a dataset name (1-64 of A-Z a-z 0-9 . _ -, starting with "
            "a letter or digit). Fix dataset in the site config."
        )
    records_count = int(len(labels))
    delta = float(node[protocol.DELTA])
    check_delta(delta, records_count, site=site)
    budget = SiteBudget(max_epsilon=float(node[protocol.MAX_EPSILON]), delta=delta, accountant=study.privacy.accountant)
    ledger_path = Path(str(node[protocol.LEDGER_PATH]))
    anchor = LedgerAnchor(ledger_path, site=site, dataset=dataset, key=load_identity(str(node[protocol.IDENTITY_KEY])))
    return SitePrivacy(site=site, dataset=dataset, budget=budget, ledger=PrivacyLedger(ledger_path), anchor=anchor, records=records_count)


def train_private(
    msg: Message, context: Context, *, setup, model: torch.nn.Module, noise_multiplier: float, proximal_mu: float = 0.0
) -> Message:
    """Reserve the spend (or refuse), run DP-SGD, replace the reservation by the DP event, reply."""
    from flsuite.privacy import train_dp

    study = setup.study
    data = setup.data
    guard = site_privacy(context.node_config, site=setup.name, labels=data.labels, study=study)
    training = study.training
    schedule = poisson_schedule(records=len(data), batch_size=training.batch_size, local_epochs=training.local_epochs, site=setup.name)
    server_round = int(msg.content[protocol.CONFIG].get(protocol.SERVER_ROUND, 0))
    identity = {"study_id": study.name, "run_id": str(context.run_id), "round": server_round, "site": setup.name}
    projected = DpEvent(
        **identity,
        dataset=guard.dataset,
        sample_rate=schedule.sample_rate,
        noise_multiplier=noise_multiplier,
        steps=schedule.steps_per_round,
        max_grad_norm=study.privacy.max_grad_norm,
        delta=guard.budget.delta,
        accountant=guard.budget.accountant,
        rng=RESERVATION_RNG,
        recorded_at=utc_now_iso(),
    )

    def train() -> Any:
        return train_dp(
            model,
            torch.from_numpy(data.features),
            torch.from_numpy(data.labels),
            noise_multiplier=noise_multiplier,
            max_grad_norm=study.privacy.max_grad_norm,
            batch_size=training.batch_size,
            local_epochs=training.local_epochs,
            optimizer=training.optimizer,
            lr=training.learning_rate,
            proximal_mu=proximal_mu,
            grad_sample_mode=study.privacy.grad_sample_mode,
            secure_rng=study.privacy.secure_rng,
        )

    def final(result: Any) -> DpEvent:
        return result.dp_event(**identity, dataset=guard.dataset, delta=guard.budget.delta, accountant=guard.budget.accountant)

    try:  # the event is durable and anchored before the reply leaves the site
        result, event = guard.release(projected, train, final=final, what="training")
    except BudgetExhausted as refusal:
        return budget_refusal_reply(msg, site=setup.name, refusal=refusal)
    model.load_state_dict(result.state_dict)
    # Only what is accounted leaves a DP site: no exact train loss, no timings, no empty-batch count.
    metrics = {protocol.NUM_EXAMPLES: result.examples}
    return train_reply(msg, model=model, metrics=metrics, status=guard.status(), dp_event=event)
