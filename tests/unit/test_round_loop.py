"""The coordinator's round loop on the in-process Grid, with sites played by small handlers:
cohorts, weighted averaging, typed refusals, failures and the quorum."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.coordinator.cohort import choose_cohort
from flsuite.coordinator.rounds import PlainTrainRound, RoundLoop
from flsuite.coordinator.strategies import build_strategy, restore_momentum
from flsuite.flower import InProcessGrid, new_run

NODES = [11, 12, 13, 14]


def site(name: str, *, shift: float, examples: int, refuse_from_round: int | None = None, crash: bool = False):
    """A site that declares ``examples`` records in its status and adds ``shift`` to every weight,
    or refuses (budget) from a given round on."""

    def handler(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == protocol.QUERY:
            status = protocol.SiteStatus(name=name, records=examples)
            return Message(RecordDict({protocol.SITE: ConfigRecord(status.to_record())}), reply_to=msg)
        server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
        if crash:
            raise RuntimeError("disk on fire")
        if refuse_from_round is not None and server_round >= refuse_from_round:
            refusal = protocol.Refusal(kind="budget-exhausted", site=name, message="cap reached", remaining_epsilon=0.1)
            return Message(RecordDict({protocol.REFUSAL: ConfigRecord(refusal.to_record())}), reply_to=msg)
        arrays = msg.content[protocol.ARRAYS]
        trained = ArrayRecord({key: Array(arrays[key].numpy() + shift) for key in arrays})
        status = protocol.SiteStatus(name=name, records=examples)
        return Message(
            RecordDict(
                {
                    protocol.ARRAYS: trained,
                    protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: examples, protocol.TRAIN_LOSS: 0.5}),
                    protocol.SITE: ConfigRecord(status.to_record()),
                }
            ),
            reply_to=msg,
        )

    return handler


def study(*overrides: str):
    return compose_study(["privacy=none", "secagg=none", "registry.enabled=false", "federation.num_sites=4", *overrides])


def loop(grid: InProcessGrid, config, listeners=None) -> RoundLoop:
    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    strategy = build_strategy(config.federation, initial)
    return RoundLoop(
        config,
        grid,
        strategy=strategy,
        train_round=PlainTrainRound(grid, strategy, timeout_s=5.0),
        initial_arrays=initial,
        evaluator=None,
        listeners=listeners,
    )


def grid_of(handlers: dict) -> InProcessGrid:
    contexts = {node: Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={}) for node in handlers}
    return InProcessGrid(handlers, contexts, run=new_run(1), wire=True)


def test_each_round_averages_the_sites_updates_weighted_by_examples():
    grid = grid_of({11: site("a", shift=1.0, examples=10), 12: site("b", shift=4.0, examples=30)})
    with grid:
        result = loop(grid, study("federation.rounds=2", "federation.min_sites=2", "federation.strategy=fedavg")).run()
    assert result.status == "completed" and [r.round for r in result.rounds] == [1, 2]
    # each round moves every weight by (10*1 + 30*4)/40 = 3.25
    np.testing.assert_allclose(result.arrays["w"].numpy(), [6.5, 6.5, 6.5], rtol=1e-6)
    assert [s.name for s in result.rounds[0].sites] == ["a", "b"]


def test_the_default_fedavgm_carries_momentum_from_the_averaged_updates_only():
    grid = grid_of({11: site("a", shift=1.0, examples=10), 12: site("b", shift=4.0, examples=30)})
    with grid:
        result = loop(grid, study("federation.rounds=3", "federation.min_sites=2")).run()
    # the averaged update is 3.25 each round; momentum 0.9 makes the steps 3.25, 1.9 x 3.25, 2.71 x 3.25
    np.testing.assert_allclose(result.arrays["w"].numpy(), [3.25 * (1 + 1.9 + 2.71)] * 3, rtol=1e-5)


def test_a_resumed_fedavgm_takes_the_step_the_uninterrupted_study_takes():
    handlers = {11: site("a", shift=1.0, examples=10), 12: site("b", shift=4.0, examples=30)}

    def run(rounds: int, start: ArrayRecord | None = None, previous: ArrayRecord | None = None) -> ArrayRecord:
        config = study(f"federation.rounds={rounds}", "federation.min_sites=2", "federation.server_learning_rate=0.5")
        grid = grid_of(handlers)
        with grid:
            if start is None:
                return loop(grid, config).run().arrays
            strategy = build_strategy(config.federation, start)
            if previous is not None:
                restore_momentum(strategy, previous, start)
            return RoundLoop(config, grid, strategy=strategy, train_round=PlainTrainRound(grid, strategy, timeout_s=5.0),
                             initial_arrays=start, evaluator=None).run().arrays

    uninterrupted = run(3)["w"].numpy()
    after_1, after_2 = run(1), run(2)
    np.testing.assert_allclose(run(1, after_2, previous=after_1)["w"].numpy(), uninterrupted, rtol=1e-5)
    # the attack on the promise: a resume that restarts the momentum takes a shorter third step
    assert not np.allclose(run(1, after_2)["w"].numpy(), uninterrupted, rtol=1e-3)


def test_a_site_that_refuses_is_recorded_and_never_asked_again():
    asked = []

    def counting(handler):
        def wrapped(msg, context):
            if msg.metadata.message_type == protocol.TRAIN:
                asked.append((int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND]), context.node_id))
            return handler(msg, context)

        return wrapped

    handlers = {
        11: counting(site("a", shift=1.0, examples=10)),
        12: counting(site("b", shift=1.0, examples=10)),
        13: counting(site("c", shift=1.0, examples=10, refuse_from_round=2)),
    }
    grid = grid_of(handlers)
    with grid:
        result = loop(grid, study("federation.rounds=3", "federation.min_sites=2")).run()
    assert result.status == "completed"
    assert [(r.round, r.name, r.refusal.kind) for r in result.refusals] == [(2, "c", "budget-exhausted")]
    assert (3, 13) not in asked and (2, 13) in asked
    assert [len(r.sites) for r in result.rounds] == [3, 2, 2]


def test_the_study_ends_aborted_when_fewer_sites_than_the_quorum_remain():
    handlers = {
        11: site("a", shift=1.0, examples=10),
        12: site("b", shift=1.0, examples=10, refuse_from_round=2),
        13: site("c", shift=1.0, examples=10, refuse_from_round=2),
    }
    grid = grid_of(handlers)
    with grid:
        result = loop(grid, study("federation.rounds=4", "federation.min_sites=2")).run()
    assert result.status == "aborted" and "min_sites=2" in result.message
    # round 2 had one valid reply (site a), fewer than min_sites=2: nothing published; round 3 could not start
    assert [r.round for r in result.rounds] == [1]
    (aborted,) = result.aborted_rounds
    assert aborted["round"] == 2 and "1 valid reply" in aborted["reason"] and "min_sites=2" in aborted["reason"]


def test_a_crashing_site_is_a_failure_and_the_others_carry_the_round():
    grid = grid_of({11: site("a", shift=2.0, examples=10), 12: site("b", shift=1.0, examples=10, crash=True)})
    with grid:
        result = loop(grid, study("federation.rounds=1", "federation.min_sites=1")).run()
    (record,) = result.rounds
    assert record.failures == 1 and [s.name for s in record.sites] == ["a"]
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2.0, 2.0, 2.0])


def test_a_malformed_refusal_counts_as_a_failure_not_a_refusal():
    def liar(msg, context):
        if msg.metadata.message_type == protocol.QUERY:
            return Message(RecordDict({protocol.SITE: ConfigRecord(protocol.SiteStatus(name="x", records=10).to_record())}), reply_to=msg)
        return Message(RecordDict({protocol.REFUSAL: ConfigRecord({"kind": "free-pass", "site": "x", "message": ""})}), reply_to=msg)

    grid = grid_of({11: site("a", shift=1.0, examples=10), 12: liar})
    with grid:
        result = loop(grid, study("federation.rounds=1", "federation.min_sites=1")).run()
    assert result.refusals == [] and result.rounds[0].failures == 1


# -- choose_cohort --------------------------------------------------------------------------------


def test_the_cohort_is_everyone_at_fraction_one_and_none_below_the_minimum():
    assert choose_cohort([3, 1, 2], fraction=1.0, minimum=2, seed=0, server_round=1) == [1, 2, 3]
    assert choose_cohort([1], fraction=1.0, minimum=2, seed=0, server_round=1) is None


@given(
    st.sets(st.integers(0, 10_000), min_size=1, max_size=40),
    st.floats(min_value=0.01, max_value=1.0),
    st.integers(1, 40),
    st.integers(0, 2**31),
    st.integers(1, 100),
)
def test_the_cohort_is_a_sorted_reproducible_sample_of_at_least_the_minimum(pool, fraction, minimum, seed, server_round):
    cohort = choose_cohort(pool, fraction=fraction, minimum=minimum, seed=seed, server_round=server_round)
    if len(pool) < minimum:
        assert cohort is None
        return
    assert cohort == sorted(cohort) and set(cohort) <= pool and len(set(cohort)) == len(cohort)
    assert len(cohort) == min(len(pool), max(minimum, int(len(pool) * fraction)))
    assert cohort == choose_cohort(sorted(pool, reverse=True), fraction=fraction, minimum=minimum, seed=seed, server_round=server_round)


def test_cohorts_differ_between_rounds_and_seeds():
    pool = list(range(100))
    draws = {tuple(choose_cohort(pool, fraction=0.1, minimum=1, seed=seed, server_round=r)) for seed in (0, 1) for r in (1, 2)}
    assert len(draws) == 4


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_the_loop_sends_training_only_to_the_chosen_cohort(fraction):
    handlers = {node: site(f"s{node}", shift=1.0, examples=10) for node in NODES}
    grid = grid_of(handlers)
    with grid:
        loop(grid, study("federation.rounds=2", "federation.min_sites=2", f"federation.fraction_sites={fraction}")).run()
    for server_round in (1, 2):
        sent = sorted(
            m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == protocol.TRAIN and int(m.content[protocol.CONFIG][protocol.SERVER_ROUND]) == server_round
        )
        assert sent == choose_cohort(NODES, fraction=fraction, minimum=2, seed=0, server_round=server_round)
