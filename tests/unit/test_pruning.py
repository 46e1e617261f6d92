"""Stragglers and dead sites (issue 14.2): a round closes at its deadline on the replies that
arrived; a site that misses federation.max_missed_rounds rounds in a row is pruned and
recorded; one that misses and returns is not; pruning below min_sites ends the study with a
clear status; a pruned node comes back only through planning. Played on the in-process Grid."""

from __future__ import annotations

import threading

import pytest

from flsuite import protocol
from flsuite.coordinator.pruning import MissedRounds
from flsuite.coordinator.rounds import PlainTrainRound, RoundLoop
from flsuite.coordinator.strategies import build_strategy
from flsuite.coordinator.verdict import study_verdict
from tests.unit.test_round_integrity import grid_of, site, study, trains_sent

HUNG = 19


def run(grid, config, listeners=()):
    import numpy as np
    from flwr.app import Array, ArrayRecord

    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)), "b": Array(np.zeros(1, dtype=np.float32))})
    strategy = build_strategy(config.federation, initial)
    loop = RoundLoop(config, grid, strategy=strategy, initial_arrays=initial, evaluator=None, listeners=list(listeners),
                     train_round=PlainTrainRound(grid, strategy, timeout_s=config.federation.round_timeout_s))
    with grid:
        return loop.run()


def queries_to(grid, node: int) -> int:
    return sum(1 for m in grid.sent if m.metadata.dst_node_id == node and m.metadata.message_type == protocol.QUERY)


def late_in(rounds: set[int]):
    """A delay that makes the hung node's train reply miss the deadline in ``rounds``."""

    def delay(message) -> float:
        if message.metadata.dst_node_id != HUNG or message.metadata.message_type != protocol.TRAIN:
            return 0.0
        return 3600.0 if int(message.content[protocol.CONFIG][protocol.SERVER_ROUND]) in rounds else 0.0

    return delay


def test_a_site_that_hangs_forever_in_a_10_round_study_is_pruned_and_the_study_completes_on_the_others():
    released, entered = threading.Event(), []
    handlers = {11: site("a"), 12: site("b"), 13: site("c"), HUNG: site("z", hang=released, trained=entered)}
    grid = grid_of(handlers, workers=4)
    try:
        result = run(grid, study("federation.round_timeout_s=1", "federation.rounds=10", "federation.max_missed_rounds=3"))
        still_hung = not released.is_set()
    finally:
        released.set()
    assert still_hung and entered == [1, 2, 3]  # asked in three rounds, never again: no later round waits for it
    assert result.status == "completed" and [r.round for r in result.rounds] == list(range(1, 11))
    assert [r.failures for r in result.rounds] == [1, 1, 1] + [0] * 7
    assert [n for _, n in trains_sent(grid)].count(HUNG) == 3
    (pruned,) = result.pruned
    assert (pruned.round, pruned.node_id, pruned.name, pruned.misses) == (3, HUNG, "z", 3)
    assert "missed 3 rounds in a row" in pruned.reason and "federation.max_missed_rounds=3" in pruned.reason
    assert "no valid reply in time (deadline 1 s) to its train request" in pruned.reason


def test_a_site_that_misses_rounds_but_never_max_missed_in_a_row_is_not_pruned():
    handlers = {11: site("a"), 12: site("b"), 13: site("c"), HUNG: site("z")}
    grid = grid_of(handlers, workers=4, delay=late_in({1, 2, 4, 5}))
    result = run(grid, study("federation.round_timeout_s=1", "federation.rounds=6", "federation.max_missed_rounds=3"))
    assert result.status == "completed" and result.pruned == []
    assert [n for _, n in trains_sent(grid)].count(HUNG) == 6  # asked in every round
    assert [len(r.sites) for r in result.rounds] == [3, 3, 4, 3, 3, 4]


