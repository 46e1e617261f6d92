"""Issue 13.3 attacks at the coordinator: per-site metrics count only with an accounted, matching event."""

from __future__ import annotations

import math

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flsuite import protocol
from flsuite.config import compose_study, to_run_config
from flsuite.coordinator.monitoring import GAP, WORST, SiteMonitor, counts_problem, drift_report
from flsuite.coordinator.rounds import RoundRecord, SiteReport
from flsuite.flower import InProcessGrid, new_run
from flsuite.privacy import GAUSSIAN, DpEvent

STUDY = compose_study(["experiment=smoke", "secagg=none"])


def event(**changes) -> DpEvent:
    fields = dict(study_id=STUDY.name, run_id="7", round=2, site="site-0", dataset="site-0", sample_rate=1.0,
                  noise_multiplier=STUDY.monitoring.noise_multiplier, steps=1, max_grad_norm=math.sqrt(2), delta=1e-5,
                  accountant="prv", rng="os", recorded_at="2026-01-01T00:00:00+00:00", mechanism=GAUSSIAN)
    return DpEvent(**{**fields, **changes})


def reply_content(dp: DpEvent | None, *, correct=(9.3, 4.1), total=(10.2, 5.7), name="site-0") -> RecordDict:
    records = {protocol.EVALUATION_COUNTS: ConfigRecord({protocol.CORRECT: list(correct), protocol.TOTAL: list(total)}),
               protocol.SITE: ConfigRecord(protocol.SiteStatus(name=name, records=50).to_record())}
    if dp is not None:
        records[protocol.DP_EVENT] = ConfigRecord(protocol.dp_event_to_record(dp))
    return RecordDict(records)


def test_an_accounted_matching_release_is_accepted():
    assert counts_problem(STUDY, 2, "site-0", reply_content(event())) is None


def test_counts_without_a_dp_event_are_withheld():
    assert "without an accounted DP event" in counts_problem(STUDY, 2, "site-0", reply_content(None))


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"noise_multiplier": 0.5}, "sigma"), ({"round": 1}, "round"), ({"site": "site-1"}, "site"),
     ({"max_grad_norm": 1.0}, "sensitivity"), ({"steps": 0}, "releases"), ({"study_id": "other"}, "study"),
     ({"mechanism": "dp-sgd", "sample_rate": 1.0}, "mechanism")],
)
def test_an_event_that_does_not_account_this_release_is_withheld(changes, named):
    why = counts_problem(STUDY, 2, "site-0", reply_content(event(**changes)))
    assert why is not None and named in why


def _grid(handler):
    app = ClientApp()
    app.evaluate()(handler)
    return InProcessGrid.for_client_app(app, run=new_run(7, to_run_config(STUDY)), node_configs=[{"partition-id": 0}])


def _record(grid) -> RoundRecord:
    node = next(iter(grid.get_node_ids()))
    return RoundRecord(round=STUDY.federation.rounds, metrics={"accuracy": 0.9}, sites=[SiteReport(node_id=node, name="site-0", metrics={})],
                       failures=0, wall_s=0.0)


def test_the_monitor_reports_accounted_counts_and_withholds_unaccounted_ones(tmp_path):
    def honest(msg: Message, context: Context) -> Message:
        return Message(reply_content(event()), reply_to=msg)

    def unaccounted(msg: Message, context: Context) -> Message:
        return Message(reply_content(None, correct=(10.0, 5.0), total=(10.0, 5.0)), reply_to=msg)

    from flsuite.models.weights import model_to_arrays
    from flsuite.models.zoo import build_model

    arrays = model_to_arrays(build_model(STUDY.model, num_features=30, num_classes=2, image_shape=None, seed=0))
    for handler, reported in ((honest, True), (unaccounted, False)):
        grid = _grid(handler)
        monitor = SiteMonitor(STUDY, grid, tmp_path)
        record = _record(grid)
        with grid:
            monitor.on_round(record, arrays)
        if reported:
            assert record.metrics[WORST] == pytest.approx(13.4 / 15.9) and record.metrics[GAP] == 0.0
            assert monitor.summary()["sites"]["site-0"]["noise_std"] > 0 and not monitor.withheld
        else:
            assert WORST not in record.metrics and monitor.rows == [] and monitor.summary()["sites"] == {}
            assert "without an accounted DP event" in monitor.withheld[0]["reason"]
        assert (tmp_path / "site_evaluation.csv").read_text().count("\n") == (2 if reported else 1)


DRIFT_STUDY = compose_study(["experiment=smoke", "secagg=none", "monitoring.drift=true", "monitoring.drift_features=[0,3]"])


def drift_content(dp: DpEvent | None, *, flagged=True) -> RecordDict:
    records = {protocol.DRIFT: ConfigRecord({protocol.DRIFT_PREVIOUS: "6", protocol.DRIFT_DISTANCE: 0.5,
                                             protocol.DRIFT_MARGIN: 0.01, protocol.DRIFT_FLAGGED: flagged})}
    if dp is not None:
        records[protocol.DRIFT_EVENT] = ConfigRecord(protocol.dp_event_to_record(dp))
    return RecordDict(records)


