"""Fixtures shared by the integration tests (pytest finds them; never import them between test modules)."""

from __future__ import annotations

import pytest

from flsuite.coordinator.superlink import flwr_home, write_flower_connection
from flsuite.deployment.network import Address, free_port
from flsuite.deployment.testing import FederationFiles, write_federation


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> FederationFiles:
    """A federation on disk (PKI, configs of a coordinator and 3 sites) whose FLWR_HOME names a
    coordinator address where nothing listens: for `flsuite launch` before anything runs."""
    files = write_federation(tmp_path_factory.mktemp("federation"), sites=("hospital-a", "hospital-b", "hospital-c"))
    coordinator = files.coordinator()
    flwr_home(coordinator).mkdir(parents=True)
    write_flower_connection(flwr_home(coordinator), name=coordinator.federation,
                            address=Address("127.0.0.1", free_port()), ca_certificate=coordinator.tls.ca_certificate)
    return files
