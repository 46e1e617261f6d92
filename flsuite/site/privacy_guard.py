"""A site's own privacy guard: its cap, its ledger, and DP-SGD training that spends from it.

The site decides, not the coordinator: its cap and delta come from its node config when
it has them (a real site), its ledger lives on its own disk, and every request is
projected against everything the ledger already holds for this data before any training.
A request that would pass the cap is refused with a typed reply; an accepted one is
trained with Opacus and recorded durably before the reply leaves the site.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message

from flsuite import protocol
from flsuite.errors import BudgetExhausted, PlanError
from flsuite.privacy import PrivacyLedger, SiteBudget, check_delta, data_fingerprint, epsilon, poisson_schedule
from flsuite.site.replies import refusal_reply, train_reply

DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class SitePrivacy:
    """The site's cap (max_epsilon, delta), accountant, ledger and data fingerprint."""

    site: str
    budget: SiteBudget
    ledger: PrivacyLedger
    fingerprint: str
    records: int

    def spent(self) -> float:
        return epsilon(self.ledger.events(self.fingerprint), delta=self.budget.delta, accountant=self.budget.accountant)

    def status(self) -> protocol.SiteStatus:
        """What planning needs: size, cap, delta and the DP events already spent on this data."""
        events = self.ledger.events(self.fingerprint)
        return protocol.SiteStatus(
            name=self.site,
            records=self.records,
            max_epsilon=self.budget.max_epsilon,
            delta=self.budget.delta,
            spent_epsilon=epsilon(events, delta=self.budget.delta, accountant=self.budget.accountant),
            prior_events=events,
        )


def site_privacy(node: Mapping[str, Any], *, site: str, features, labels, study) -> SitePrivacy:
    """Resolve the site's privacy guard; the node config's cap and delta win over the study's."""
    if protocol.LEDGER_PATH not in node:
        raise PlanError(
            f"site {site!r} has no ledger-path in its node config: a site needs a privacy ledger on its own "
            "disk before it trains with DP (set ledger in the site config)"
        )
    records_count = int(len(labels))
    delta = float(node.get(protocol.DELTA) or study.privacy.delta or min(DEFAULT_DELTA, 1.0 / (10 * records_count)))
    check_delta(delta, records_count, site=site)
    budget = SiteBudget(
        max_epsilon=float(node.get(protocol.MAX_EPSILON) or study.privacy.max_epsilon),
        delta=delta,
        accountant=study.privacy.accountant,
    )
    return SitePrivacy(
        site=site,
        budget=budget,
        ledger=PrivacyLedger(Path(str(node[protocol.LEDGER_PATH]))),
        fingerprint=data_fingerprint(features, labels),
        records=records_count,
    )


def train_private(
    msg: Message, context: Context, *, setup, model: torch.nn.Module, noise_multiplier: float, proximal_mu: float = 0.0
) -> Message:
    """Check the request against the cap, run DP-SGD, append the DP event, reply."""
    from flsuite.privacy import train_dp

    study = setup.study
    data = setup.data
    guard = site_privacy(context.node_config, site=setup.name, features=data.features, labels=data.labels, study=study)
    training = study.training
    schedule = poisson_schedule(records=len(data), batch_size=training.batch_size, local_epochs=training.local_epochs, site=setup.name)
    server_round = int(msg.content[protocol.CONFIG].get(protocol.SERVER_ROUND, 0))
    try:
        guard.budget.require(guard.ledger, guard.fingerprint, (schedule.sample_rate, noise_multiplier, schedule.steps_per_round))
    except BudgetExhausted as refusal:
        return refusal_reply(
            msg,
            protocol.Refusal(kind="budget-exhausted", site=setup.name, message=str(refusal), remaining_epsilon=refusal.remaining_epsilon),
        )
    started = time.perf_counter()
    result = train_dp(
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
    train_seconds = time.perf_counter() - started
    event = result.dp_event(
        study_id=study.name,
        run_id=str(context.run_id),
        round=server_round,
        site=setup.name,
        delta=guard.budget.delta,
        accountant=guard.budget.accountant,
    )
    guard.ledger.append(event)  # durable before the reply leaves the site
    model.load_state_dict(result.state_dict)
    metrics = {
        protocol.NUM_EXAMPLES: result.examples,
        protocol.TRAIN_LOSS: _finite(result.mean_loss),
        protocol.TRAIN_SECONDS: train_seconds,
        protocol.EMPTY_BATCHES: result.empty_batches,
    }
    return train_reply(msg, model=model, metrics=metrics, status=guard.status(), dp_event=event)


def _finite(value: float) -> float:
    return value if value == value else 0.0
