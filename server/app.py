"""The Flower ServerApp of flsuite: thin wiring around ``flsuite.study.coordinator_main``."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flsuite.study.coordinator_main import run_study

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_study(grid, context)
