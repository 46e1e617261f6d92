"""The privacy status of simulated sites, read straight from their folders (no Flower needed).

``flsuite privacy plan`` uses it to print the coordinator's plan for a simulated study
without training: the same partitions, the same site configs and ledgers, the same planner.
A site whose folder does not exist yet is shown as it would be created: the study's cap
and delta, nothing spent.
"""

from __future__ import annotations

from pathlib import Path

from flsuite.config.schema import StudyConfig
from flsuite.data.study_data import split_study
from flsuite.protocol import SiteStatus
from flsuite.site.evaluation import training_part
from flsuite.site.privacy_guard import site_privacy
from flsuite.site.simulated import (
    SITE_CONFIG_FILE,
    new_site_config,
    simulated_node_config,
    simulated_site_name,
    site_folder,
)


def simulated_statuses(study: StudyConfig) -> dict[int, SiteStatus]:
    """What each simulated site would answer to the coordinator's status query, keyed by partition id."""
    sites_dir = Path(study.sites_dir).resolve()
    data = split_study(study.data, study.federation.num_sites)
    statuses = {}
    for index, site_data in enumerate(data.sites):
        name = simulated_site_name(index)
        site_data, _ = training_part(study, name, site_data)  # a site declares and plans with what it trains on
        if not (site_folder(sites_dir, name) / SITE_CONFIG_FILE).exists():
            new = new_site_config(study, index)
            statuses[index] = SiteStatus(
                name=name, records=len(site_data), max_epsilon=new.max_epsilon, delta=new.delta, spent_epsilon=0.0
            )
            continue
        node = simulated_node_config(sites_dir, index, study=study)
        statuses[index] = site_privacy(node, site=name, labels=site_data.labels, study=study).status()
    return statuses
