"""The keys of a site's node config: the site's own settings, which win over the coordinator's.

A real site's SuperNode carries them (``flsuite site start`` writes them); a simulated
site gets them from ``flsuite.federation.simulated_sites``.
"""

PARTITION_ID = "partition-id"  # set by Flower's simulation for simulated sites
SITE_NAME = "site-name"
DATA_PATH = "data-path"
LABEL_COLUMN = "label-column"
LEDGER_PATH = "ledger-path"
IDENTITY_KEY = "identity-key"
IDENTITIES_FILE = "identities-file"
MAX_EPSILON = "max-epsilon"
DELTA = "delta"
