"""Real federations across processes: the coordinator (SuperLink) and site (SuperNode) commands.

TLS: Flower 1.42 serves its SuperLink through uvicorn and passes only the certificate and
key, so the minimum TLS version cannot be set; Python's default applies (TLS 1.2 or newer).
Measured against a running SuperLink: a default client negotiates TLS 1.3
(TLS_AES_256_GCM_SHA384); a client capped at 1.2 gets TLS 1.2 with ECDHE-ECDSA-AES256-GCM-SHA384.
`tests/integration/test_deployment_tls.py` asserts this.
"""

from flsuite.deployment.config import (
    CoordinatorConfig,
    PrivacyCap,
    SiteConfig,
    TlsFiles,
    load_coordinator_config,
    load_site_config,
)
from flsuite.deployment.coordinator import CoordinatorState, check_coordinator, start_coordinator, stop_coordinator
from flsuite.deployment.errors import CoordinatorUnreachable, DeploymentError
from flsuite.deployment.launch import Connection, LaunchPlan, check_coordinator_answers, plan_launch
from flsuite.deployment.network import Address, probe_tls
from flsuite.deployment.node_config import NODE_CONFIG_KEYS, format_node_config
from flsuite.deployment.site import SiteState, check_site, site_node_config, start_site, stop_site
from flsuite.deployment.submit import submit_study

__all__ = [
    "NODE_CONFIG_KEYS",
    "Address",
    "Connection",
    "CoordinatorConfig",
    "CoordinatorState",
    "CoordinatorUnreachable",
    "DeploymentError",
    "LaunchPlan",
    "PrivacyCap",
    "SiteConfig",
    "SiteState",
    "TlsFiles",
    "check_coordinator",
    "check_coordinator_answers",
    "check_site",
    "format_node_config",
    "load_coordinator_config",
    "load_site_config",
    "plan_launch",
    "probe_tls",
    "site_node_config",
    "start_coordinator",
    "start_site",
    "stop_coordinator",
    "stop_site",
    "submit_study",
]
