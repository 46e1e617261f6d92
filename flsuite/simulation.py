"""Run a whole study on this machine with simulated sites, on the engine its config names.

Both engines run the same ServerApp and ClientApp (built by ``flsuite.coordinator`` and
``flsuite.site``; ``server/app.py`` and ``clients/app.py`` name them for Flower) with the
same run_config; only the transport differs. The engines receive the apps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from flsuite import protocol
from flsuite.config import check_inputs, to_run_config
from flsuite.config.schema import StudyConfig
from flsuite.coordinator.app import build_server_app
from flsuite.data.study_data import split_study
from flsuite.errors import ConfigError, StudyAborted
from flsuite.site.app import build_client_app
from flsuite.site.simulated import prepare_simulated_sites


def simulated_node_configs(study: StudyConfig) -> list[dict[str, Any]]:
    """Node configs of the simulated sites, as Flower's simulation gives them."""
    count = study.federation.num_sites
    return [{protocol.PARTITION_ID: index, protocol.NUM_PARTITIONS: count} for index in range(count)]


def run_local_study(
    study: StudyConfig,
    output_dir: Path,
    *,
    server_app: ServerApp | None = None,
    client_app: ClientApp | None = None,
    **grid_options: Any,
) -> dict[str, Any]:
    """Run ``study`` with its outputs in ``output_dir``; returns the summary.

    A study that did not complete returns its summary too (its status says so and its
    ``reasons`` say why): the caller picks the exit code. StudyAborted only when no summary
    was written.

    The apps default to flsuite's coordinator and site. ``grid_options`` (inline engine
    only) are the in-process Grid's test options: ``drop``, ``delay``, ``tamper``, ``wire``.
    """
    if study.engine.name == "deployment":
        raise ConfigError("engine=deployment runs on a real federation: use `flsuite launch --federation NAME`")
    check_inputs(study, output_dir)  # every file the study names, before anything is written
    split_study(study.data, study.federation.num_sites)  # bad data fails here, before any engine starts
    if study.privacy.enabled and study.privacy.secure_rng:
        from flsuite.privacy import require_secure_rng

        require_secure_rng()
    server_app = server_app or build_server_app()
    client_app = client_app or build_client_app()
    sites_dir = Path(study.sites_dir).resolve()
    prepare_simulated_sites(sites_dir, study)  # refuses a delta other than an existing site's
    study = study.model_copy(update={"output_dir": str(output_dir.resolve()), "sites_dir": str(sites_dir)})
    run_config = to_run_config(study)
    summary_path = output_dir / "summary.json"
    before = _stamp(summary_path)  # a summary.json left by an earlier study is not this one's
    try:
        _run_engine(study, server_app, client_app, run_config, grid_options)
    except StudyAborted:
        # The ServerApp raises after writing the outputs of a study that did not complete, so that
        # Flower records a failed run; the caller reads the verdict from the summary it wrote.
        if _stamp(summary_path) in (None, before):
            raise
    if _stamp(summary_path) in (None, before):
        raise StudyAborted(f"the study ended without writing {summary_path}; see the log above")
    return json.loads(summary_path.read_text())


def _run_engine(study: StudyConfig, server_app: ServerApp, client_app: ClientApp, run_config: dict[str, Any],
                grid_options: dict[str, Any]) -> None:
    if study.engine.name == "ray":
        from flsuite.flower import run_ray

        run_ray(
            server_app,
            client_app,
            run_config=run_config,
            num_sites=study.federation.num_sites,
            threads_per_site=study.engine.threads_per_site,
        )
    else:
        from flsuite.flower import run_inline

        grid_options.setdefault("workers", study.engine.parallel_sites)
        run_inline(server_app, client_app, run_config=run_config, node_configs=simulated_node_configs(study), **grid_options)


def _stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None when there is none: outputs are written by rename, so a new file differs."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns
