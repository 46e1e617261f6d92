"""Issue 13.3 attacks at the site: private per-site evaluation releases nothing unaccounted."""

from __future__ import annotations

import pytest

from flsuite import protocol
from flsuite.privacy import EVALUATION_SENSITIVITY, GAUSSIAN, PrivacyLedger, epsilon
from tests.integration.test_site_guard import ask, site_grid

EVALUATE = {"message_type": "evaluate", protocol.SITE_EVALUATION: True}


def counts(reply):
    record = reply.content.config_records[protocol.EVALUATION_COUNTS]
    return list(record[protocol.CORRECT]), list(record[protocol.TOTAL])


def test_an_evaluation_release_is_a_gaussian_event_in_the_ledger_before_the_counts_leave(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    before = len(ledger.events())
    reply = ask(grid, arrays, **EVALUATE)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    events = ledger.events()
    assert len(events) == before + 1 and ledger.state().open == ()
    event = events[-1]
    assert (event.mechanism, event.sample_rate, event.steps) == (GAUSSIAN, 1.0, 1)
    assert event.noise_multiplier == 5.0 and event.max_grad_norm == pytest.approx(EVALUATION_SENSITIVITY)
    assert protocol.dp_event_from_record(reply.content.config_records[protocol.DP_EVENT]) == event
    status = protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE])
    assert status.spent_epsilon == pytest.approx(epsilon([event], delta=1e-5)) and status.spent_epsilon > 0
    assert protocol.METRICS not in reply.content.metric_records  # no exact metric leaves the site


def test_two_releases_of_the_same_counts_carry_different_noise(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    first, second = counts(ask(grid, arrays, **EVALUATE)), counts(ask(grid, arrays, **EVALUATE))
    assert first != second  # same model, same held-out records: only fresh noise differs
    assert not all(float(v).is_integer() for v in first[0] + first[1])  # no exact count is released


def test_a_site_whose_cap_cannot_fit_the_release_refuses_and_records_nothing(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", node_extra={"max-epsilon": 0.5})  # one release at sigma 5 costs 0.73
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    before = ledger.state().head
    reply = ask(grid, arrays, **EVALUATE)
    assert protocol.EVALUATION_COUNTS not in reply.content.config_records
    refusal = protocol.Refusal.from_record(reply.content.config_records[protocol.REFUSAL])
    assert refusal.kind == "budget-exhausted"
    assert ledger.state().head == before and ledger.events() == ()


def test_the_held_out_records_are_not_trained_on_or_declared(tmp_path):
    from flsuite.config import compose_study
    from flsuite.data.study_data import split_study
    from flsuite.site.evaluation import holdout_split

    grid, arrays = site_grid(tmp_path, "secagg=none")
    status = protocol.SiteStatus.from_record(ask(grid, arrays, **EVALUATE).content.config_records[protocol.SITE])
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke"])
    records = split_study(study.data, study.federation.num_sites).sites[0]
    train, held = holdout_split(records, site="hospital-a", seed=study.data.seed, fraction=0.2)
    assert status.records == len(train) == len(records) - len(held) and len(held) == round(0.2 * len(records))
    again, _ = holdout_split(records, site="hospital-a", seed=study.data.seed, fraction=0.2)
    assert (again.features == train.features).all()  # the same split every round
