"""The privacy status of simulated sites, read straight from their folders (no Flower needed).

``flsuite privacy plan`` uses it to print the coordinator's plan for a simulated study
without training: the same partitions, the same ledgers, the same planner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flsuite.config.schema import StudyConfig
from flsuite.data.study_data import split_study
from flsuite.federation.simulated_sites import simulated_node_config, simulated_site_name
from flsuite.federation.site_privacy import site_privacy


def simulated_statuses(study: StudyConfig) -> dict[int, dict[str, Any]]:
    """What each simulated site would answer to the coordinator's status query, keyed by partition id."""
    sites_dir = Path(study.sites_dir).resolve()
    data = split_study(study.data, study.federation.num_sites)
    statuses = {}
    for index, site_data in enumerate(data.sites):
        name = simulated_site_name(index)
        guard = site_privacy(
            simulated_node_config(sites_dir, index), site=name, features=site_data.features, labels=site_data.labels, study=study
        )
        statuses[index] = {"name": name, **guard.status()}
    return statuses
