"""Run a whole study on this machine, on the engine its config names.

Both engines run the same ServerApp and ClientApp (``server/app.py``,
``clients/app.py``) with the same run_config; only the transport differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flsuite.config.bridge import to_run_config
from flsuite.config.schema import StudyConfig
from flsuite.data.study_data import split_study
from flsuite.errors import ConfigError, StudyAborted
from flsuite.federation.simulated_sites import prepare_simulated_sites


def simulated_node_configs(study: StudyConfig) -> list[dict[str, Any]]:
    """Node configs of the simulated sites, as Flower's simulation gives them."""
    count = study.federation.num_sites
    return [{"partition-id": index, "num-partitions": count} for index in range(count)]


def run_local_study(study: StudyConfig, output_dir: Path, *, drop: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Run ``study`` with its outputs in ``output_dir``; returns the summary.

    ``drop`` (inline engine only) loses the messages it returns true for: failure tests
    use it to make a site fall silent at a chosen stage.
    """
    from clients.app import app as client_app
    from server.app import app as server_app

    if study.engine.name == "deployment":
        raise ConfigError("engine=deployment runs on a real federation: use `flsuite launch --federation NAME`")
    split_study(study.data, study.federation.num_sites)  # bad data fails here, before any engine starts
    if study.privacy.enabled and study.privacy.secure_rng:
        from flsuite.privacy import require_secure_rng

        require_secure_rng()
    sites_dir = Path(study.sites_dir).resolve()
    prepare_simulated_sites(sites_dir, study.federation.num_sites)
    study = study.model_copy(update={"output_dir": str(output_dir.resolve()), "sites_dir": str(sites_dir)})
    run_config = to_run_config(study)
    if study.engine.name == "ray":
        from flsuite.engines.ray import run_ray

        run_ray(
            server_app,
            client_app,
            run_config=run_config,
            num_sites=study.federation.num_sites,
            threads_per_site=study.engine.threads_per_site,
        )
    else:
        from flsuite.engines.inline import run_inline

        run_inline(server_app, client_app, run_config=run_config, node_configs=simulated_node_configs(study), drop=drop)
    summary_path = output_dir / "summary.json"
    if not summary_path.is_file():
        raise StudyAborted(f"the study ended without writing {summary_path}; see the log above")
    return json.loads(summary_path.read_text())
