"""``flsuite run``: run a study (or a sweep of studies) on this machine."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flsuite.config import check_inputs, compose_study, expand_sweep
from flsuite.config.schema import StudyConfig
from flsuite.coordinator import progress
from flsuite.tracking import StudyTracking

console = Console()

RUN_HELP = (
    "Run a federated study on this machine.\n\n"
    "Give Hydra overrides after the command: pick a config group option (`experiment=digits`, `model=mlp`, "
    "`engine=ray`) or set a value (`federation.rounds=20`, `data.dirichlet_alpha=0.1`). With -m, comma-separated "
    "values sweep: `flsuite run -m model=logreg,mlp federation.rounds=5,10`.\n\n"
    "The default study: breast cancer over 5 simulated hospital sites, DP-SGD at every site (at most epsilon 3 per "
    "study; `privacy=none` for the non-private baseline) and secure aggregation (`secagg=none` to switch it off). "
    "Simulated sites keep their privacy ledgers in sites_dir (default .flsuite/sites), so later studies start from "
    "what was spent.\n\n"
    "Outputs go to outputs/DATE/TIME_NAME (or --output-dir): config.yaml, metrics.csv, metrics.json, "
    "site_metrics.csv, privacy_plan.csv, privacy.csv, summary.json, metrics.png and registry/ (the signed model "
    "versions). Exit code 3 when the study did not complete (a round aborted, fewer rounds than planned, too few "
    "sites left, a full disk; each reason is printed), 2 on bad input.\n\n"
    "`flsuite run --resume OUTPUT_DIR` continues a study whose coordinator died, after the last version its "
    "registry published (verified first), with the same config and privacy plan; outputs are kept and appended to."
)


def run(
    ctx: typer.Context,
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep over comma-separated override values."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Folder for the outputs (default: outputs/DATE/TIME_NAME)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Flower's log lines."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the study in this output folder after its coordinator died (see README: Resume a study)."
    ),
) -> None:
    overrides = list(ctx.args)
    if not verbose:
        from flsuite.flower import enable_flower_logger

        enable_flower_logger()  # Flower's logger starts at DEBUG
        logging.getLogger("flwr").setLevel(logging.WARNING)
    if resume is not None:
        _resume(resume, overrides, multirun=multirun, output_dir=output_dir)
        return
    runs = expand_sweep(overrides) if multirun else [overrides]
    studies = [compose_study(run_overrides) for run_overrides in runs]  # validate every run before any trains
    stamp = datetime.now()
    folders = [_output_folder(study, output_dir, stamp, index if multirun else None) for index, study in enumerate(studies)]
    for study, folder in zip(studies, folders):  # and every path they name, before anything is written
        check_inputs(study, folder)
    tracking = StudyTracking.prepare(studies, folders, outputs_root=output_dir or Path("outputs"),  # tracking=mlflow: store checked now
                                     labels=[" ".join(r) for r in runs], sweep=multirun)
    summaries = []
    for index, (run_overrides, study, folder) in enumerate(zip(runs, studies, folders)):
        if multirun:
            console.print(f"[bold]run {index}[/bold]: {' '.join(run_overrides) or '(defaults)'}")
        with tracking.track(index) as tracked:
            summary = _run_with_progress(study, folder)
            tracked.finish(summary)
        summaries.append((run_overrides, summary))
        print_summary(summary)
    if multirun:
        _print_sweep(summaries)
    failed = [s for _, s in summaries if s["status"] != "completed"]
    if failed:
        raise typer.Exit(3)


def _resume(folder: Path, overrides: list[str], *, multirun: bool, output_dir: Path | None) -> None:
    """``flsuite run --resume FOLDER``: everything is checked (the registry verified) before a round runs."""
    from flsuite.coordinator import prepare_resume
    from flsuite.errors import ConfigError

    if multirun or output_dir is not None:
        raise ConfigError("--resume continues one study in its own folder: drop -m/--multirun and --output-dir")
    study = prepare_resume(folder, overrides)
    target = Path(study.output_dir or folder)
    check_inputs(study, target)
    console.print(f"resuming study [bold]{escape(study.name)}[/bold] in {escape(str(target))}", highlight=False)
    summary = _run_with_progress(study, target)
    print_summary(summary)
    if summary["status"] != "completed":
        raise typer.Exit(3)


def _output_folder(study: StudyConfig, output_dir: Path | None, stamp: datetime, index: int | None) -> Path:
    """--output-dir, or outputs/DATE/TIME_NAME; a sweep's run ``index`` gets a numbered subfolder."""
    if index is not None:
        return (output_dir or Path("multirun") / stamp.strftime("%Y-%m-%d") / stamp.strftime("%H-%M-%S")) / str(index)
    return output_dir or Path("outputs") / stamp.strftime("%Y-%m-%d") / f"{stamp.strftime('%H-%M-%S')}_{study.name}"


