"""The coordinator's Flower ServerApp: one study per run.

The ServerApp raises StudyAborted when the study did not complete (an aborted round, fewer
completed rounds than planned, a full disk), after its outputs are written: Flower then
records the run as failed, under `flwr run`, `flsuite launch` and the local engines alike.
Before the study, ``flower_run.prepare_run`` anchors relative paths and prepares simulated
sites, so that `flwr run .` needs nothing else. In deployment the Grid pulls replies every 0.2 s, not Flower's 3 s (``polling``).
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flsuite.errors import StudyAborted

__all__ = ["build_server_app", "raise_unless_completed"]


def raise_unless_completed(summary: dict[str, Any]) -> None:
    """StudyAborted listing every reason, unless the summary's status is "completed"."""
    if summary.get("status") == "completed":
        return
    reasons = summary.get("reasons") or [summary.get("message") or "no reason recorded"]
    raise StudyAborted(
        f"study {summary.get('name')} {summary.get('status')} ({summary.get('rounds_completed')} of "
        f"{summary.get('rounds_planned')} rounds): " + "; ".join(reasons) + f". Outputs: {summary.get('output_dir')}"
    )


def build_server_app() -> ServerApp:
    """A ServerApp that runs the study named by the run's run_config (see ``run_study``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from flsuite.coordinator.flower_run import prepare_run
        from flsuite.coordinator.polling import prompt_grid
        from flsuite.coordinator.study import run_study

        prepare_run(grid, context)  # `flwr run .`: paths under $FLSUITE_HOME, simulated sites' keys
        raise_unless_completed(run_study(prompt_grid(grid), context))

    return app
