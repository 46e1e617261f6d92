"""A train reply's site status and DP event, parsed once (``flsuite.coordinator.reply_records``): each is
parsed, absent, or unusable with its reason, and an unusable one is a problem for the round's record."""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from flsuite import protocol
from flsuite.coordinator.reply_records import ReplyRecords
from tests.unit.test_privacy_events import make_event

STATUS = protocol.SiteStatus(name="site-0", records=120)


def _content(status: dict | None = None, event: dict | None = None) -> RecordDict:
    content = RecordDict()
    if status is not None:
        content[protocol.SITE] = ConfigRecord(status)
    if event is not None:
        content[protocol.DP_EVENT] = ConfigRecord(event)
    return content


def test_a_reply_with_a_status_and_an_event_is_parsed_once_into_both():
    event = make_event()
    records = ReplyRecords.parse(_content(STATUS.to_record(), protocol.dp_event_to_record(event)))
    assert (records.status, records.dp_event) == (STATUS, event)
    assert records.has_status and records.has_dp_event and records.problem() is None


def test_absent_records_are_no_problem_and_not_sent():
    records = ReplyRecords.parse(_content())
    assert records == ReplyRecords()
    assert not records.has_status and not records.has_dp_event and records.problem() is None


def test_an_unusable_status_is_kept_as_its_reason_and_named_before_an_unusable_event():
    bad_status = {**STATUS.to_record(), "records": "many"}
    bad_event = {**protocol.dp_event_to_record(make_event()), "round": True}
    records = ReplyRecords.parse(_content(bad_status, bad_event))
    assert records.status is None and records.status_error and records.has_status
    assert records.dp_event is None and records.dp_event_error and records.has_dp_event
    assert records.problem() == f"the reply's records do not parse ({records.status_error})"
    only_event = ReplyRecords.parse(_content(STATUS.to_record(), bad_event))
    assert only_event.problem() == f"the reply's records do not parse ({only_event.dp_event_error})"
