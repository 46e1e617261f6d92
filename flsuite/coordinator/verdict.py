"""How a study ended, decided in one place, and the site failures that led there.

A study is "completed" only when every planned round completed and none was aborted.
Otherwise it is "aborted" (the round loop stopped early: too few sites could still train)
or "failed" (a round was aborted, or the coordinator could not go on: a full disk, ...),
and ``reasons`` says why in plain words, one line each, with no traceback. The summary,
the console and the ServerApp's raise all read the same verdict.

``FailureWatch`` wraps the Grid a round talks through and keeps every error reply with its
reason: a site whose handler raised (a tampered ledger stops the site with an
IntegrityError) reaches the coordinator as an error reply, and its reason belongs in the
summary and the audit log, not only in a failure count.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from flsuite import protocol
from flsuite.coordinator.grid_wrapper import DelegatingGrid
from flsuite.coordinator.rounds import StudyResult

__all__ = ["COMPLETED", "ABORTED", "FAILED", "FailureWatch", "SiteFailure", "Verdict", "plain", "study_verdict"]

COMPLETED, ABORTED, FAILED = "completed", "aborted", "failed"
MAX_REASON = 600  # characters of one reason kept for the summary and the console

# A Python traceback inside an error reason: the header, its indented frame lines, and the
# closing "module.Error: message" line (the message itself is already on the line before).
_TRACEBACK = re.compile(r"\n?Traceback \(most recent call last\):\n(?:[ \t]+.*\n?)*(?:\S.*(?:\n|$))?")


def plain(text: str) -> str:
    """``text`` without tracebacks, on one line, at most MAX_REASON characters."""
    text = _TRACEBACK.sub(" ", str(text))
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


@dataclass(frozen=True)
class SiteFailure:
    """A site's error reply: it could not handle the coordinator's message, and why."""

    round: int
    node_id: int
    stage: str  # the message type it failed on ("train", "query", ...)
    reason: str
    site: str | None = None  # the site's name, when any of its replies ever named it

    def to_summary(self) -> dict[str, Any]:
        return {"round": self.round, "node_id": self.node_id, "site": self.site, "stage": self.stage, "reason": self.reason}

    def text(self) -> str:
        who = f"site {self.site!r} (node {self.node_id})" if self.site else f"node {self.node_id}"
        return f"round {self.round}: {who} failed on its {self.stage} message: {self.reason}"


class FailureWatch(DelegatingGrid):
    """A Grid that passes everything through and records each error reply with its reason."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.round = 0  # the round in progress (0: planning), set by the study
        self._failures: list[SiteFailure] = []
        self._names: dict[int, str] = {}  # node -> site name, from the status records of its replies
        self._lock = threading.Lock()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._watch(list(self._grid.pull_messages(message_ids)))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._watch(list(self._grid.send_and_receive(messages, timeout=timeout)))

    @property
    def failures(self) -> list[SiteFailure]:
        """Every error reply so far, each named by its site where any reply of that node named it."""
        with self._lock:
            return [dataclasses.replace(f, site=self._names.get(f.node_id)) for f in self._failures]

    def _watch(self, replies: list[Message]) -> list[Message]:
        for reply in replies:
            if not reply.has_error():
                status = reply.content.config_records.get(protocol.SITE)
                name = status.get("name") if status is not None else None
                if isinstance(name, str) and name:
                    with self._lock:
                        self._names.setdefault(reply.metadata.src_node_id, name)
            if reply.has_error():
                error = reply.error
                reason = plain(error.reason or f"error code {error.code}")
                failure = SiteFailure(self.round, reply.metadata.src_node_id, reply.metadata.message_type, reason)
                with self._lock:
                    self._failures.append(failure)
        return replies


@dataclass(frozen=True)
class Verdict:
    """A study's final status and every reason it is not "completed" (empty when it is)."""

    status: str
    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)


def study_verdict(result: StudyResult, *, rounds_planned: int, rounds_completed: int, stopped: Iterable[str] = ()) -> Verdict:
    """The study's status: "completed" only when every planned round completed and none aborted.

    ``stopped``: why the coordinator itself could not go on (a write that failed, ...).
    """
    stops = [plain(why) for why in stopped]
    reasons: list[str] = list(stops)
    if result.status != COMPLETED and result.message:
        reasons.append(plain(result.message))
    for aborted in result.aborted_rounds:
        stage = aborted.get("stage")
        where = f" at its {stage} stage" if stage else ""
        reasons.append(f"round {aborted.get('round')} was aborted{where}: {plain(aborted.get('reason', 'no reason given'))}")
    if rounds_completed < rounds_planned:
        reasons.append(f"only {rounds_completed} of {rounds_planned} planned rounds completed")
    if not reasons:
        return Verdict(COMPLETED, ())
    status = ABORTED if result.status == ABORTED and not stops else FAILED  # ran out of sites (rounds may have aborted on the way)
    return Verdict(status, tuple(reasons))
