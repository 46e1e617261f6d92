"""The privacy status of simulated sites, read straight from their folders (no Flower needed).

``flsuite privacy plan`` uses it to print the coordinator's plan for a simulated study
without training: the same partitions, the same ledgers, the same planner.
"""

from __future__ import annotations

from pathlib import Path

from flsuite.config.schema import StudyConfig
from flsuite.data.study_data import split_study
from flsuite.protocol import SiteStatus
from flsuite.site.privacy_guard import site_privacy
from flsuite.site.simulated import simulated_node_config, simulated_site_name


def simulated_statuses(study: StudyConfig) -> dict[int, SiteStatus]:
    """What each simulated site would answer to the coordinator's status query, keyed by partition id."""
    sites_dir = Path(study.sites_dir).resolve()
    data = split_study(study.data, study.federation.num_sites)
    statuses = {}
    for index, site_data in enumerate(data.sites):
        name = simulated_site_name(index)
        guard = site_privacy(
            simulated_node_config(sites_dir, index), site=name, features=site_data.features, labels=site_data.labels, study=study
        )
        statuses[index] = guard.status()
    return statuses
