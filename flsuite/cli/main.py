"""The ``flsuite`` command: one entry point for research teams, sites, operators and auditors.

User errors (a bad config value, a missing file) print one message and exit 2, with no
traceback; integrity failures, and a file the system could not read or write (a full
disk), exit 1; a study that did not complete exits 3. README's "Exit codes" table lists
each case; tests/integration/test_exit_codes.py runs them.
"""

from __future__ import annotations

import sys

import typer

from flsuite.cli.deployment_commands import coordinator_app, site_app
from flsuite.cli.launch import LAUNCH_CONTEXT, LAUNCH_HELP, launch
from flsuite.cli.ledger_commands import audit_ledger_command
from flsuite.cli.pki_commands import pki_app
from flsuite.cli.privacy_commands import privacy_app
from flsuite.cli.registry_commands import audit_app, registry_app
from flsuite.cli.study_commands import RUN_HELP, run
from flsuite.errors import FlsuiteError

app = typer.Typer(
    name="flsuite",
    help="Federated, privacy-preserving training with Flower and Opacus, and an auditable model registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from flsuite import __version__

        print(f"flsuite {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", help="Print the flsuite version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """Federated, privacy-preserving training with Flower and Opacus, and an auditable model registry."""


app.command(
    "run",
    help=RUN_HELP,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(run)

app.command("launch", help=LAUNCH_HELP, context_settings=LAUNCH_CONTEXT)(launch)
app.add_typer(privacy_app, name="privacy")
app.add_typer(registry_app, name="registry", help="List, inspect, promote, roll back and export model versions.")
audit_app.command("ledger")(audit_ledger_command)
app.add_typer(audit_app, name="audit", help="Verify a registry offline and review every site's privacy spend.")
app.add_typer(pki_app, name="pki", help="Issue the federation's CA, coordinator certificate and site bundles.")
app.add_typer(coordinator_app, name="coordinator", help="Start and stop the coordinator (Flower SuperLink with TLS and node auth).")
app.add_typer(site_app, name="site", help="Check, start and stop a site's node (Flower SuperNode).")


def main() -> None:
    try:
        app()
    except FlsuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
    except OSError as exc:  # a full disk, a folder that went away: the path and the cause, no traceback
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        sys.exit(1)


def os_error_message(exc: OSError) -> str:
    """An OSError in plain words: the file it concerns and what the system said."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


if __name__ == "__main__":
    main()