def test_a_drift_flag_counts_only_with_its_accounted_release():
    accounted = event(noise_multiplier=DRIFT_STUDY.monitoring.drift_noise_multiplier, max_grad_norm=math.sqrt(3))
    assert drift_report(DRIFT_STUDY, 2, "site-0", drift_content(accounted)) == {
        "previous_run": "6", "distance": 0.5, "margin": 0.01, "flagged": True}
    assert "without an accounted DP event" in drift_report(DRIFT_STUDY, 2, "site-0", drift_content(None))["withheld"]
    too_little_noise = event(noise_multiplier=0.1, max_grad_norm=math.sqrt(3))
    assert "sigma" in drift_report(DRIFT_STUDY, 2, "site-0", drift_content(too_little_noise))["withheld"]
    wrong_sensitivity = event(noise_multiplier=DRIFT_STUDY.monitoring.drift_noise_multiplier)  # sqrt(2): one feature fewer
    assert "sensitivity" in drift_report(DRIFT_STUDY, 2, "site-0", drift_content(wrong_sensitivity))["withheld"]


def test_the_plan_counts_one_drift_release_per_study():
    from flsuite.coordinator.planning import study_evaluation_phases

    assert study_evaluation_phases(STUDY) == ((1.0, 5.0, 1),)
    assert study_evaluation_phases(DRIFT_STUDY) == ((1.0, 5.0, 1), (1.0, 5.0, 1))
    assert study_evaluation_phases(compose_study(["experiment=smoke", "monitoring=none"])) == ()
    assert study_evaluation_phases(compose_study(["experiment=smoke", "privacy=none"])) == ()


def test_a_resumed_study_keeps_the_earlier_rounds_evaluation_rows(tmp_path):
    """`flsuite run --resume`: the rows of rounds before the resume stay in site_evaluation.csv (a row of a
    round written but never published and a torn last line are dropped); the resumed round's rows follow."""
    def honest(msg: Message, context: Context) -> Message:
        return Message(reply_content(event()), reply_to=msg)

    from flsuite.coordinator.monitoring import EVALUATION_FILE
    from flsuite.models.weights import model_to_arrays
    from flsuite.models.zoo import build_model

    path = tmp_path / EVALUATION_FILE
    path.write_text("round,site,accuracy,noise_std,noise_multiplier,released_total,epsilon_spent\n"
                    "1,site-0,0.7,0.01,5.0,100.5,0.8\n"
                    "1,site-1,0.9,0.02,5.0,99.5,\n"
                    "2,site-0,0.95,0.01,5.0,100.1,1.9\n"  # round 2 was written, its model never published
                    "2,site-1,0.9")  # torn
    grid = _grid(honest)
    monitor = SiteMonitor(STUDY, grid, tmp_path)
    assert monitor.restore(1) == 2
    assert monitor.summary()["per_round"][0] == {"round": 1, "sites": 2, "worst_site": "site-0", "worst_accuracy": 0.7,
                                                 "best_site": "site-1", "best_accuracy": 0.9,
                                                 "gap": pytest.approx(0.2), "noise_std": 0.02}
    arrays = model_to_arrays(build_model(STUDY.model, num_features=30, num_classes=2, image_shape=None, seed=0))
    record = _record(grid)
    with grid:
        monitor.on_round(record, arrays)
    lines = path.read_text().splitlines()
    assert lines[1:3] == ["1,site-0,0.7,0.01,5.0,100.5,0.8", "1,site-1,0.9,0.02,5.0,99.5,"]
    assert len(lines) == 4 and lines[3].startswith(f"{STUDY.federation.rounds},site-0,")
    assert [row["round"] for row in monitor.summary()["per_round"]] == [1, STUDY.federation.rounds]


@pytest.mark.parametrize(("dataset", "entries", "reason"), [("other-records", 5, "dataset"), ("records", 2, "fewer")])
def test_an_evaluation_head_for_another_dataset_or_a_cut_ledger_is_withheld(tmp_path, dataset, entries, reason):
    """The evaluation's ledger head gets the train reply's checks: a head for another dataset than the
    site signed before (its budget key switched), or with fewer entries (its ledger cut), is refused."""
    from flsuite.coordinator.admission import DpAdmission, HeadVerifier

    admission = DpAdmission(STUDY, grid=None, verifier=HeadVerifier(None))
    admission.heads["site-0"] = protocol.LedgerHead(site="site-0", dataset="records", entries=3, hash="ab" * 32, signature="00")
    monitor = SiteMonitor(STUDY, None, tmp_path, admission=admission)
    head = protocol.LedgerHead(site="site-0", dataset=dataset, entries=entries, hash="cd" * 32, signature="00")
    why = monitor._head_problem("site-0", protocol.SiteStatus(name="site-0", records=10, ledger_head=head))
    assert why is not None and reason in why
    assert admission.heads["site-0"].dataset == "records" and admission.heads["site-0"].entries == 3  # not replaced
    honest = protocol.LedgerHead(site="site-0", dataset="records", entries=5, hash="ef" * 32, signature="00")
    assert monitor._head_problem("site-0", protocol.SiteStatus(name="site-0", records=10, ledger_head=honest)) is None
    assert admission.heads["site-0"] is honest
