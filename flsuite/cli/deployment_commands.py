"""`flsuite coordinator ...` and `flsuite site ...`: Typer sub-apps for a real federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flsuite.coordinator.superlink import CoordinatorState, start_coordinator, stop_coordinator
from flsuite.deployment import stay_in_foreground
from flsuite.deployment.config import load_coordinator_config, load_site_config
from flsuite.errors import ConfigError
from flsuite.site.node import check_site, start_site, stop_site

coordinator_app = typer.Typer(
    name="coordinator",
    help=(
        "Run the federation's coordinator: Flower's SuperLink with TLS, SuperNode "
        "authentication, a database file and no runtime dependency installation."
    ),
    no_args_is_help=True,
)
site_app = typer.Typer(
    name="site",
    help="Run this site's node: Flower's SuperNode with the site bundle, data path, ledger and privacy cap.",
    no_args_is_help=True,
)

CoordinatorConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Coordinator YAML config (see README: Run a real federation).")
]
SiteConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Site YAML config (see README: Run a real federation).")]


@coordinator_app.command("start")
def coordinator_start(config: CoordinatorConfigOption) -> None:
    """Check certificates and site keys, start the SuperLink, register the sites, print where it listens."""
    _print_started(start_coordinator(load_coordinator_config(config)))


def _print_started(state: CoordinatorState) -> None:
    typer.echo(f"coordinator listening on {state.listen} (PID {state.pid}, {state.tls_version})")
    typer.echo(f"sites connect to:   {state.connect}  (--superlink in their config: coordinator)")
    for site, node in state.nodes.items():
        typer.echo(f"registered site {site}" + (f" as node {node}" if node is not None else " (already registered)"))
    typer.echo(f"log:                {state.log_file}")
    typer.echo(f"submit a study:     FLWR_HOME={state.flwr_home} flwr run . {state.federation} --stream")


@coordinator_app.command("run")
def coordinator_run(config: CoordinatorConfigOption) -> None:
    """Start the coordinator as `start` does, then stay in the foreground streaming its log until SIGTERM (containers)."""
    settings = load_coordinator_config(config)
    state = start_coordinator(settings)
    _print_started(state)
    raise typer.Exit(stay_in_foreground(state.pid, Path(state.log_file), lambda: stop_coordinator(settings)))


@coordinator_app.command("stop")
def coordinator_stop(config: CoordinatorConfigOption) -> None:
    """Stop the SuperLink this config started (by the PID in its state folder)."""
    pid = stop_coordinator(load_coordinator_config(config))
    typer.echo(f"stopped coordinator (PID {pid})" if pid else "no coordinator was running")


@site_app.command("check")
def site_check(config: SiteConfigOption) -> None:
    """Check the bundle, data file, ledger path and that the coordinator answers over TLS; start nothing."""
    version = check_site(load_site_config(config))
    typer.echo(f"site config ok; coordinator answers over {version}")


@site_app.command("start")
def site_start(config: SiteConfigOption) -> None:
    """Check everything, then start the SuperNode; the site's own settings travel in its node_config."""
    settings = load_site_config(config)
    state = start_site(settings)
    joined = f"as node {state.node_id}" if state.node_id is not None else "(still connecting; see the log)"
    if state.ledger_created:
        typer.echo(f"new privacy ledger {settings.ledger}: genesis head anchored and signed")
    typer.echo(f"site {settings.site} connected to {state.coordinator} {joined} (PID {state.pid}, {state.tls_version})")
    typer.echo(f"log: {state.log_file}")


@site_app.command("run")
def site_run(config: SiteConfigOption) -> None:
    """Start the site's node as `start` does, then stay in the foreground streaming its log until SIGTERM (containers)."""
    settings = load_site_config(config)
    state = start_site(settings)
    typer.echo(f"site {settings.site} connected to {state.coordinator} (PID {state.pid}, {state.tls_version})")
    raise typer.Exit(stay_in_foreground(state.pid, Path(state.log_file), lambda: stop_site(settings)))


@site_app.command("stop")
def site_stop(config: SiteConfigOption) -> None:
    """Stop the SuperNode this config started (by the PID in its state folder)."""
    pid = stop_site(load_site_config(config))
    typer.echo(f"stopped site (PID {pid})" if pid else "no site node was running")


@site_app.command("reset-ledger")
def site_reset_ledger(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Site YAML config of a real site.")] = None,
    sites_dir: Annotated[Path | None, typer.Option("--sites-dir", help="A simulation's sites_dir (with --site).")] = None,
    site: Annotated[str | None, typer.Option("--site", help="The simulated site to reset, e.g. site-0.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the site starts over from 0 spent.")] = False,
) -> None:
    """Start a site's privacy ledger over: archive (never delete) the ledger and its anchored
    head, write a fresh signed genesis anchor, log it beside the ledger. Only for a site whose
    ledger was lost or cannot be trusted: every past release still happened."""
    from flsuite.site import reset_ledger

    if (config is None) == (sites_dir is None) or (sites_dir is not None) != (site is not None):
        raise ConfigError("pass either --config SITE.yaml, or --sites-dir DIR --site NAME")
    if not yes:
        raise ConfigError(
            "resetting a privacy ledger lets the site spend its whole cap again on data it already released: "
            "pass --yes to confirm (the old ledger and anchor are archived, not deleted)"
        )
    if config is not None:
        from flsuite.pki.authority import SiteBundle

        settings = load_site_config(config)
        done = reset_ledger(settings.ledger, site=settings.site, dataset=settings.budget_dataset,
                            identity_key=SiteBundle(settings.bundle).identity_key)
    else:
        from flsuite.site import reset_simulated_ledger

        done = reset_simulated_ledger(sites_dir, site)
    for line in done.lines():
        typer.echo(line)
