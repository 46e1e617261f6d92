"""A train reply's clear records, parsed once per reply.

Every check of a train reply reads its site status (the declared record count, the site's name,
its signed ledger head) and its DP event (against the privacy plan), and the round's record of
the reply keeps both. A DP site's status lists its whole history, so the coordinator parses each
reply's records here, once, and hands the result to every check and to the round's record
(``flsuite.coordinator.rounds.site_report``). A record that does not parse is kept as the reason,
for each check to report in its own words.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import RecordDict

from flsuite import protocol
from flsuite.errors import ProtocolError

__all__ = ["ReplyRecords"]


@dataclass(frozen=True)
class ReplyRecords:
    """A reply's site status and DP event: each parsed, absent (None), or unusable (why, in ``*_error``)."""

    status: protocol.SiteStatus | None = None
    status_error: str | None = None
    dp_event: protocol.DpEvent | None = None
    dp_event_error: str | None = None

    @classmethod
    def parse(cls, content: RecordDict) -> ReplyRecords:
        records = content.config_records
        status = event = None
        status_error = event_error = None
        if protocol.SITE in records:
            try:
                status = protocol.SiteStatus.from_record(dict(records[protocol.SITE]))
            except ProtocolError as error:
                status_error = str(error)
        if protocol.DP_EVENT in records:
            try:
                event = protocol.dp_event_from_record(dict(records[protocol.DP_EVENT]))
            except ProtocolError as error:
                event_error = str(error)
        return cls(status, status_error, event, event_error)

    @property
    def has_status(self) -> bool:
        return self.status is not None or self.status_error is not None

    @property
    def has_dp_event(self) -> bool:
        return self.dp_event is not None or self.dp_event_error is not None

    def problem(self) -> str | None:
        """Why the reply's records cannot be recorded with the round, or None."""
        error = self.status_error if self.status_error is not None else self.dp_event_error
        return None if error is None else f"the reply's records do not parse ({error})"
