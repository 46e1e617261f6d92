"""A site's own guard, through the inline Grid: its cap, its ledger, and what it refuses."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flsuite import protocol
from flsuite.config import compose_study, to_run_config
from flsuite.data.study_data import model_shape, split_study
from flsuite.flower import InProcessGrid, new_run
from flsuite.models.weights import model_to_arrays
from flsuite.models.zoo import build_model
from flsuite.privacy import PrivacyLedger
from flsuite.site import build_client_app


def site_grid(tmp_path, *overrides, node_extra=None):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", *overrides])
    run = new_run(7, to_run_config(study))
    node = {
        "partition-id": 0,
        "site-name": "hospital-a",
        "ledger-path": str(tmp_path / "ledger.jsonl"),
        **(node_extra or {}),
    }
    grid = InProcessGrid.for_client_app(build_client_app(), run=run, node_configs=[node])
    shape = model_shape(study.data, split_study(study.data, study.federation.num_sites).test)
    model = build_model(study.model, num_features=shape.num_features, num_classes=shape.num_classes, image_shape=shape.image_shape, seed=0)
    return grid, model_to_arrays(model)


def ask(grid, arrays, message_type="train", **config):
    node = next(iter(grid.get_node_ids()))
    content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord({"server-round": 1, **config})})
    with grid:
        (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type=message_type)], timeout=120)
    return reply


def test_dp_training_records_one_event_in_the_ledger_before_it_replies(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    reply = ask(grid, arrays, **{"noise-multiplier": 1.2})
    assert not reply.has_error()
    events = PrivacyLedger(tmp_path / "ledger.jsonl").events()
    assert len(events) == 1 and events[0].noise_multiplier == 1.2 and events[0].site == "hospital-a"
    assert protocol.dp_event_from_record(reply.content.config_records[protocol.DP_EVENT]) == events[0]
    status = protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE])
    assert status.spent_epsilon > 0 and status.max_epsilon == 10.0 and status.prior_events == events


def test_a_request_past_the_cap_is_refused_with_what_is_left_and_nothing_is_trained(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", node_extra={"max-epsilon": 1.0})
    reply = ask(grid, arrays, **{"noise-multiplier": 0.5})
    refusal = protocol.Refusal.from_record(reply.content.config_records[protocol.REFUSAL])
    assert refusal.kind == "budget-exhausted" and refusal.remaining_epsilon == pytest.approx(1.0)
    assert set(reply.content) == {protocol.REFUSAL}  # no weights, no metrics: nothing was trained
    assert PrivacyLedger(tmp_path / "ledger.jsonl").events() == ()


def test_a_site_with_a_cap_refuses_to_train_or_evaluate_without_dp(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", "privacy=none", node_extra={"max-epsilon": 5.0})
    for message_type in ("train", "evaluate"):
        reply = ask(grid, arrays, message_type)
        assert protocol.Refusal.from_record(reply.content.config_records[protocol.REFUSAL]).kind == "privacy-required"


def test_a_site_without_a_ledger_path_does_not_train_with_dp(tmp_path):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none"])
    grid = InProcessGrid.for_client_app(
        build_client_app(), run=new_run(7, to_run_config(study)), node_configs=[{"partition-id": 0, "site-name": "hospital-x"}]
    )
    arrays = model_to_arrays(build_model(study.model, num_features=30, num_classes=2, image_shape=None, seed=0))
    reply = ask(grid, arrays, **{"noise-multiplier": 1.0})
    assert reply.has_error() and "no ledger-path" in reply.error.reason and "hospital-x" in reply.error.reason
