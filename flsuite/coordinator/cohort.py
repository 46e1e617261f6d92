"""Choosing which sites train in a round.

Sites that refused (their privacy budget is spent) are never asked again; the rest are
sampled with a seed per study and round, so a study replays the same way.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from flsuite.flower import Run


class CohortGrid(Grid):
    """A view of a Grid that shows the strategy only the chosen cohort's nodes."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[str]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def choose_cohort(
    available: Iterable[int], *, fraction: float, minimum: int, seed: int, server_round: int
) -> list[int] | None:
    """Sorted node ids to train this round, or None when fewer than ``minimum`` are available."""
    pool = sorted(available)
    if len(pool) < minimum:
        return None
    size = min(len(pool), max(minimum, int(len(pool) * fraction)))
    if size == len(pool):
        return pool
    return sorted(random.Random(f"{seed}/{server_round}").sample(pool, size))
