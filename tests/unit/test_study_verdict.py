"""How a study ended: "completed" only when every planned round completed and none aborted;
every other ending names each reason in plain words (no traceback)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flsuite import protocol
from flsuite.coordinator.app import raise_unless_completed
from flsuite.coordinator.rounds import StudyResult
from flsuite.coordinator.verdict import FailureWatch, plain, study_verdict
from flsuite.errors import IntegrityError, StudyAborted
from flsuite.flower import InProcessGrid, new_run


def test_every_planned_round_completed_is_the_only_completed_study():
    assert study_verdict(StudyResult(), rounds_planned=3, rounds_completed=3).status == "completed"
    verdict = study_verdict(StudyResult(), rounds_planned=3, rounds_completed=2)
    assert verdict.status == "failed" and verdict.reasons == ("only 2 of 3 planned rounds completed",)


def test_an_aborted_round_fails_the_study_even_when_the_other_rounds_completed():
    """The issue's case: every round aborted by secure aggregation, yet the study said "completed"."""
    result = StudyResult(aborted_rounds=[{"round": 2, "stage": "unmask", "reason": "update values lie beyond the clip range"}])
    verdict = study_verdict(result, rounds_planned=3, rounds_completed=2)
    assert verdict.status == "failed"
    assert verdict.reasons[0] == "round 2 was aborted at its unmask stage: update values lie beyond the clip range"
    assert "only 2 of 3" in verdict.message


def test_a_loop_that_ran_out_of_sites_is_aborted_with_its_reason():
    result = StudyResult(status="aborted", message="round 2: only 1 site(s) can still train, fewer than federation.min_sites=2")
    verdict = study_verdict(result, rounds_planned=3, rounds_completed=1)
    assert verdict.status == "aborted" and "fewer than federation.min_sites=2" in verdict.reasons[0]


def test_a_coordinator_that_could_not_write_fails_the_study_with_the_cause():
    verdict = study_verdict(StudyResult(), rounds_planned=2, rounds_completed=2, stopped=["round 2: /x/registry: No space left on device"])
    assert verdict.status == "failed" and verdict.reasons == ("round 2: /x/registry: No space left on device",)


def test_reasons_lose_their_tracebacks_and_stay_on_one_line():
    reason = ("node 3: IntegrityError: ledger line 2: checksum mismatch\nTraceback (most recent call last):\n"
              '  File "x.py", line 1, in f\n    g()\nflsuite.errors.IntegrityError: ledger line 2: checksum mismatch\n'
              "; node 4: fine")
    assert plain(reason) == "node 3: IntegrityError: ledger line 2: checksum mismatch ; node 4: fine"
    assert len(plain("x" * 5000)) <= 600


def test_the_server_app_raises_for_a_study_that_did_not_complete():
    raise_unless_completed({"status": "completed"})
    summary = {"name": "s", "status": "failed", "rounds_completed": 0, "rounds_planned": 2, "output_dir": "/o",
               "reasons": ["round 1 was aborted at its train stage: out-of-range"]}
    with pytest.raises(StudyAborted, match="study s failed .0 of 2 rounds.: round 1 was aborted at its train stage: out-of-range"):
        raise_unless_completed(summary)


def test_the_watch_records_each_error_reply_with_its_reason_and_round():
    """A tampered ledger stops the site inside its handler: its error reply must keep its reason."""

    def tampered(msg: Message, context: Context) -> Message:
        raise IntegrityError("ledger line 2: checksum mismatch")

    def honest(msg: Message, context: Context) -> Message:
        return Message(RecordDict({protocol.CONFIG: ConfigRecord({"ok": 1})}), reply_to=msg)

    grid = InProcessGrid({1: honest, 2: tampered}, {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
                                                    for n in (1, 2)}, run=new_run(1, {}))
    watch = FailureWatch(grid)
    watch.round = 4
    arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    with grid:
        messages = [Message(RecordDict({protocol.ARRAYS: arrays}), dst_node_id=n, message_type=protocol.TRAIN) for n in (1, 2)]
        replies = list(watch.send_and_receive(messages, timeout=5))
    assert len(replies) == 2  # passed through untouched
    (failure,) = watch.failures
    assert (failure.round, failure.node_id, failure.stage) == (4, 2, protocol.TRAIN)
    assert failure.reason.startswith("IntegrityError: ledger line 2: checksum mismatch") and "Traceback" not in failure.reason
