"""averaged_reply: the plain round's one averaged reply gives the strategy bit for bit what the replies would."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from flsuite.coordinator.strategies import averaged_reply
from flsuite.flower.grid import server_task_identity
from flsuite.protocol import ARRAYS, METRICS, NUM_EXAMPLES, TRAIN


def _replies(seed: int, counts: list[int]) -> list[Message]:
    rng = np.random.default_rng(seed)
    replies = []
    for node, count in enumerate(counts, start=1):
        arrays = ArrayRecord({"fc.weight": Array(rng.normal(size=(7, 5)).astype(np.float32)),
                              "fc.bias": Array(rng.normal(size=7).astype(np.float32)),
                              "scale": Array(rng.normal(size=(3,)))})  # float64
        content = RecordDict({ARRAYS: arrays, METRICS: MetricRecord({NUM_EXAMPLES: count})})
        replies.append(Message(content, dst_node_id=node, message_type=TRAIN))
    return replies


@pytest.mark.parametrize("counts", [[1], [3, 3], [17, 250, 1, 64, 9], [5, 7, 11, 13, 17, 19, 23, 29, 31, 37]])
def test_same_bits_as_flowers_average(counts: list[int]) -> None:
    with server_task_identity(1):
        replies = _replies(len(counts), counts)
        ours = averaged_reply(replies)
        theirs = aggregate_arrayrecords([reply.content for reply in replies], NUM_EXAMPLES)
        again = aggregate_arrayrecords([ours.content], NUM_EXAMPLES)  # what the strategy does with our one reply
    assert list(again) == list(theirs)
    for key in theirs:
        assert again[key].dtype == theirs[key].dtype and again[key].shape == theirs[key].shape
        assert again[key].numpy().tobytes() == theirs[key].numpy().tobytes(), key
    assert ours.content.metric_records[METRICS][NUM_EXAMPLES] == float(sum(counts))


@pytest.mark.parametrize("strategy", [FedAvg, FedAvgM, FedAdam], ids=lambda s: s.__name__)
def test_strategies_step_alike(strategy: type[FedAvg]) -> None:
    """Server momentum and server optimisers see the same average either way."""
    with server_task_identity(1):
        initial = _replies(99, [1])[0].content[ARRAYS]
        results = []
        for averaged in (False, True):
            chosen = strategy(weighted_by_key=NUM_EXAMPLES, **({"server_momentum": 0.9} if strategy is FedAvgM else {}))
            if isinstance(chosen, FedAdam):  # FedOpt keeps numpy arrays (configure_train sets them)
                chosen.current_arrays = {key: array.numpy() for key, array in initial.items()}
            elif isinstance(chosen, FedAvgM):
                chosen.current_arrays = initial.copy()
            got = []
            for server_round in (1, 2):
                replies = _replies(server_round, [4, 9, 2])
                arrays, _ = chosen.aggregate_train(server_round, [averaged_reply(replies)] if averaged else replies)
                got.append({key: arrays[key].numpy().tobytes() for key in arrays})
            results.append(got)
    assert results[0] == results[1]


def test_mixed_dtypes_key_orders_and_float_weights_match_flower() -> None:
    """A 0-d integer buffer (a step count), float16, replies listing their arrays in different orders, and
    fractional weights (a declared count is an int, but the arithmetic must not depend on it)."""
    rng = np.random.default_rng(7)
    replies = []
    with server_task_identity(1):
        for node, (count, reverse) in enumerate([(2.5, False), (7, True), (1, False)], start=1):
            arrays = {"steps": Array(np.array(node * 3, dtype=np.int64)), "h": Array(rng.normal(size=4).astype(np.float16)),
                      "w": Array(rng.normal(size=(2, 2)).astype(np.float32))}
            ordered = dict(reversed(list(arrays.items()))) if reverse else arrays
            replies.append(Message(RecordDict({ARRAYS: ArrayRecord(ordered), METRICS: MetricRecord({NUM_EXAMPLES: count})}),
                                   dst_node_id=node, message_type=TRAIN))
        theirs = aggregate_arrayrecords([reply.content for reply in replies], NUM_EXAMPLES)
        again = aggregate_arrayrecords([averaged_reply(replies).content], NUM_EXAMPLES)
    assert list(again) == list(theirs)
    for key in theirs:
        assert again[key].dtype == theirs[key].dtype and again[key].numpy().tobytes() == theirs[key].numpy().tobytes(), key


def test_no_replies_is_an_error() -> None:
    with pytest.raises(ValueError, match="no replies"):
        averaged_reply([])
