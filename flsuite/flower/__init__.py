"""Every use of a Flower API that is not public, and nothing else.

The in-process Grid (inline engine and test fake), the pool of site worker processes it can
hand messages to, the inline and Ray engines, and Flower's logger. flwr is pinned exactly; an upgrade touches this package alone.
"""

from flsuite.flower.grid import FIRST_NODE_ID, InProcessGrid, Received, Run, new_run, server_task_identity, stage_of
from flsuite.flower.inline import run_inline
from flsuite.flower.site_processes import SiteProcessPool, load_client_app

__all__ = [
    "FIRST_NODE_ID",
    "InProcessGrid",
    "Received",
    "Run",
    "SiteProcessPool",
    "enable_flower_logger",
    "load_client_app",
    "new_run",
    "run_inline",
    "run_ray",
    "server_task_identity",
    "stage_of",
]


def enable_flower_logger() -> None:
    """Create Flower's "flwr" logger (Flower sets it up on import of a private module)."""
    import flwr.supercore.logger  # noqa: F401


def run_ray(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - imported lazily: Ray is heavy
    """Flower's Ray Simulation Engine; see ``flsuite.flower.ray.run_ray``."""
    from flsuite.flower.ray import run_ray as ray

    return ray(*args, **kwargs)
