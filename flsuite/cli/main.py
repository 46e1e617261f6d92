"""The ``flsuite`` command: one entry point for research teams, sites, operators and auditors.

User errors (a bad config value, a missing file) print one message and exit 2, with no
traceback; integrity failures exit 1; a study that stops early exits 3.
"""

from __future__ import annotations

import sys

import typer

from flsuite.cli.study_commands import RUN_HELP, run
from flsuite.errors import FlsuiteError

app = typer.Typer(
    name="flsuite",
    help="Federated, privacy-preserving training with Flower and Opacus, and an auditable model registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", help="Print the flsuite version and exit.", is_eager=True),
) -> None:
    """Federated, privacy-preserving training with Flower and Opacus, and an auditable model registry."""
    if version:
        from flsuite import __version__

        print(f"flsuite {__version__}")
        raise typer.Exit()


app.command(
    "run",
    help=RUN_HELP,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(run)


def main() -> None:
    try:
        app()
    except FlsuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))


if __name__ == "__main__":
    main()
