"""What the ServerApp prepares itself, so that `flwr run .` works as well as `flsuite run`.

Under `flwr run .` nothing of flsuite ran before the ServerApp: the run_config is pyproject's,
with relative paths, and Flower's simulation runtime gives the sites only a partition id. So,
before the study starts, ``prepare_run``:

- anchors every relative path of the run_config under ``$FLSUITE_HOME`` (default ``~/flsuite``,
  ``flsuite.config.app_paths``), and an empty output_dir at ``outputs/run-<run id>`` there;
- in a simulation (any engine but ``deployment``), gives the simulated sites their folders,
  identity keys, pinned identities and ledgers (``prepare_simulated_sites``; a no-op for folders
  that ``flsuite run`` already prepared), so secure aggregation and DP work;
- refuses, with the one-line fix, a simulation with fewer nodes than ``federation.num_sites``
  (Flower's simulation starts 2 unless told otherwise).

Real sites (``engine=deployment``) bring their own keys and folders; nothing is created for them.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid

from flsuite.config import anchored_paths, flsuite_home, from_run_config
from flsuite.errors import ConfigError

__all__ = ["prepare_run"]

#: How long a simulation's nodes may take to register (Flower's Ray backend registers them
#: while its actors start) before a shortfall is refused.
NODE_WAIT_S = 30.0


def prepare_run(grid: Grid, context: Context) -> None:
    """Anchor the run_config's paths, and prepare a simulation's sites (see the module docstring)."""
    if not context.run_config:
        return  # run_study says what is missing
    context.run_config.update(anchored_paths(context.run_config, root=flsuite_home(), run_id=context.run_id))
    study = from_run_config(context.run_config)
    if study.engine.name == "deployment":
        return
    wanted = study.federation.num_sites
    nodes = _nodes_within(grid, wanted, seconds=min(NODE_WAIT_S, study.federation.round_timeout_s))
    if nodes < wanted:
        raise ConfigError(
            f"the simulation has {nodes} site nodes but the study has federation.num_sites={wanted}. Start as many "
            f"nodes (`flwr run . --federation-config num-supernodes={wanted}`), or ask for fewer sites "
            f"(`--run-config 'federation.num_sites={nodes}'` with federation.min_sites at most {nodes})."
        )
    from flsuite.site import prepare_simulated_sites

    prepare_simulated_sites(Path(study.sites_dir), study)


def _nodes_within(grid: Grid, wanted: int, *, seconds: float) -> int:
    """The number of nodes the grid lists once it reaches ``wanted``, or after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while (nodes := len(list(grid.get_node_ids()))) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return nodes
