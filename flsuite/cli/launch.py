"""``flsuite launch``: submit a study to a real federation and print the same summary as ``flsuite run``."""

from __future__ import annotations

from pathlib import Path

import typer

LAUNCH_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}

LAUNCH_HELP = """Submit a study to a real federation (Flower SuperLink and SuperNodes).

Give Hydra overrides after the command, as with `flsuite run`
(`experiment=digits federation.rounds=5 secagg.enabled=true`). The study is
validated first, then submitted with `flwr run ... --stream` to the federation
that `flsuite coordinator start --config FILE` started; pass the same --config.
Run it on the coordinator's machine: the study's outputs and registry are written
there (default outputs/DATE/TIME_NAME_OVERRIDES as `flsuite run` names it, or --output-dir, or
hydra.run.dir=FOLDER).

Exit status: 0 when the study completed, 3 when it ended early, 2 on bad input
or when the coordinator does not answer.

With --resume OUTPUT_DIR, the study in that folder continues after its last
published registry version (the registry is verified first), with the same plan.
The rounds it ran before are listed first, marked "earlier"; the lines after
"submitted run" are the rounds this run finishes.
"""


def launch(
    ctx: typer.Context,
    federation: str | None = typer.Option(
        None, "--federation", "-f", help="Federation (SuperLink connection) name; default: the one in --config."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The coordinator's YAML config; its state folder holds FLWR_HOME."
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Folder for the outputs on this (the coordinator's) machine."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every line of Flower's output."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the study in this output folder after the coordinator restarted (README: Resume a study)."
    ),
) -> None:
    """Submit a study to a real federation, follow its rounds, print its summary."""
    from flsuite.cli.study_commands import print_summary
    from flsuite.coordinator.launch import check_coordinator_answers, plan_launch
    from flsuite.coordinator.submit import submit_study
    from flsuite.deployment.config import load_coordinator_config

    coordinator = load_coordinator_config(config) if config is not None else None
    plan = plan_launch(list(ctx.args), federation=federation, coordinator=coordinator, output_dir=output_dir, resume=resume)
    tls = check_coordinator_answers(plan.connection)
    study = plan.study
    typer.echo(
        f"study {study.name}: {study.federation.rounds} rounds, min {study.federation.min_sites} sites, "
        f"secure aggregation {'on' if study.secagg.enabled else 'off'}, DP {'on' if study.privacy.enabled else 'off'}"
    )
    typer.echo(f"federation {plan.connection.federation} at {plan.connection.address} answers over {tls}")
    if plan.registered_sites is not None and plan.registered_sites != study.federation.num_sites:
        typer.echo(
            f"note: federation.num_sites={study.federation.num_sites} but the coordinator registers "
            f"{plan.registered_sites} sites; the summary reports federation.num_sites"
        )
    typer.echo(f"{'resuming in' if study.resume else 'outputs:'} {plan.output_dir}")
    for line in plan.earlier_round_lines():  # shown as earlier, before the submission; the run shows only its own
        typer.echo(line)
    summary = submit_study(plan, echo=typer.echo, verbose=verbose)
    print_summary(summary)
    if summary.get("status") != "completed":
        raise typer.Exit(3)