def test_pruning_below_min_sites_ends_the_study_with_a_clear_status():
    released = threading.Event()
    handlers = {11: site("a"), 12: site("b"), HUNG: site("z", hang=released)}
    try:
        result = run(grid_of(handlers, workers=3), study("federation.round_timeout_s=1", "federation.num_sites=3", "federation.min_sites=3",
                                                         "federation.rounds=6", "federation.max_missed_rounds=2"))
    finally:
        released.set()
    assert [a["round"] for a in result.aborted_rounds] == [1, 2]  # no quorum while it was asked
    assert result.status == "aborted" and result.message.startswith("round 3: only 2 site(s) can still train")
    assert "federation.min_sites=3" in result.message and "pruned after too many missed rounds: z" in result.message
    verdict = study_verdict(result, rounds_planned=6, rounds_completed=0)
    assert verdict.status == "aborted" and any("pruned" in reason for reason in verdict.reasons)


def test_a_site_silent_to_its_status_query_is_pruned_and_not_asked_every_round():
    released = threading.Event()
    handlers = {11: site("a"), 12: site("b"), 13: site("c"), HUNG: site("z", hang=released)}
    dead = handlers[HUNG]

    def silent(msg, context):  # a dead node: it never answers anything, not even its status
        released.wait()
        return dead(msg, context)

    handlers[HUNG] = silent
    grid = grid_of(handlers, workers=4)
    try:
        result = run(grid, study("federation.round_timeout_s=1", "federation.rounds=5", "federation.max_missed_rounds=2"))
    finally:
        released.set()
    assert queries_to(grid, HUNG) == 2  # rounds 1 and 2, then pruned: it costs no later round its timeout
    assert result.status == "completed" and len(result.rounds) == 5
    (pruned,) = result.pruned
    assert pruned.round == 2 and pruned.name is None and "status request" in pruned.reason


def test_a_node_that_left_the_node_list_misses_its_rounds_and_is_pruned():
    """A SuperNode killed after round 1: once its heartbeats stop, it is no longer listed."""
    handlers = {11: site("a"), 12: site("b"), 13: site("c"), HUNG: site("z")}
    grid = grid_of(handlers, workers=4)

    def kill(record, arrays) -> None:
        if record.round == 1:
            grid.offline.add(HUNG)

    result = run(grid, study("federation.round_timeout_s=1", "federation.rounds=5", "federation.max_missed_rounds=2"), [kill])
    assert result.status == "completed" and [len(r.sites) for r in result.rounds] == [4, 3, 3, 3, 3]
    (pruned,) = result.pruned
    assert (pruned.round, pruned.name) == (3, "z") and "no longer in the federation's node list" in pruned.reason
    assert result.readmitted == []


def test_a_pruned_node_that_reconnects_is_planned_afresh_before_it_trains_again():
    handlers = {11: site("a"), 12: site("b"), 13: site("c"), HUNG: site("z")}
    grid = grid_of(handlers, workers=4, delay=late_in({1, 2}))
    seen: list[int] = []

    def network(record, arrays) -> None:  # after round 2 the node goes offline, after round 3 it reconnects
        seen.append(queries_to(grid, HUNG))
        if record.round == 2:
            grid.offline.add(HUNG)
        elif record.round == 3:
            grid.offline.discard(HUNG)

    result = run(grid, study("federation.round_timeout_s=1", "federation.rounds=5", "federation.max_missed_rounds=2"), [network])
    assert [n for _, n in trains_sent(grid)].count(HUNG) == 4  # rounds 1, 2 (missed), then 4 and 5 after planning
    assert seen == [1, 1, 1, 2, 2]  # a fresh status query in round 4, before it trained again
    assert [p.round for p in result.pruned] == [2]
    assert [(b["round"], b["node_id"]) for b in result.readmitted] == [(4, HUNG)]
    assert [len(r.sites) for r in result.rounds] == [3, 3, 3, 4, 4]


