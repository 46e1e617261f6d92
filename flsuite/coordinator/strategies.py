"""The server-side aggregation strategies a study can choose, all from Flower."""

from __future__ import annotations

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from flsuite.config.schema import FederationConfig
from flsuite.protocol import ARRAYS, CONFIG, NUM_EXAMPLES


def build_strategy(federation: FederationConfig, initial_arrays: ArrayRecord) -> FedAvg:
    """FedAvg weighted by examples (default), FedProx or FedAdam.

    flsuite selects the cohort itself (to leave out sites that refused), so the strategy
    is asked to train every node it is shown.
    """
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=NUM_EXAMPLES,
        arrayrecord_key=ARRAYS,
        configrecord_key=CONFIG,
    )
    if federation.strategy == "fedprox":
        return FedProx(proximal_mu=federation.proximal_mu, **common)
    if federation.strategy == "fedadam":
        return FedAdam(eta=federation.server_learning_rate, **common)
    return FedAvg(**common)
