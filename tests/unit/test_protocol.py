"""The site-coordinator contract: every typed value round-trips through its record form, strictly,
and survives Flower's wire encoding (a ConfigRecord through protobuf)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from flsuite import protocol
from flsuite.errors import ProtocolError

names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=20)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False)


@st.composite
def dp_events(draw) -> protocol.DpEvent:
    return protocol.DpEvent(
        study_id=draw(names),
        run_id=draw(names),
        round=draw(st.integers(0, 10_000)),
        site=draw(names),
        dataset=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)),
        sample_rate=draw(st.floats(min_value=1e-6, max_value=1.0)),
        noise_multiplier=draw(positive),
        steps=draw(st.integers(0, 10**6)),
        max_grad_norm=draw(positive),
        delta=draw(st.floats(min_value=1e-12, max_value=0.5)),
        accountant=draw(st.sampled_from(["prv", "rdp"])),
        rng=draw(names),
        recorded_at="2026-11-30T06:00:00.000001+00:00",
    )


@st.composite
def statuses(draw) -> protocol.SiteStatus:
    private = draw(st.booleans())
    return protocol.SiteStatus(
        name=draw(names),
        records=draw(st.integers(0, 10**7)),
        max_epsilon=draw(positive) if private else None,
        delta=draw(st.floats(min_value=1e-12, max_value=0.5)) if private else None,
        spent_epsilon=draw(st.floats(min_value=0, max_value=1e3)) if private else None,
        prior_events=tuple(draw(st.lists(dp_events(), max_size=4))) if private else (),
    )


@st.composite
def refusals(draw) -> protocol.Refusal:
    return protocol.Refusal(
        kind=draw(st.sampled_from(protocol.REFUSAL_KINDS)),
        site=draw(names),
        message=draw(st.text(max_size=80)),
        remaining_epsilon=draw(st.none() | finite),
    )


def through_the_wire(record: dict) -> dict:
    """A record as the other side reads it: a ConfigRecord through Flower's protobuf encoding."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # test-only: Flower's wire format

    content = recorddict_from_proto(recorddict_to_proto(RecordDict({"x": ConfigRecord(record)})))
    return dict(content.config_records["x"])


@settings(max_examples=60, deadline=None)
@given(dp_events())
def test_a_dp_event_round_trips_through_its_record_and_the_wire(event):
    assert protocol.dp_event_from_record(protocol.dp_event_to_record(event)) == event
    assert protocol.dp_event_from_record(through_the_wire(protocol.dp_event_to_record(event))) == event


@settings(max_examples=60, deadline=None)
@given(statuses())
def test_a_site_status_round_trips_through_its_record_and_the_wire(status):
    assert protocol.SiteStatus.from_record(status.to_record()) == status
    assert protocol.SiteStatus.from_record(through_the_wire(status.to_record())) == status


@settings(max_examples=60, deadline=None)
@given(refusals())
def test_a_refusal_round_trips_through_its_record_and_the_wire(refusal):
    assert protocol.Refusal.from_record(refusal.to_record()) == refusal
    assert protocol.Refusal.from_record(through_the_wire(refusal.to_record())) == refusal


@settings(max_examples=40, deadline=None)
@given(names, names, st.integers(0, 10**9), st.text(alphabet="0123456789abcdef", min_size=1, max_size=64))
def test_a_ledger_head_round_trips_and_its_payload_binds_every_field(site, dataset, entries, digest):
    head = protocol.LedgerHead(site=site, dataset=dataset, entries=entries, hash=digest, signature="ab" * 32)
    assert protocol.LedgerHead.from_record(through_the_wire(head.to_record())) == head
    other = protocol.LedgerHead(site=site, dataset=dataset, entries=entries + 1, hash=digest, signature="ab" * 32)
    assert other.payload() != head.payload()


def test_a_refusal_of_an_unknown_kind_or_with_extra_keys_is_refused():
    with pytest.raises(ProtocolError, match="kind"):
        protocol.Refusal(kind="free-pass", site="a", message="")
    record = protocol.Refusal(kind="budget-exhausted", site="a", message="m").to_record()
    with pytest.raises(ProtocolError, match="unknown keys"):
        protocol.Refusal.from_record({**record, "override": 1})


def test_a_dp_event_record_missing_a_field_or_with_a_wrong_value_is_refused():
    record = protocol.dp_event_to_record(
        protocol.DpEvent(
            study_id="s", run_id="r", round=1, site="a", dataset="a", sample_rate=0.1,
            noise_multiplier=1.0, steps=10, max_grad_norm=1.0, delta=1e-5, accountant="prv", rng="os",
            recorded_at="2026-11-30T06:00:00+00:00",
        )
    )
    with pytest.raises(ProtocolError, match="delta"):
        protocol.dp_event_from_record({k: v for k, v in record.items() if k != "delta"})
    with pytest.raises(ProtocolError, match="noise_multiplier"):
        protocol.dp_event_from_record({**record, "noise_multiplier": 0.0})


def test_a_status_whose_event_lists_disagree_in_length_is_refused():
    status = protocol.SiteStatus(name="a", records=10, max_epsilon=3.0, delta=1e-5, spent_epsilon=0.0)
    record = status.to_record()
    record["prior-steps"] = [3]
    with pytest.raises(ProtocolError, match="lengths"):
        protocol.SiteStatus.from_record(record)


def test_node_config_keys_are_the_ones_a_site_node_writes():
    from flsuite.site.node_config import format_node_config

    text = format_node_config({key: "x" for key in protocol.NODE_CONFIG_KEYS})
    assert [part.split("=")[0] for part in text.split(" ")] == list(protocol.NODE_CONFIG_KEYS)


def _event_record(**changes) -> dict:
    event = protocol.DpEvent(study_id="s", run_id="r", round=1, site="a", dataset="a", sample_rate=0.1, noise_multiplier=1.0,
                             steps=10, max_grad_norm=1.0, delta=1e-5, accountant="prv", rng="os",
                             recorded_at="2026-11-30T06:00:00+00:00")
    return {**protocol.dp_event_to_record(event), **changes}


@pytest.mark.parametrize(("field", "value"), [("round", True), ("steps", True), ("sample_rate", True), ("site", 1)])
def test_an_event_equal_in_python_but_of_another_type_is_not_served_a_parsed_one(field, value):
    """Each site repeats its history in every reply, so parsed events are kept; True == 1 in Python, but a
    bool is no round, step count or delta: a cache keyed on values alone would hand back the valid event."""
    valid = _event_record(**{field: 1} if field != "site" else {})
    protocol.dp_event_from_record(valid)
    with pytest.raises(ProtocolError, match=field):
        protocol.dp_event_from_record({**valid, field: value})


def test_an_event_seen_again_parses_to_the_same_event_and_json_as_before():
    record = _event_record(round=7)
    first, again = protocol.dp_event_from_record(dict(record)), protocol.dp_event_from_record(dict(record))
    assert first == again and first.to_json() == again.to_json()
    import json
    assert json.loads(first.to_json()) == record and first.to_dict() == record and first.to_dict() is not first.to_dict()
    changed = protocol.dp_event_from_record({**record, "round": 8})
    assert changed.round == 8 and changed.to_json() != first.to_json()
