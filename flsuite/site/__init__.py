"""Everything a site does: answer the coordinator (train, evaluate, status), guard its
privacy budget, take part in secure aggregation, and run as a deployed node.

Modules: ``handlers`` (requests), ``privacy_guard`` (check, train, record), ``secure_aggregation``
(the ClientApp mod), ``simulated`` and ``simulated_status`` (simulated sites' folders),
``ledger_admin`` (a ledger's genesis anchor and the operator's reset),
``node`` and ``node_config`` (the deployed SuperNode process), ``app`` (the ClientApp).
Names load on first use, so the node commands do not import torch.
"""

from flsuite.lazy import lazy_exports

_EXPORTS = {
    "build_client_app": "app",
    "handle_evaluate": "handlers",
    "handle_query": "handlers",
    "handle_train": "handlers",
    "SitePrivacy": "privacy_guard",
    "site_privacy": "privacy_guard",
    "secagg_mod": "secure_aggregation",
    "prepare_simulated_sites": "simulated",
    "read_site_config": "simulated",
    "reset_simulated_ledger": "simulated",
    "simulated_node_config": "simulated",
    "simulated_site_mod": "simulated",
    "simulated_statuses": "simulated_status",
    "LedgerReset": "ledger_admin",
    "ensure_site_ledger": "ledger_admin",
    "reset_ledger": "ledger_admin",
    "SiteState": "node",
    "check_site": "node",
    "site_node_config": "node",
    "start_site": "node",
    "stop_site": "node",
    "format_node_config": "node_config",
    "build_sites": "testing",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
