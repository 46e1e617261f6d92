"""The coordinator's send-and-receive at the network's pace, on Flower's public Grid API.

Flower 1.42's deployment Grid sleeps a hard-coded 3 s between two pulls of the replies, so
every exchange of a round waits up to 3 s after its last reply arrived; a secure round has
four exchanges and an evaluation. ``PromptGrid`` pushes the messages the same way and pulls
every ``pull_interval_s`` (0.2 s by default) instead, with the same timeout semantics: it
returns the replies that arrived when all are in or when ``timeout`` seconds have passed
since the push (``None`` waits for all). Each exchange is logged with its duration, which
``experiments/deployed_round.py`` reads for its breakdown.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from flsuite.coordinator.grid_wrapper import DelegatingGrid
from flsuite.flower import InProcessGrid
from flsuite.timing import mark

__all__ = ["DEFAULT_PULL_INTERVAL_S", "EXCHANGE_LOG", "PromptGrid", "prompt_grid"]

DEFAULT_PULL_INTERVAL_S = 0.2
EXCHANGE_LOG = "exchange %d (%s): %d of %d replies in %.2f s"  # parsed by experiments/deployed_round.py
log = logging.getLogger("flwr")  # the ServerApp's log: what `flwr log` and `flsuite launch -v` show


class PromptGrid(DelegatingGrid):
    """A Grid that delegates everything to ``grid`` but pulls replies every ``pull_interval_s``."""

    def __init__(self, grid: Grid, *, pull_interval_s: float = DEFAULT_PULL_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not (math.isfinite(pull_interval_s) and pull_interval_s > 0):
            raise ValueError(f"pull_interval_s must be a positive number of seconds, got {pull_interval_s!r}")
        super().__init__(grid)
        self.pull_interval_s = pull_interval_s
        self._clock = clock
        self._sleep = sleep
        self.exchanges = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull every pull_interval_s until every reply is in or timeout has passed."""
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else "-"
        started = self._clock()
        number = self.exchanges + 1
        mark("coordinator-push", exchange=number, kind=kind)
        pending = set(self._grid.push_messages(messages))
        wanted = len(pending)
        mark("coordinator-pushed", exchange=number, message_ids=sorted(pending))
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[Message] = []
        while pending:
            arrived = list(self._grid.pull_messages(pending))
            replies.extend(arrived)
            for reply in arrived:
                mark("coordinator-reply", exchange=number, reply_to=reply.metadata.reply_to_message_id)
            pending.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
            if not pending:
                break
            now = self._clock()
            if deadline is not None and now >= deadline:
                break
            self._sleep(self.pull_interval_s if deadline is None else min(self.pull_interval_s, deadline - now))
        self.exchanges += 1
        log.info(EXCHANGE_LOG, self.exchanges, kind, len(replies), wanted, self._clock() - started)
        return replies


def prompt_grid(grid: Grid, *, pull_interval_s: float = DEFAULT_PULL_INTERVAL_S) -> Grid:
    """``grid`` wrapped in a PromptGrid, unless it is flsuite's in-process Grid (it answers at once)."""
    if isinstance(grid, InProcessGrid | PromptGrid):
        return grid
    return PromptGrid(grid, pull_interval_s=pull_interval_s)