def test_a_pruned_node_that_stays_listed_is_never_asked_again():
    tracker = MissedRounds(2)
    assert tracker.update(1, [1, 2], [2]) == []
    (pruned,) = tracker.update(2, [1, 2], [2])
    assert pruned.node_id == 2 and tracker.held_out() == {2}
    assert tracker.returning(3, [1, 2]) == [] and tracker.returning(4, [1, 2]) == []  # never left the list: stays pruned
    assert tracker.held_out() == {2}


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_missed_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_missed"):
        MissedRounds(bad)


def test_the_config_refuses_max_missed_rounds_below_one():
    from flsuite.config import compose_study
    from flsuite.errors import UserError

    with pytest.raises(UserError, match="max_missed_rounds"):
        compose_study(["federation.max_missed_rounds=0"])


def test_a_secure_stage_deadline_is_the_round_deadline_unless_set():
    from flsuite.config import compose_study

    assert compose_study(["federation.round_timeout_s=42"]).secagg.stage_deadline_s(42) == 42.0
    assert compose_study(["secagg.stage_timeout_s=7"]).secagg.stage_deadline_s(42) == 7.0


def test_a_secure_round_holds_each_stage_to_the_round_deadline():
    from flsuite.config import compose_study
    from flsuite.coordinator.secure_round import SecureTrainRound
    from flsuite.coordinator.study import train_round

    config = compose_study(["federation.round_timeout_s=42", "secagg.enabled=true"])
    rounds = train_round(config, grid_of({11: site("a")}), strategy=None)  # type: ignore[arg-type]
    assert isinstance(rounds, SecureTrainRound) and rounds.timeout_s == 42.0


@pytest.mark.slow  # DP planning for 4 sites and 5 rounds: about 35 s here
def test_a_pruned_dp_site_that_reconnects_is_planned_again_before_it_trains():
    """In a DP study a pruned site that reconnects with its old node id is re-admitted only through planning:
    a fresh status query and a new planning event, then it trains under that plan."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from flwr.app import Array, ArrayRecord

    from flsuite.coordinator.admission import DpAdmission, HeadVerifier
    from flsuite.coordinator.study import train_round
    from tests.unit.test_dp_admission import dp_study, federation, sites_of

    with tempfile.TemporaryDirectory() as folder:
        tmp_path = Path(folder)
        sites = sites_of(tmp_path, 4)
        study_config = dp_study(tmp_path, "none", "federation.rounds=5", "federation.max_missed_rounds=2")
        grid = federation(tmp_path, study_config, sites)
        grid.drop = lambda m: (m.metadata.dst_node_id == 103 and m.metadata.message_type == protocol.TRAIN
                               and int(m.content[protocol.CONFIG][protocol.SERVER_ROUND]) <= 2)
        initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
        strategy = build_strategy(study_config.federation, initial)
        queried: list[int] = []

        def network(record, arrays) -> None:
            queried.append(queries_to(grid, 103))
            if record.round == 2:
                grid.offline.add(103)
            elif record.round == 3:
                grid.offline.discard(103)

        with grid:
            admission = DpAdmission(study_config, grid, verifier=HeadVerifier.for_study(study_config))
            admission.plan()
            loop = RoundLoop(study_config, grid, strategy=strategy, initial_arrays=initial, evaluator=None, listeners=[network],
                             train_round=train_round(study_config, grid, strategy, reply_check=admission.check_reply),
                             site_configs=admission.site_configs, admit=admission.admit, declared=admission.declared,
                             forget=admission.forget, site_names=admission.site_names)
            result = loop.run()
    assert result.status == "completed" and [len(r.sites) for r in result.rounds] == [3, 3, 3, 4, 4]
    (pruned,) = result.pruned
    assert (pruned.round, pruned.name) == (2, "site-3")
    planned = [(e["round"], e["node_id"]) for e in admission.events if e["action"] == "planned" and e["site"] == "site-3"]
    assert planned == [(0, 103), (4, 103)]  # planned before round 1, and again on its return
    assert queried == [1, 1, 1, 2, 2] and sites[103].trained == [1, 2, 4, 5]
