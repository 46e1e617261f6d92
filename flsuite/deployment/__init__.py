"""Plumbing shared by the deployed coordinator and sites: their YAML configs, processes and network.

The SuperLink lives in ``flsuite.coordinator.superlink``, the SuperNode in ``flsuite.site.node``.

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
from flsuite.deployment.foreground import stay_in_foreground
from flsuite.deployment.network import Address, ensure_port_free, free_port, parse_address, probe_tls
from flsuite.deployment.processes import (
    ProcessFiles,
    descendants,
    flower_environment,
    flower_executable,
    log_tail,
    start_process,
    stop_process,
    terminate,
    wait_for,
)

__all__ = [
    "Address",
    "CoordinatorConfig",
    "PrivacyCap",
    "ProcessFiles",
    "SiteConfig",
    "TlsFiles",
    "descendants",
    "ensure_port_free",
    "flower_environment",
    "flower_executable",
    "free_port",
    "load_coordinator_config",
    "load_site_config",
    "log_tail",
    "parse_address",
    "probe_tls",
    "start_process",
    "stay_in_foreground",
    "stop_process",
    "terminate",
    "wait_for",
]
