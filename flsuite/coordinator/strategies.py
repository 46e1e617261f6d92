"""The server-side aggregation strategies a study can choose, all from Flower, and the one
averaged reply a plain round hands them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from flsuite.config.schema import FederationConfig
from flsuite.models import array_values, record_of
from flsuite.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, TRAIN

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


def averaged_reply(replies: Sequence[Message]) -> Message:
    """One train reply carrying the example-weighted average of ``replies``' models, and their total weight.

    A secure round hands the strategy one such reply (the unmasked average); a plain round
    does the same with this. The sums are Flower's ``aggregate_arrayrecords``' own, in its
    order (each array times its share of the total weight, added reply by reply), so the
    strategy's result from this one reply (times a share of exactly 1.0) is bit for bit what it
    computes from the replies themselves; the arrays are decoded by ``array_values`` instead
    of numpy's header parser (tests/unit/test_averaged_reply.py). Each reply carries its model
    as ArrayRecord ``ARRAYS`` and its weight as ``NUM_EXAMPLES`` in MetricRecord ``METRICS``,
    with the same array names (the round's checks saw to that).
    """
    if not replies:
        raise ValueError("no replies to average")
    weights = [float(reply.content.metric_records[METRICS][NUM_EXAMPLES]) for reply in replies]  # type: ignore[arg-type]
    total = sum(weights)
    summed: dict[str, np.ndarray] = {}
    for reply, weight in zip(replies, weights, strict=True):
        share = weight / total
        for key, array in reply.content.array_records[ARRAYS].items():
            if key in summed:
                summed[key] += array_values(array) * share
            else:
                summed[key] = array_values(array) * share
    content = RecordDict({ARRAYS: record_of({key: np.asarray(value) for key, value in summed.items()}),
                          METRICS: MetricRecord({NUM_EXAMPLES: total})})
    return Message(content, dst_node_id=0, message_type=TRAIN)
