"""Run a whole study on this machine with simulated sites, on the engine its config names.

Both engines run the same ServerApp and ClientApp (built by ``flsuite.coordinator`` and
``flsuite.site``; ``server/app.py`` and ``clients/app.py`` name them for Flower) with the
same run_config; only the transport differs. The engines receive the apps.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from threadpoolctl import threadpool_limits

from flsuite import protocol
from flsuite.config import check_inputs, to_run_config
from flsuite.config.schema import StudyConfig
from flsuite.coordinator import progress
from flsuite.coordinator.app import build_server_app
from flsuite.data.study_data import split_study
from flsuite.errors import ConfigError, StudyAborted
from flsuite.heap import freeze_more, frozen_heap
from flsuite.site.simulated import prepare_simulated_sites

#: The site's ClientApp as worker processes import it.
CLIENT_APP = "flsuite.site.app:build_client_app"
#: What a site worker runs once at start, while the coordinator plans (``warm_site_worker``).
WARM_SITE_WORKER = "flsuite.simulation:warm_site_worker"


def simulated_node_configs(study: StudyConfig) -> list[dict[str, Any]]:
    """Node configs of the simulated sites, as Flower's simulation gives them."""
    count = study.federation.num_sites
    return [{protocol.PARTITION_ID: index, protocol.NUM_PARTITIONS: count} for index in range(count)]


def run_local_study(
    study: StudyConfig,
    output_dir: Path,
    *,
    server_app: ServerApp | None = None,
    client_app: ClientApp | str | None = None,
    **grid_options: Any,
) -> dict[str, Any]:
    """Run ``study`` with its outputs in ``output_dir``; returns the summary.

    A study that did not complete returns its summary too (its status says so and its
    ``reasons`` say why): the caller picks the exit code. StudyAborted only when no summary
    was written.

    The apps default to flsuite's coordinator and site. ``client_app`` is a ClientApp, or an
    importable reference to one ("package.module:factory"): worker processes
    (``engine.site_workers=processes`` with ``engine.parallel_sites`` > 1) need the reference.
    ``grid_options`` (inline engine only) are the in-process Grid's test options: ``drop``,
    ``delay``, ``tamper``, ``wire``, ``workers``.
    """
    if study.engine.name == "deployment":
        raise ConfigError("engine=deployment runs on a real federation: use `flsuite launch --federation NAME`")
    site_workers = _site_workers(study, grid_options)
    reference = client_app if isinstance(client_app, str) else CLIENT_APP if client_app is None else None
    if site_workers > 1 and reference is None:
        raise ConfigError(
            f"engine.site_workers=processes runs the sites in {site_workers} worker processes, which import the "
            f"ClientApp by reference: pass client_app as 'package.module:factory' instead of a "
            f"{type(client_app).__name__} object, or set engine.site_workers=threads (or engine.parallel_sites=1)"
        )
    check_inputs(study, output_dir)  # every file the study names, before anything is written
    split = split_study(study.data, study.federation.num_sites)  # bad data fails here, before any engine starts
    if study.privacy.enabled and study.privacy.secure_rng:
        from flsuite.privacy import require_secure_rng

        require_secure_rng()
    server_app = server_app or build_server_app()
    from flsuite.flower import FIRST_NODE_ID, SiteProcessPool, load_client_app

    client_app = load_client_app(reference) if reference is not None else client_app
    summary_path = output_dir / "summary.json"
    with ExitStack() as stack:
        # numpy's OpenBLAS starts a thread per core for every dot product the coordinator takes (an update's norm):
        # on a 100k-parameter model that is 5x the CPU of one thread, spinning on the cores the sites train on.
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        # What is alive now lives as long as the study: out of the collector's full passes until it ends,
        # and so is what its first round (the first a resumed study runs) imported (``flsuite.heap``).
        stack.enter_context(frozen_heap())
        after_first_round = _once(freeze_more)
        progress.subscribe(after_first_round)
        stack.callback(progress.unsubscribe, after_first_round)
        if site_workers > 1:
            # Started now, so that the workers' start-up overlaps the coordinator's preparation and
            # planning; stopped by PID when the study ends, however it ends.
            # Each site stays on one worker (its caches warm there), sites balanced by their records; a worker
            # that has run one message for a whole round's deadline while another waits for it is replaced.
            pool = SiteProcessPool(reference, workers=site_workers, threads=study.engine.threads_per_site,
                                   preload=("flsuite.site.handlers",), warm=(WARM_SITE_WORKER, study.model_dump_json()),
                                   stuck_after_s=max(study.federation.round_timeout_s, study.secagg.stage_timeout_s or 0.0))
            pool.assign({FIRST_NODE_ID + index: float(len(site.labels)) for index, site in enumerate(split.sites)})
            stack.enter_context(pool)
            # The pool queues each site's messages on its worker: the grid may hand it every site's message at once.
            grid_options = {**grid_options, "workers": max(site_workers, study.federation.num_sites)}
            client_app = pool
        sites_dir = Path(study.sites_dir).resolve()
        prepare_simulated_sites(sites_dir, study)  # refuses a delta other than an existing site's
        study = study.model_copy(update={"output_dir": str(output_dir.resolve()), "sites_dir": str(sites_dir)})
        run_config = to_run_config(study)
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


def _once(action: Callable[[], None]) -> Callable[[Any], None]:
    """A progress listener that runs ``action`` at the first round it hears of, and never again."""
    done = threading.Event()

    def listener(event: Any) -> None:
        if not done.is_set():
            done.set()
            action()

    return listener


def warm_site_worker(study_json: str) -> None:
    """A site worker's head start: the imports and the study's data that its first message would otherwise pay.

    Torch imports its compiler at the first optimizer, Opacus at the first DP-SGD step; the study's
    source data is loaded (and cached) as the sites read it. Nothing the sites' results depend on.
    """
    import importlib

    study = StudyConfig.model_validate_json(study_json)
    for module in ("torch._dynamo", *(("opacus",) if study.privacy.enabled else ())):
        importlib.import_module(module)
    split_study(study.data, study.federation.num_sites)


def _site_workers(study: StudyConfig, grid_options: dict[str, Any]) -> int:
    """How many worker processes run the sites: 0 when they run in this process (threads or one by one).

    At most one per site and one per ``threads_per_site`` cores of this machine.
    """
    wanted = grid_options.get("workers", study.engine.parallel_sites)
    if study.engine.name != "inline" or study.engine.site_workers != "processes" or wanted <= 1:
        return 0
    cores = os.cpu_count() or 1
    return max(1, min(wanted, study.federation.num_sites, cores // study.engine.threads_per_site))


def _run_engine(study: StudyConfig, server_app: ServerApp, client_app: Any, run_config: dict[str, Any],
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
