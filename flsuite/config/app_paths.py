"""Where a study's relative paths live when Flower, not flsuite, started it (`flwr run .`).

`flsuite run` and `flsuite launch` hand the apps absolute paths. `flwr run .` hands them the
run_config as pyproject.toml spells it, and the apps run in whatever folder Flower's local
SuperLink was started from. So the apps anchor every relative path of the run_config under one
documented root: ``$FLSUITE_HOME``, by default ``~/flsuite``. The default study's simulated
sites then live in ``~/flsuite/.flsuite/sites`` and its outputs in ``~/flsuite/outputs/run-<run id>``,
whichever folder the SuperLink started in. Pure: no torch, no flwr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["FLSUITE_HOME_ENV", "PATH_KEYS", "anchored_paths", "flsuite_home"]

FLSUITE_HOME_ENV = "FLSUITE_HOME"
DEFAULT_HOME = "~/flsuite"
# The run_config keys (flat, as flsuite.config.bridge writes them) that name files or folders.
PATH_KEYS = ("output_dir", "sites_dir", "data.csv_path", "registry.path", "registry.signing_key",
             "registry.encryption_key_file")


def flsuite_home(environ: Mapping[str, str] = os.environ) -> Path:
    """The root of relative paths in a run Flower started: $FLSUITE_HOME, else ~/flsuite (absolute)."""
    return Path(environ.get(FLSUITE_HOME_ENV) or DEFAULT_HOME).expanduser().absolute()


def anchored_paths(run_config: Mapping[str, object], *, root: Path, run_id: int | None = None) -> dict[str, str]:
    """The path keys of run_config whose values change: relative ones made absolute under root.

    An empty output_dir becomes root/outputs/run-<run_id> when run_id is given (the folder the
    ServerApp would otherwise create relative to wherever it runs). Absolute paths, empty values
    and keys the run_config lacks are left alone.
    """
    changed: dict[str, str] = {}
    for key in PATH_KEYS:
        value = run_config.get(key)
        if not isinstance(value, str):
            continue
        if not value:
            if key == "output_dir" and run_id is not None:
                changed[key] = str(root / "outputs" / f"run-{run_id}")
            continue
        path = Path(value).expanduser()
        if not path.is_absolute():
            changed[key] = str(root / path)
        elif str(path) != value:  # "~/..." expanded
            changed[key] = str(path)
    return changed
