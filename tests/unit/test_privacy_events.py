"""DP events: strict JSON records keyed by the dataset a site declares (never a fingerprint of bytes)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from flsuite.errors import UserError
from flsuite.privacy import DpEvent, InvalidDpEvent, utc_now_iso


def make_event(**changes) -> DpEvent:
    fields = dict(
        study_id="study-1", run_id="run-1", round=1, site="site-0", dataset="site-0",
        sample_rate=0.04, noise_multiplier=1.5, steps=25, max_grad_norm=1.0, delta=1e-5, accountant="prv",
        rng="torch.Generator mt19937", recorded_at="2026-01-02T03:04:05.000006+00:00",
    )
    fields.update(changes)
    return DpEvent(**fields)


def test_json_round_trip_is_exact_and_canonical():
    event = make_event()
    text = event.to_json()
    assert DpEvent.from_json(text) == event
    assert DpEvent.from_json(text).to_json() == text
    assert event.phase == (0.04, 1.5, 25)


@pytest.mark.parametrize("drop", ["delta", "rng", "steps"])
def test_a_record_missing_a_field_is_refused_naming_it(drop):
    record = json.loads(make_event().to_json())
    del record[drop]
    with pytest.raises(InvalidDpEvent, match=drop):
        DpEvent.from_json(json.dumps(record))


def test_a_record_with_an_extra_field_is_refused():
    record = json.loads(make_event().to_json()) | {"epsilon": 1.0}
    with pytest.raises(InvalidDpEvent, match="epsilon"):
        DpEvent.from_json(json.dumps(record))


@pytest.mark.parametrize(
    "field, value",
    [("steps", "25"), ("steps", 2.5), ("round", True), ("sample_rate", "0.04"), ("site", 3), ("delta", None)],
)
def test_a_mistyped_field_is_refused(field, value):
    record = json.loads(make_event().to_json()) | {field: value}
    with pytest.raises(InvalidDpEvent, match=field):
        DpEvent.from_json(json.dumps(record))


@pytest.mark.parametrize(
    "field, value",
    [("sample_rate", 0.0), ("sample_rate", 1.5), ("noise_multiplier", 0.0), ("noise_multiplier", -1.0),
     ("max_grad_norm", 0.0), ("delta", 1.0), ("delta", 0.0), ("steps", -1), ("accountant", "gdp"),
     ("recorded_at", "2026-01-02T03:04:05"), ("recorded_at", "2026-01-02T03:04:05+02:00"), ("site", "")],
)
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(InvalidDpEvent, match=field):
        make_event(**{field: value})


def test_non_finite_numbers_and_bad_json_are_refused():
    with pytest.raises(InvalidDpEvent, match="noise_multiplier"):
        DpEvent.from_json(make_event().to_json().replace('"noise_multiplier":1.5', '"noise_multiplier":NaN'))
    with pytest.raises(InvalidDpEvent, match="not valid JSON"):
        DpEvent.from_json("{not json")
    with pytest.raises(InvalidDpEvent, match="JSON object"):
        DpEvent.from_json("[1, 2]")
    assert issubclass(InvalidDpEvent, UserError)


def test_events_are_immutable():
    with pytest.raises(AttributeError):
        make_event().steps = 0  # type: ignore[misc]


@pytest.mark.parametrize("name", ["", " site", "a/b", "../x", "x" * 65, "-lead", 3, None])
def test_an_event_names_its_dataset_strictly(name):
    with pytest.raises(InvalidDpEvent, match="dataset"):
        make_event(dataset=name)


def test_an_event_has_no_data_fingerprint_any_more():
    record = make_event().to_dict()
    assert record["dataset"] == "site-0" and "data_fingerprint" not in record
    with pytest.raises(InvalidDpEvent, match="data_fingerprint"):
        DpEvent.from_dict({**record, "data_fingerprint": "sha256:" + "a" * 64})


def test_utc_now_iso_uses_the_injected_clock_and_converts_to_utc():
    local = datetime(2026, 5, 6, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    assert utc_now_iso(lambda: local) == "2026-05-06T07:00:00.000000+00:00"
    assert make_event(recorded_at=utc_now_iso()).recorded_at.endswith("+00:00")
