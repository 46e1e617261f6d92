"""The server-side aggregation strategies a study can choose, all from Flower."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from flsuite.config.schema import FederationConfig
from flsuite.protocol import ARRAYS, CONFIG, NUM_EXAMPLES

FEDAVGM_LEARNING_RATE = 1.0  # Flower's own default for FedAvgM
FEDADAM_LEARNING_RATE = 0.1


def build_strategy(federation: FederationConfig, initial_arrays: ArrayRecord) -> FedAvg:
    """FedAvgM (default), FedAvg, FedProx or FedAdam, each averaging weighted by examples.

    FedAvgM (Hsu et al. 2019) keeps a momentum of the averaged updates at the server: it
    uses only what the coordinator already sees (the securely aggregated, DP-noised
    average), so it costs no privacy, and it moves label-skewed sites' consensus model
    several times further per round than FedAvg (the default study: experiments/README.md).

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
        return FedAdam(eta=federation.server_learning_rate or FEDADAM_LEARNING_RATE, **common)
    if federation.strategy == "fedavgm":
        return FedAvgM(server_learning_rate=federation.server_learning_rate or FEDAVGM_LEARNING_RATE,
                       server_momentum=federation.server_momentum, **common)
    return FedAvg(**common)


def restore_momentum(strategy: FedAvg, previous: ArrayRecord, latest: ArrayRecord) -> None:
    """Give a resumed FedAvgM the momentum it had after publishing ``latest``; other strategies need nothing.

    FedAvgM steps ``latest = previous - lr * momentum``, and every aggregated round is
    published, so the two last published models (or the seeded initial model and the
    first version) give the momentum back exactly: a resumed study continues the same
    optimisation instead of restarting its momentum from zero.
    """
    if not isinstance(strategy, FedAvgM) or not strategy.server_opt:
        return
    strategy.current_arrays = latest
    if strategy.server_momentum > 0:
        strategy.momentum_vector = [
            (np.asarray(old) - np.asarray(new)) / strategy.server_learning_rate
            for old, new in zip(previous.to_numpy_ndarrays(), latest.to_numpy_ndarrays(), strict=True)
        ]
