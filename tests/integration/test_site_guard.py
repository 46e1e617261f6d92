"""A site's own guard, through the inline Grid: its cap, its ledger, its signed head, and what it refuses."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flsuite import protocol
from flsuite.config import compose_study, to_run_config
from flsuite.data.study_data import model_shape, split_study
from flsuite.flower import InProcessGrid, new_run
from flsuite.models.weights import model_to_arrays
from flsuite.models.zoo import build_model
from flsuite.privacy import PrivacyLedger, verify_head
from flsuite.secagg import generate_identity, load_identity, public_identity
from flsuite.site import build_client_app, ensure_site_ledger


def site_key(tmp_path):
    key = tmp_path / "identity.key"
    if not key.exists():
        generate_identity(key)
    return key


def site_grid(tmp_path, *overrides, node_extra=None, genesis=True):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", *overrides])
    run = new_run(7, to_run_config(study))
    node = {
        "partition-id": 0,
        "site-name": "hospital-a",
        "ledger-path": str(tmp_path / "ledger.jsonl"),
        "identity-key": str(site_key(tmp_path)),
        "max-epsilon": 10.0,
        "delta": 1e-5,
        **(node_extra or {}),
    }
    if genesis:
        ensure_site_ledger(tmp_path / "ledger.jsonl", site="hospital-a", dataset="hospital-a", identity_key=site_key(tmp_path))
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
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    events = ledger.events()
    assert len(events) == 1 and events[0].noise_multiplier == 1.2 and events[0].site == "hospital-a"
    assert events[0].dataset == "hospital-a" and ledger.state().open == ()  # the reservation was replaced
    assert protocol.dp_event_from_record(reply.content.config_records[protocol.DP_EVENT]) == events[0]
    status = protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE])
    assert status.spent_epsilon > 0 and status.max_epsilon == 10.0 and status.prior_events == events


def test_the_dp_reply_releases_only_what_is_accounted_and_carries_the_signed_head(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    reply = ask(grid, arrays, **{"noise-multiplier": 1.2})
    assert set(reply.content.metric_records[protocol.METRICS]) == {protocol.NUM_EXAMPLES}  # no loss, no timings
    head = protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE]).ledger_head
    public = public_identity(load_identity(tmp_path / "identity.key"))
    assert head.site == "hospital-a" and head.dataset == "hospital-a" and verify_head(head, public)
    assert (head.entries, head.hash) == tuple(PrivacyLedger(tmp_path / "ledger.jsonl").head().__dict__.values())
    status_reply = ask(grid, arrays, "query", query="status")
    assert protocol.SiteStatus.from_record(status_reply.content.config_records[protocol.SITE]).ledger_head == head


def test_a_request_past_the_cap_is_refused_with_what_is_left_and_nothing_is_trained(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", node_extra={"max-epsilon": 1.0})
    reply = ask(grid, arrays, **{"noise-multiplier": 0.5})
    refusal = protocol.Refusal.from_record(reply.content.config_records[protocol.REFUSAL])
    assert refusal.kind == "budget-exhausted" and refusal.remaining_epsilon == pytest.approx(1.0)
    assert set(reply.content) == {protocol.REFUSAL}  # no weights, no metrics: nothing was trained
    assert PrivacyLedger(tmp_path / "ledger.jsonl").head().entries == 0  # nothing reserved either


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
    assert reply.has_error() and "ledger-path" in reply.error.reason and "hospital-x" in reply.error.reason


# -- attacks on the ledger's tail (issue 11.3): each used to lower the spend ---------------------
def _cut_last_line(path):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))


@pytest.mark.parametrize(
    "attack",
    [_cut_last_line, lambda path: path.write_bytes(b""), lambda path: path.unlink()],
    ids=["delete-last-line", "empty-ledger", "delete-ledger"],
)
def test_a_cut_ledger_stops_the_site_at_the_next_request(tmp_path, attack):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    assert not ask(grid, arrays, **{"noise-multiplier": 1.2}).has_error()
    ledger = tmp_path / "ledger.jsonl"
    attack(ledger)
    before = ledger.read_bytes() if ledger.exists() else None
    for message_type, config in (("train", {"noise-multiplier": 1.2}), ("query", {"query": "status"})):
        reply = ask(grid, arrays, message_type, **config)
        assert reply.has_error(), f"{message_type} was answered from a cut ledger"
        assert "anchored head" in reply.error.reason and "reset-ledger" in reply.error.reason
    assert (ledger.read_bytes() if ledger.exists() else None) == before  # nothing trained, nothing appended


def test_a_missing_anchor_with_a_non_empty_ledger_stops_the_site(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none")
    assert not ask(grid, arrays, **{"noise-multiplier": 1.2}).has_error()
    (tmp_path / "ledger.jsonl.head").unlink()
    reply = ask(grid, arrays, **{"noise-multiplier": 1.2})
    assert reply.has_error() and "anchored head" in reply.error.reason and "missing" in reply.error.reason


def test_a_site_never_set_up_does_not_train(tmp_path):
    grid, arrays = site_grid(tmp_path, "secagg=none", genesis=False)
    reply = ask(grid, arrays, **{"noise-multiplier": 1.2})
    assert reply.has_error() and "no anchored head" in reply.error.reason
    assert not (tmp_path / "ledger.jsonl").exists()
