"""Plan a study's privacy before round 1: per site q, steps, sigma and the projected epsilon.

Each site gets its own noise multiplier, computed from its own size, so that this study alone
costs it at most ``target_epsilon``; the projection then composes the study with what the
site's ledger already holds and checks the site's cap. The study's other releases at each site
(its private evaluations: ``evaluation_phases``) are part of the study: the target covers
training and evaluation together, and ``study_epsilon`` includes them. Pure: numbers in, rows out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from flsuite.errors import ConfigError, PlanError, StudyOverBudget
from flsuite.privacy.accounting import (
    Phase,
    PhaseLike,
    check_delta,
    epsilon,
    noise_multiplier_for,
    normalize_phases,
    validate_accountant,
    validate_delta,
)
from flsuite.privacy.schedule import poisson_schedule

__all__ = ["PlanRow", "SitePlanInput", "StudyOverBudget", "plan_study"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SitePlanInput:
    """A site as the planner sees it: its size, what its ledger already holds, its cap."""

    name: str
    records: int
    prior_phases: tuple[PhaseLike, ...] = ()
    max_epsilon: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanRow:
    """One site's line of the plan. ``study_epsilon`` is this study alone; ``projected_epsilon``
    composes it with the site's prior spend; ``remaining`` is cap minus projected (None: no cap)."""

    site: str
    records: int
    sample_rate: float
    steps_per_round: int
    total_steps: int
    noise_multiplier: float
    prior_epsilon: float
    study_epsilon: float
    projected_epsilon: float
    max_epsilon: float | None
    remaining: float | None
    evaluation_releases: int = 0
    evaluation_sigma: float | None = None

    @property
    def phase(self) -> Phase:
        return (self.sample_rate, self.noise_multiplier, self.total_steps)


def plan_study(
    sites: Sequence[SitePlanInput],
    *,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    delta: float,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    accountant: str = "prv",
    evaluation_phases: Sequence[PhaseLike] = (),
) -> list[PlanRow]:
    """Rows in the order of ``sites``. Give exactly one of target_epsilon and noise_multiplier.

    ``evaluation_phases``: the Gaussian releases each site makes in this study besides training
    (``flsuite.privacy.release.evaluation_phases``); sigma is chosen so that training composed
    with them stays within the target.

    Raises PlanError naming every site whose cap the study would pass, and by how much.
    """
    validate_accountant(accountant)
    delta = validate_delta(delta)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError("give exactly one of privacy.target_epsilon and privacy.noise_multiplier")
    if target_epsilon is not None and not _positive(target_epsilon):
        raise ConfigError(f"privacy.target_epsilon must be a number > 0, got {target_epsilon!r}")
    if noise_multiplier is not None and not _positive(noise_multiplier):
        raise ConfigError(f"privacy.noise_multiplier must be a number > 0, got {noise_multiplier!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not sites:
        raise PlanError("no sites to plan for")
    names = [site.name for site in sites]
    if len(set(names)) != len(names):
        raise PlanError(f"site names must be unique, got {names}")

    evaluation = normalize_phases(evaluation_phases)
    rows, over = [], []
    for site in sites:
        if site.max_epsilon is not None and not _positive(site.max_epsilon):
            raise ConfigError(f"site {site.name!r}: max_epsilon must be a number > 0, got {site.max_epsilon!r}")
        schedule = poisson_schedule(
            records=site.records, batch_size=batch_size, local_epochs=local_epochs, site=site.name
        )
        check_delta(delta, site.records, site=site.name)
        total_steps = schedule.steps_per_round * rounds
        sigma = noise_multiplier
        if sigma is None:
            sigma = noise_multiplier_for(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=schedule.sample_rate,
                steps=total_steps,
                prior_phases=evaluation,
                accountant=accountant,
            )
        prior = normalize_phases(site.prior_phases)
        study_phase = ((schedule.sample_rate, float(sigma), total_steps), *evaluation)
        prior_epsilon = epsilon(prior, delta=delta, accountant=accountant)
        projected = epsilon(prior + study_phase, delta=delta, accountant=accountant)
        cap = None if site.max_epsilon is None else float(site.max_epsilon)
        row = PlanRow(
            site=site.name,
            records=site.records,
            sample_rate=schedule.sample_rate,
            steps_per_round=schedule.steps_per_round,
            total_steps=total_steps,
            noise_multiplier=float(sigma),
            prior_epsilon=prior_epsilon,
            study_epsilon=epsilon(study_phase, delta=delta, accountant=accountant),
            projected_epsilon=projected,
            max_epsilon=cap,
            remaining=None if cap is None else cap - projected,
            evaluation_releases=sum(steps for _, _, steps in evaluation),
            evaluation_sigma=evaluation[0][1] if evaluation else None,
        )
        rows.append(row)
        if cap is not None and projected > cap:
            over.append(row)
    if over:
        details = "; ".join(
            f"site {r.site!r} would reach epsilon {r.projected_epsilon:.3f} (spent {r.prior_epsilon:.3f} "
            f"before this study) against its cap {r.max_epsilon:g}: over by {r.projected_epsilon - r.max_epsilon:.3f}"
            for r in over
        )
        raise StudyOverBudget(
            f"the study does not fit every site's remaining privacy budget: {details}. "
            "Lower privacy.target_epsilon, run fewer rounds or local epochs, or leave those sites out.",
            rows=rows,
            over_budget=over,
        )
    return rows


def _positive(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0 and math.isfinite(value)
