"""Every plain-round reply is checked before it is averaged (issue 12.1), weighted by what its
site declared (12.2), and a round without a quorum of valid replies publishes nothing (12.3):
played as attacks by small site handlers on the in-process Grid."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.coordinator.admission import DpAdmission, HeadVerifier, PlannedSite
from flsuite.coordinator.reply_records import ReplyRecords
from flsuite.coordinator.rounds import REJECTED_REPLY, PlainTrainRound, RoundLoop
from flsuite.coordinator.strategies import build_strategy
from flsuite.flower import InProcessGrid, new_run

RECORDS = 10


def status_reply(msg: Message, name: str, records: int) -> Message:
    """A status reply as the site writes it (the record by hand: a lying site need not use SiteStatus)."""
    return Message(RecordDict({protocol.SITE: ConfigRecord({"name": name, "records": records})}), reply_to=msg)


def site(name: str, *, shift: float = 1.0, lie: str | None = None, declares: int = RECORDS, hang: threading.Event | None = None,
         trained: list | None = None):
    """A site that declares ``declares`` records and adds ``shift`` to every weight, unless it lies.

    ``lie``: "nan", "inf", "shape", "missing-key", "extra-key", "dtype", "huge" (update x1e6),
    "examples-1e9", "examples--5", "status-records" (its reply's status declares other records),
    "extra-metric" (one more metric than the other sites report).
    ``hang``: the site blocks on this Event when asked to train (a hung site).
    """

    def handler(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == protocol.QUERY:
            return status_reply(msg, name, declares)
        if trained is not None:
            trained.append(int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND]))
        if hang is not None:
            hang.wait()
        arrays = msg.content[protocol.ARRAYS]
        local = {key: arrays[key].numpy() + np.float32(shift) for key in arrays}
        examples, records = declares, declares
        if lie == "nan":
            local["w"][0] = np.nan
        elif lie == "inf":
            local["w"][1] = np.inf
        elif lie == "shape":
            local["w"] = np.zeros(4, dtype=np.float32)
        elif lie == "missing-key":
            del local["b"]
        elif lie == "extra-key":
            local["backdoor"] = np.zeros(2, dtype=np.float32)
        elif lie == "dtype":
            local["w"] = local["w"].astype(np.float64)
        elif lie == "huge":
            local = {key: arrays[key].numpy() + np.float32(shift * 1e6) for key in arrays}
        elif lie == "examples-1e9":
            examples = 1_000_000_000
        elif lie == "examples--5":
            examples = -5
        elif lie == "status-records":
            records = 1_000_000
        metrics = {protocol.NUM_EXAMPLES: examples, protocol.TRAIN_LOSS: 0.5, **({"extra": 1.0} if lie == "extra-metric" else {})}
        return Message(
            RecordDict({
                protocol.ARRAYS: ArrayRecord({key: Array(value) for key, value in local.items()}),
                protocol.METRICS: MetricRecord(metrics),
                protocol.SITE: ConfigRecord(protocol.SiteStatus(name=name, records=records).to_record()),
            }),
            reply_to=msg,
        )

    return handler


def study(*overrides: str):
    return compose_study(["privacy=none", "secagg=none", "registry.enabled=false", "federation.num_sites=4",
                          "federation.min_sites=2", "federation.rounds=2",
                          "federation.strategy=fedavg", *overrides])  # the weights below are plain averages


def grid_of(handlers: dict, **options) -> InProcessGrid:
    contexts = {node: Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={}) for node in handlers}
    return InProcessGrid(handlers, contexts, run=new_run(1), wire=True, **options)


def run(grid: InProcessGrid, config):
    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)), "b": Array(np.zeros(1, dtype=np.float32))})
    strategy = build_strategy(config.federation, initial)
    loop = RoundLoop(config, grid, strategy=strategy, initial_arrays=initial, evaluator=None,
                     train_round=PlainTrainRound(grid, strategy, timeout_s=config.federation.round_timeout_s))
    with grid:
        return loop.run()


def trains_sent(grid: InProcessGrid) -> list[tuple[int, int]]:
    return sorted((int(m.content[protocol.CONFIG][protocol.SERVER_ROUND]), m.metadata.dst_node_id)
                  for m in grid.sent if m.metadata.message_type == protocol.TRAIN)


# -- 12.1: a reply that does not fit the global model is never averaged ----------------------------

LIES = {
    "nan": "not finite",
    "inf": "not finite",
    "shape": "shape (4,)",
    "missing-key": "missing 'b'",
    "extra-key": "unexpected 'backdoor'",
    "dtype": "dtype float64",
    "huge": "federation.max_update_norm=100",
    "examples-1e9": "disagrees with the 10 records",
    "examples--5": "not a positive whole number",
    "status-records": "declares 1000000 records",
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_bad_reply_is_rejected_with_its_reason_and_the_study_goes_on_without_it(lie):
    handlers = {11: site("a"), 12: site("b"), 13: site("c", shift=5.0, lie=lie)}
    grid = grid_of(handlers)
    result = run(grid, study())
    assert result.status == "completed", result.message
    assert [r.round for r in result.rounds] == [1, 2] and result.aborted_rounds == []
    (rejected,) = result.refusals
    assert (rejected.round, rejected.node_id, rejected.name, rejected.kind) == (1, 13, "c", REJECTED_REPLY)
    assert LIES[lie] in rejected.reason
    # each round moved the model by the honest sites' 1.0 only: the liar's update was never averaged
    for key, size in (("w", 3), ("b", 1)):
        np.testing.assert_allclose(result.arrays[key].numpy(), np.full(size, 2.0), rtol=1e-6)
    assert (2, 13) not in trains_sent(grid)  # and it is not asked again
    assert all("c" not in [s.name for s in record.sites] for record in result.rounds)


def test_a_site_reporting_one_more_metric_does_not_stop_the_study():
    """The attack: Flower's strategies refuse replies whose MetricRecords differ in keys (raising, which
    ended the study); the round averages the checked replies itself and hands the strategy one."""
    result = run(grid_of({11: site("a"), 12: site("b", lie="extra-metric")}), study())
    assert result.status == "completed", result.message
    assert [r.round for r in result.rounds] == [1, 2] and result.refusals == [] and result.aborted_rounds == []
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 2.0), rtol=1e-6)


def test_the_update_norm_bound_is_the_configured_one():
    handlers = {11: site("a", shift=1.0), 12: site("b", shift=1.0), 13: site("c", shift=3.0)}
    # ||update|| of site c = 3 * sqrt(4) = 6: over a bound of 5, under the default
    result = run(grid_of(handlers), study("federation.max_update_norm=5"))
    (rejected,) = result.refusals
    assert rejected.name == "c" and "= 6 is beyond federation.max_update_norm=5" in rejected.reason
    assert run(grid_of(handlers), study()).refusals == []


# -- 12.2: the weight is what the site declared ----------------------------------------------------


def test_the_declared_record_counts_weight_the_average():
    handlers = {11: site("a", shift=1.0, declares=10), 12: site("b", shift=4.0, declares=30)}
    result = run(grid_of(handlers), study("federation.rounds=1"))
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, (10 * 1 + 30 * 4) / 40), rtol=1e-6)


@pytest.mark.parametrize("declares, reason", [(1_000_000_000, "more than federation.max_site_records=10000000"),
                                              (0, "declares 0 training records"), (-5, "unusable status")])
def test_a_site_that_declares_an_unusable_record_count_is_rejected_before_it_trains(declares, reason):
    handlers = {11: site("a"), 12: site("b"), 13: site("c", shift=5.0, declares=declares)}
    grid = grid_of(handlers)
    result = run(grid, study())
    assert result.status == "completed" and [r.round for r in result.rounds] == [1, 2]
    (rejected,) = result.refusals
    assert rejected.node_id == 13 and rejected.kind == REJECTED_REPLY and reason in rejected.reason
    assert 13 not in {node for _, node in trains_sent(grid)}
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 2.0), rtol=1e-6)


def test_each_node_is_asked_for_its_status_once():
    grid = grid_of({11: site("a"), 12: site("b")})
    run(grid, study("federation.rounds=3"))
    queries = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == protocol.QUERY]
    assert sorted(queries) == [11, 12]


def test_a_dp_reply_whose_status_declares_other_records_than_planned_is_rejected():
    config = compose_study(["secagg=none", "registry.enabled=false"])
    admission = DpAdmission(config, grid_of({11: site("a")}), verifier=HeadVerifier(None))
    admission.planned[11] = PlannedSite(node_id=11, name="a", sample_rate=0.1, noise_multiplier=1.0, steps_per_round=2,
                                        max_grad_norm=2.0, delta=1e-5, admitted_round=0, records=RECORDS)
    status = protocol.SiteStatus(name="a", records=RECORDS * 1000, max_epsilon=10.0, delta=1e-5, spent_epsilon=0.0)
    content = RecordDict({protocol.SITE: ConfigRecord(status.to_record())})
    why = admission.check_reply(1, 11, content, ReplyRecords.parse(content))
    assert why is not None and "planned with 10" in why
    assert dict(admission.declared) == {11: RECORDS}


# -- 12.3: quorum and timeouts ---------------------------------------------------------------------


def test_a_round_with_fewer_valid_replies_than_min_sites_publishes_nothing():
    handlers = {11: site("a"), 12: site("b", lie="nan"), 13: site("c", lie="huge")}
    result = run(grid_of(handlers), study("federation.min_sites=2", "federation.rounds=1", "federation.num_sites=3"))
    assert result.rounds == []  # one valid reply: no new global model
    (aborted,) = result.aborted_rounds
    assert aborted["round"] == 1 and "1 valid reply" in aborted["reason"] and "federation.min_sites=2" in aborted["reason"]
    np.testing.assert_array_equal(result.arrays["w"].numpy(), np.zeros(3))
    assert {r.name for r in result.refusals} == {"b", "c"}


@pytest.mark.parametrize("how", ["event", "delay"])
def test_a_hung_site_is_cut_at_the_round_timeout_and_the_study_completes_on_the_others(how):
    released, entered = threading.Event(), []
    hung = site("z", shift=5.0, hang=released if how == "event" else None, trained=entered)
    handlers = {11: site("a"), 12: site("b"), 19: hung}  # the hung site is asked last: workers=1 serves the others first
    delay = (lambda m: 3600.0 if m.metadata.dst_node_id == 19 and m.metadata.message_type == protocol.TRAIN else 0.0) if how == "delay" else None
    grid = grid_of(handlers, workers=1, delay=delay)
    try:
        result = run(grid, study("federation.round_timeout_s=2", "federation.num_sites=3"))
        # the study ended while the hung site was still blocked: it never held a round past its timeout
        still_hung = how != "event" or not released.is_set()
    finally:
        released.set()
    assert still_hung and entered == [1, 2]  # asked in each round, answered in none
    assert result.status == "completed" and [r.round for r in result.rounds] == [1, 2]
    assert [r.failures for r in result.rounds] == [1, 1] and all(len(r.sites) == 2 for r in result.rounds)
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 2.0), rtol=1e-6)


def test_a_hung_site_that_breaks_the_quorum_aborts_the_round():
    released = threading.Event()
    handlers = {11: site("a"), 12: site("b"), 19: site("z", hang=released)}
    try:
        result = run(grid_of(handlers, workers=1), study("federation.round_timeout_s=2", "federation.num_sites=3",
                                                         "federation.min_sites=3", "federation.rounds=1"))
    finally:
        released.set()
    assert result.rounds == [] and [a["round"] for a in result.aborted_rounds] == [1]
    assert all("2 valid replies" in a["reason"] for a in result.aborted_rounds)
