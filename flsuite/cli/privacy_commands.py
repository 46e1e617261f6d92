"""``flsuite privacy plan``: the privacy plan of a study, printed without training."""

from __future__ import annotations

import typer
from rich.console import Console

from flsuite.cli.tables import FORMAT_HELP, Column, OutputFormat, TableData, emit
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
def plan(
    ctx: typer.Context,
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help=FORMAT_HELP),
) -> None:
    from flsuite.coordinator.planning import plan_privacy
    from flsuite.site.simulated_status import simulated_statuses

    study = compose_study(list(ctx.args))
    if not study.privacy.enabled:
        raise ConfigError("this study has privacy.enabled=false, so there is nothing to plan: add privacy=dp")
    statuses = simulated_statuses(study)
    deltas = {status.name: status.delta for status in statuses.values()}
    try:
        rows = plan_privacy(study, statuses).rows
    except StudyOverBudget as exc:
        emit(plan_table(study, exc.rows, deltas), fmt, console)
        raise
    emit(plan_table(study, rows, deltas), fmt, console)
    if rows and rows[0].evaluation_releases and fmt is OutputFormat.table:  # the study's epsilon above includes these
        drift = " and drift" if study.monitoring.drift else ""
        console.print(f"eps study includes {rows[0].evaluation_releases} Gaussian release(s) per site for per-site evaluation{drift} "
                      f"(monitoring.*; monitoring=none drops them)")


def plan_table(study, rows, deltas: dict[str, float | None] | None = None) -> TableData:
    """The plan, one row per site; numbers stay raw until rendered (JSON and CSV keep every digit)."""
    privacy = study.privacy
    goal = f"target epsilon {privacy.target_epsilon:g} per study" if privacy.target_epsilon else f"sigma {privacy.noise_multiplier:g}"
    columns = [Column("site"), Column("N", numeric=True), Column("q", numeric=True), Column("steps/rd", numeric=True),
               Column("steps", numeric=True), Column("sigma", numeric=True, digits=3), Column("delta", numeric=True),
               *(Column(name, numeric=True, digits=3) for name in ("eps before", "eps study", "eps total", "cap", "left"))]
    table = TableData(f"Privacy plan: {goal}, {privacy.accountant} accountant, unit: {UNIT_OF_PRIVACY}", columns)
    for row in rows:
        style = "red" if row.remaining is not None and row.remaining < 0 else None
        table.add_row(
            row.site, row.records, row.sample_rate, row.steps_per_round, row.total_steps, row.noise_multiplier,
            (deltas or {}).get(row.site, privacy.delta), row.prior_epsilon, row.study_epsilon, row.projected_epsilon, row.max_epsilon, row.remaining,
            style=style,
        )
    return table
