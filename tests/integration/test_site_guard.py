"""A site's own guard, through the inline Grid: its cap, its ledger, and what it refuses."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.run import Run

from clients.app import app as client_app
from flsuite.config import compose_study, to_run_config
from flsuite.data.study_data import model_shape, split_study
from flsuite.engines.inline import InlineGrid
from flsuite.federation import records
from flsuite.models.zoo import build_model
from flsuite.privacy import PrivacyLedger


def site_grid(tmp_path, *overrides, node_extra=None):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", *overrides])
    run = Run.create_empty(7)
    run.override_config = to_run_config(study)
    node = {
        "partition-id": 0,
        "site-name": "hospital-a",
        "ledger-path": str(tmp_path / "ledger.jsonl"),
        **(node_extra or {}),
    }
    grid = InlineGrid(client_app, run=run, node_configs=[node])
    shape = model_shape(study.data, split_study(study.data, study.federation.num_sites).test)
    model = build_model(study.model, num_features=shape.num_features, num_classes=shape.num_classes, image_shape=shape.image_shape, seed=0)
    return grid, records.model_to_arrays(model)


def ask(grid, arrays, message_type="train", **config):
    node = next(iter(grid.get_node_ids()))
    content = RecordDict({records.ARRAYS: arrays, records.CONFIG: ConfigRecord({"server-round": 1, **config})})
    (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type=message_type)], timeout=120)
    return reply


def test_dp_training_records_one_event_in_the_ledger_before_it_replies(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    reply = ask(grid, arrays, **{"noise-multiplier": 1.2})
    assert not reply.has_error()
    events = PrivacyLedger(tmp_path / "ledger.jsonl").events()
    assert len(events) == 1 and events[0].noise_multiplier == 1.2 and events[0].site == "hospital-a"
    dp = reply.content[records.DP_EVENT]
    assert dp["steps"] == events[0].steps and dp["epsilon"] > 0 and dp["max_epsilon"] == 10.0


def test_a_request_past_the_cap_is_refused_with_what_is_left_and_nothing_is_trained(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", node_extra={"max-epsilon": 1.0})
    reply = ask(grid, arrays, **{"noise-multiplier": 0.5})
    assert reply.has_error() and reply.error.code == records.SITE_REFUSAL
    refusal = json.loads(reply.error.reason)
    assert refusal["kind"] == "budget-exhausted" and refusal["remaining_epsilon"] == pytest.approx(1.0)
    assert PrivacyLedger(tmp_path / "ledger.jsonl").events() == ()


def test_a_site_with_a_cap_refuses_to_train_or_evaluate_without_dp(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", "privacy=none", node_extra={"max-epsilon": 5.0})
    for message_type in ("train", "evaluate"):
        reply = ask(grid, arrays, message_type)
        assert reply.has_error() and json.loads(reply.error.reason)["kind"] == "privacy-required"


def test_a_site_without_a_ledger_path_does_not_train_with_dp(tmp_path):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none"])
    run = Run.create_empty(7)
    run.override_config = to_run_config(study)
    grid = InlineGrid(client_app, run=run, node_configs=[{"partition-id": 0, "site-name": "hospital-x"}])
    arrays = records.model_to_arrays(build_model(study.model, num_features=30, num_classes=2, image_shape=None, seed=0))
    reply = ask(grid, arrays, **{"noise-multiplier": 1.0})
    assert reply.has_error() and "no ledger-path" in reply.error.reason and "hospital-x" in reply.error.reason
