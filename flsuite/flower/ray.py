"""The Ray engine: Flower's own Simulation Engine, for large simulated federations.

Flower's public ``run_simulation`` hands both apps an empty run_config, so this module
calls the function underneath it with the study's run_config and the project folder
(whose pyproject.toml declares every key). That private call is kept here, in one
place, with flwr pinned exactly; a test checks it against the inline engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from flwr.supercore.constant import NOOP_FEDERATION_ID

from flsuite.flower.grid import new_run, server_task_identity

PROJECT_DIR = Path(__file__).resolve().parents[2]


def run_ray(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    run_config: Mapping[str, Any],
    num_sites: int,
    threads_per_site: int = 1,
    run_id: int = 1,
) -> None:
    """Run a study on Flower's Ray Simulation Engine, one actor per CPU core."""
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_site))
    run = new_run(run_id, run_config)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(run_config))
    with server_task_identity(run_id):
        _run_simulation(
            num_supernodes=num_sites,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config={
                "client_resources": {"num_cpus": threads_per_site, "num_gpus": 0.0},
                "init_args": {"include_dashboard": False, "num_cpus": os.cpu_count() or 1},
            },
            server_app_context=context,
            app_dir=str(PROJECT_DIR),
            is_app=True,  # makes the sites read their run_config from the project folder
            run=run,
        )
