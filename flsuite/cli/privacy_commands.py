"""``flsuite privacy plan``: the privacy plan of a study, printed without training."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from flsuite.config import UNIT_OF_PRIVACY, compose_study
from flsuite.errors import ConfigError
from flsuite.privacy import StudyOverBudget

console = Console()

privacy_app = typer.Typer(
    help="Plan and review site-level differential privacy (unit of privacy: one record at one site).",
    no_args_is_help=True,
)

PLAN_HELP = """Print the study's privacy plan for its simulated sites, without training.

Takes the same Hydra overrides as `flsuite run` (e.g. `privacy=dp privacy.target_epsilon=1
federation.rounds=20`). For each site: records, sample rate q, steps per round and in all,
the noise multiplier sigma, epsilon spent before (from the site's ledger under sites_dir),
this study's epsilon, the projected total and what remains of the site's cap. Exits 2
naming the site and by how much when the plan does not fit a site's remaining budget.
"""


@privacy_app.command("plan", help=PLAN_HELP, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def plan(ctx: typer.Context) -> None:
    from flsuite.coordinator.planning import plan_privacy
    from flsuite.site.simulated_status import simulated_statuses

    study = compose_study(list(ctx.args))
    if not study.privacy.enabled:
        raise ConfigError("this study has privacy.enabled=false, so there is nothing to plan: add privacy=dp")
    try:
        rows = plan_privacy(study, simulated_statuses(study)).rows
    except StudyOverBudget as exc:
        console.print(plan_table(study, exc.rows))
        raise
    console.print(plan_table(study, rows))
    if rows and rows[0].evaluation_releases:  # the study's epsilon above includes these releases
        drift = " and drift" if study.monitoring.drift else ""
        console.print(f"eps study includes {rows[0].evaluation_releases} Gaussian release(s) per site for per-site evaluation{drift} "
                      f"(monitoring.*; monitoring=none drops them)")


def plan_table(study, rows) -> Table:
    privacy = study.privacy
    goal = f"target epsilon {privacy.target_epsilon:g} per study" if privacy.target_epsilon else f"sigma {privacy.noise_multiplier:g}"
    table = Table(title=f"Privacy plan: {goal}, {privacy.accountant} accountant, unit: {UNIT_OF_PRIVACY}")
    table.add_column("site", no_wrap=True)
    for column in ("N", "q", "steps/rd", "steps", "sigma", "eps before", "eps study", "eps total", "cap", "left"):
        table.add_column(column, justify="right")
    for row in rows:
        remaining = "-" if row.remaining is None else f"{row.remaining:.3f}"
        style = "red" if row.remaining is not None and row.remaining < 0 else None
        table.add_row(
            row.site,
            str(row.records),
            f"{row.sample_rate:.4f}",
            str(row.steps_per_round),
            str(row.total_steps),
            f"{row.noise_multiplier:.3f}",
            f"{row.prior_epsilon:.3f}",
            f"{row.study_epsilon:.3f}",
            f"{row.projected_epsilon:.3f}",
            "-" if row.max_epsilon is None else f"{row.max_epsilon:g}",
            remaining,
            style=style,
        )
    return table
