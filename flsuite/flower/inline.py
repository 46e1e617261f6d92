"""The inline engine: run a ServerApp to completion against in-process ClientApps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp

from flsuite.flower.grid import InProcessGrid, new_run

__all__ = ["run_inline"]


def run_inline(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    run_config: Mapping[str, Any],
    node_configs: list[Mapping[str, Any]],
    run_id: int = 1,
    **options: Any,
) -> InProcessGrid:
    """Run ``server_app`` over one in-process node per node config; returns the grid.

    ``options`` are InProcessGrid's test options (drop, delay, tamper, wire).
    """
    grid = InProcessGrid.for_client_app(client_app, run=new_run(run_id, run_config), node_configs=node_configs, **options)
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(run_config))
    with grid:
        server_app(grid, context)
    return grid
