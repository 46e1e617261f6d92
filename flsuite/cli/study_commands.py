"""``flsuite run``: run a study (or a sweep of studies) on this machine."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flsuite.cli.tables import FORMAT_HELP, Column, OutputFormat, TableData, emit, format_value, to_csv, to_json
from flsuite.config import check_inputs, compose_study, expand_sweep, run_folder, split_hydra_dirs, sweep_folders
from flsuite.config.schema import StudyConfig
from flsuite.coordinator import progress
from flsuite.tracking import StudyTracking

console = Console()
err_console = Console(stderr=True)

RUN_HELP = (
    "Run a federated study on this machine.\n\n"
    "Give Hydra overrides after the command: pick a config group option (`experiment=digits`, `model=mlp`, "
    "`engine=ray`) or set a value (`federation.rounds=20`, `data.dirichlet_alpha=0.1`). With -m, comma-separated "
    "values sweep: `flsuite run -m model=logreg,mlp federation.rounds=5,10`.\n\n"
    "The default study: breast cancer over 5 simulated hospital sites, DP-SGD at every site (at most epsilon 3 per "
    "study; `privacy=none` for the non-private baseline) and secure aggregation (`secagg=none` to switch it off). "
    "Simulated sites keep their privacy ledgers in sites_dir (default .flsuite/sites), so later studies start from "
    "what was spent.\n\n"
    "Outputs go to outputs/DATE/TIME_NAME_OVERRIDES (or --output-dir, or hydra.run.dir=DIR; a sweep: "
    "multirun/DATE/TIME_NAME/N_OVERRIDES or hydra.sweep.dir=DIR, with sweep.csv and sweep.json): config.yaml, metrics.csv, metrics.json, "
    "site_metrics.csv, privacy_plan.csv, privacy.csv, summary.json, metrics.png and registry/ (the signed model "
    "versions). Exit code 3 when the study did not complete (a round aborted, fewer rounds than planned, too few "
    "sites left, a full disk; each reason is printed), 2 on bad input.\n\n"
    "`flsuite run --resume OUTPUT_DIR` continues a study whose coordinator died, after the last version its "
    "registry published (verified first), with the same config and privacy plan; outputs are kept and appended to."
)


def run(
    ctx: typer.Context,
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep over comma-separated override values."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Folder for the outputs (default: outputs/DATE/TIME_NAME_OVERRIDES)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Flower's log lines."),
    fmt: OutputFormat = typer.Option(
        OutputFormat.table, "--format",
        help="How the final table prints (the summary; with -m the sweep): " + FORMAT_HELP
        + " With json or csv, progress and per-run summaries go to stderr."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the study in this output folder after its coordinator died (see README: Resume a study)."
    ),
) -> None:
    overrides, dirs = split_hydra_dirs(list(ctx.args), multirun=multirun)
    if not verbose:
        from flsuite.flower import enable_flower_logger

        enable_flower_logger()  # Flower's logger starts at DEBUG
        logging.getLogger("flwr").setLevel(logging.WARNING)
    if resume is not None:
        if dirs.run_dir or dirs.sweep_dir:
            from flsuite.errors import ConfigError

            raise ConfigError("--resume continues the study in its own folder: drop hydra.run.dir / hydra.sweep.dir")
        _resume(resume, overrides, multirun=multirun, output_dir=output_dir)
        return
    runs = expand_sweep(overrides) if multirun else [overrides]
    studies = [compose_study(run_overrides) for run_overrides in runs]  # validate every run before any trains
    stamp = datetime.now()
    if multirun:
        names = {study.name for study in studies}
        sweep_dir, folders = sweep_folders(names.pop() if len(names) == 1 else "sweep", runs, stamp,
                                           output_dir=output_dir, dirs=dirs)
    else:
        sweep_dir, folders = None, [run_folder(studies[0].name, overrides, stamp, output_dir=output_dir, dirs=dirs)]
    for study, folder in zip(studies, folders):  # and every path they name, before anything is written
        check_inputs(study, folder)
    tracking = StudyTracking.prepare(studies, folders, outputs_root=output_dir or Path("outputs"),  # tracking=mlflow: store checked now
                                     labels=[" ".join(r) for r in runs], sweep=multirun)
    out = console if fmt is OutputFormat.table else err_console
    summaries = []
    for index, (run_overrides, study, folder) in enumerate(zip(runs, studies, folders)):
        if multirun:
            out.print(f"[bold]run {index}[/bold]: {escape(' '.join(run_overrides) or '(defaults)')}")
        with tracking.track(index) as tracked:
            summary = _run_with_progress(study, folder, out)
            tracked.finish(summary)
        summaries.append((run_overrides, summary))
        if multirun or fmt is OutputFormat.table:
            print_summary(summary, out)
        elif fmt is OutputFormat.json:  # the whole summary (as summary.json), not only the table's rows
            console.out(json.dumps(summary, indent=2), highlight=False)
        else:
            emit(summary_table(summary), fmt, console)
    if sweep_dir is not None:
        table = sweep_table(summaries)
        written = write_sweep_table(table, sweep_dir)
        emit(table, fmt, console)
        out.print(f"sweep table: {escape(', '.join(map(str, written)))}", highlight=False, soft_wrap=True)
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
    summary = _run_with_progress(study, target, console)
    print_summary(summary)
    if summary["status"] != "completed":
        raise typer.Exit(3)


def _run_with_progress(study: StudyConfig, folder: Path, out: Console) -> dict[str, Any]:
    from flsuite.simulation import run_local_study

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[latest]}"), TimeElapsedColumn()]
    with Progress(*columns, console=out, transient=False, refresh_per_second=2) as bar:
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


def summary_table(summary: dict[str, Any]) -> TableData:
    """The end-of-study table: what ran, how well, how long, and where the files are."""
    table = TableData(f"Study {summary['name']}: {summary['status']}", [Column("item"), Column("value")])
    rows: list[tuple[str, Any]] = [
        ("dataset", summary["dataset"]),
        ("model", summary["model"]),
        ("sites", summary["sites"]),
        ("rounds", f"{summary['rounds_completed']} of {summary['rounds_planned']}"),
        ("final accuracy", format_value(summary["final_accuracy"])),
        ("final AUC", format_value(summary["final_auc"])),
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
        table.add_row(key, "-" if value is None else str(value))
    return table


def print_summary(summary: dict[str, Any], out: Console | None = None) -> None:
    """The summary table, the privacy table, then why the study did not complete (if it did not)."""
    out = out or console
    emit(summary_table(summary), OutputFormat.table, out)
    if summary.get("privacy"):
        emit(privacy_table(summary["privacy"]), OutputFormat.table, out)
    if summary.get("monitoring"):
        from flsuite.cli.monitoring_view import monitoring_table

        out.print(monitoring_table(summary["monitoring"]))
    print_reasons(summary, out)


def print_reasons(summary: dict[str, Any], out: Console | None = None) -> None:
    """Why the study did not complete, one reason a line; then every site refused, rejected or failed."""
    out = out or console
    reasons = summary.get("reasons")
    if reasons is None:  # a summary written before the verdict existed
        reasons = [summary["message"]] if summary.get("message") else []
    if summary.get("status") != "completed":
        out.print(f"[bold red]The study {summary.get('status')}[/bold red]:", highlight=False)
    for reason in reasons:
        out.print(f"  [red]-[/red] {escape(str(reason))}", highlight=False, soft_wrap=True)
    notes = [
        *(f"round {r['round']}: {r['name']} {_refusal_verb(r['kind'])}: {r['reason']}" for r in summary.get("refusals") or []),
        *(f"round {f['round']}: node {f['node_id']} failed on its {f['stage']} message: {f['reason']}"
          for f in summary.get("site_failures") or []),
        *(f"round {p['round']}: {p['site'] or 'node ' + str(p['node_id'])} pruned: {p['reason']}" for p in summary.get("pruned_sites") or []),
        *(f"{e['site'] or 'node ' + str(e['node_id'])} left out of the privacy plan (round {e['round']}): {e['reason']}"
          for e in ((summary.get("privacy") or {}).get("planning") or []) if e.get("action") == "left-out"),
    ]
    if notes:
        out.print("[yellow]Sites that refused, were rejected, failed, were pruned or were left out, with their reasons:[/yellow]",
                  highlight=False)
    for note in notes:
        out.print(f"  [yellow]-[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def _refusal_verb(kind: str) -> str:
    return "reply rejected" if kind == "rejected-reply" else f"refused ({kind})"


def privacy_table(privacy: dict[str, Any]) -> TableData:
    """Epsilon spent and cap per site, with the accountant and the unit of privacy."""
    table = TableData(
        f"Privacy ({privacy['accountant']} accountant; unit: {privacy['unit_of_privacy']})",
        [Column("site"), Column("epsilon spent (all studies)", numeric=True, digits=3), Column("cap", numeric=True, digits=3),
         Column("delta", numeric=True), Column("sigma", numeric=True, digits=3)],
    )
    for name, site in privacy["sites"].items():
        table.add_row(name, site["epsilon_spent"], site["max_epsilon"], site["delta"], site.get("planned_sigma"))
    return table


SWEEP_FILES = ("sweep.csv", "sweep.json")


def sweep_table(summaries: list[tuple[list[str], dict[str, Any]]]) -> TableData:
    """One row per run of a sweep: its overrides, verdict, final metrics, wall time and folder."""
    table = TableData("Sweep", [Column("overrides"), Column("status"), Column("accuracy", numeric=True),
                                Column("AUC", numeric=True), Column("wall s", numeric=True, digits=1),
                                Column("output folder")])
    for overrides, summary in summaries:
        table.add_row(" ".join(overrides) or "(defaults)", summary["status"], summary["final_accuracy"],
                      summary["final_auc"], float(summary["wall_s"]), str(summary["output_dir"]))
    return table


def write_sweep_table(table: TableData, folder: Path) -> list[Path]:
    """The sweep's table as sweep.csv and sweep.json in the sweep's folder (written durably)."""
    from flsuite.storage import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in SWEEP_FILES]
    write_atomic(paths[0], to_csv(table).encode())
    write_atomic(paths[1], (to_json(table) + "\n").encode())
    return paths