def _run_with_progress(study: StudyConfig, folder: Path) -> dict[str, Any]:
    from flsuite.simulation import run_local_study

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[latest]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, refresh_per_second=2) as bar:
        task = bar.add_task(f"{study.name} rounds", total=study.federation.rounds, latest="")

        def on_round(record: Any) -> None:
            accuracy = record.metrics.get("accuracy")
            latest = f"accuracy {accuracy:.3f}" if accuracy is not None else ""
            bar.update(task, completed=record.round, latest=latest)

        progress.subscribe(on_round)
        try:
            return run_local_study(study, folder)
        finally:
            progress.unsubscribe(on_round)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_summary(summary: dict[str, Any]) -> None:
    """The end-of-study table: what ran, how well, how long, and where the files are."""
    table = Table(title=f"Study {summary['name']}: {summary['status']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("dataset", summary["dataset"]),
        ("model", summary["model"]),
        ("sites", summary["sites"]),
        ("rounds", f"{summary['rounds_completed']} of {summary['rounds_planned']}"),
        ("final accuracy", _fmt(summary["final_accuracy"])),
        ("final AUC", _fmt(summary["final_auc"])),
        ("wall time", f"{summary['wall_s']:.1f} s"),
    ]
    if summary.get("pruned_sites"):
        rows.append(("pruned sites", ", ".join(f"{p['site'] or 'node ' + str(p['node_id'])} (round {p['round']})"
                                              for p in summary["pruned_sites"])))
    if summary.get("registry"):
        rows.append(("registry", summary["registry"]))
        rows.append(("final version", summary.get("final_version")))
    rows.append(("output folder", summary["output_dir"]))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    if summary.get("privacy"):
        console.print(privacy_table(summary["privacy"]))
    if summary.get("monitoring"):
        from flsuite.cli.monitoring_view import monitoring_table

        console.print(monitoring_table(summary["monitoring"]))
    print_reasons(summary)


def print_reasons(summary: dict[str, Any]) -> None:
    """Why the study did not complete, one reason a line; then every site refused, rejected or failed."""
    reasons = summary.get("reasons")
    if reasons is None:  # a summary written before the verdict existed
        reasons = [summary["message"]] if summary.get("message") else []
    if summary.get("status") != "completed":
        console.print(f"[bold red]The study {summary.get('status')}[/bold red]:", highlight=False)
    for reason in reasons:
        console.print(f"  [red]-[/red] {escape(str(reason))}", highlight=False, soft_wrap=True)
    notes = [
        *(f"round {r['round']}: {r['name']} {_refusal_verb(r['kind'])}: {r['reason']}" for r in summary.get("refusals") or []),
        *(f"round {f['round']}: node {f['node_id']} failed on its {f['stage']} message: {f['reason']}"
          for f in summary.get("site_failures") or []),
        *(f"round {p['round']}: {p['site'] or 'node ' + str(p['node_id'])} pruned: {p['reason']}" for p in summary.get("pruned_sites") or []),
        *(f"{e['site'] or 'node ' + str(e['node_id'])} left out of the privacy plan (round {e['round']}): {e['reason']}"
          for e in ((summary.get("privacy") or {}).get("planning") or []) if e.get("action") == "left-out"),
    ]
    if notes:
        console.print("[yellow]Sites that refused, were rejected, failed, were pruned or were left out, with their reasons:[/yellow]",
                      highlight=False)
    for note in notes:
        console.print(f"  [yellow]-[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def _refusal_verb(kind: str) -> str:
    return "reply rejected" if kind == "rejected-reply" else f"refused ({kind})"


def privacy_table(privacy: dict[str, Any]) -> Table:
    """Epsilon spent and cap per site, with the accountant and the unit of privacy."""
    table = Table(title=f"Privacy ({privacy['accountant']} accountant; unit: {privacy['unit_of_privacy']})")
    for column in ("site", "epsilon spent (all studies)", "cap", "delta", "sigma"):
        table.add_column(column)
    for name, site in privacy["sites"].items():
        table.add_row(name, _fmt(site["epsilon_spent"], 3), _fmt(site["max_epsilon"], 3), _fmt(site["delta"]), _fmt(site.get("planned_sigma"), 3))
    return table


def _print_sweep(summaries: list[tuple[list[str], dict[str, Any]]]) -> None:
    table = Table(title="Sweep")
    for column in ("overrides", "status", "accuracy", "AUC", "wall s", "output folder"):
        table.add_column(column)
    for overrides, summary in summaries:
        table.add_row(
            " ".join(overrides) or "(defaults)",
            summary["status"],
            _fmt(summary["final_accuracy"]),
            _fmt(summary["final_auc"]),
            f"{summary['wall_s']:.1f}",
            summary["output_dir"],
        )
    console.print(table)
