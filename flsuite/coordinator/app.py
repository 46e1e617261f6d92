"""The coordinator's Flower ServerApp: one study per run."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

__all__ = ["build_server_app"]


def build_server_app() -> ServerApp:
    """A ServerApp that runs the study named by the run's run_config (see ``run_study``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from flsuite.coordinator.study import run_study

        run_study(grid, context)

    return app
