"""One base for the coordinator's wrappers of a Flower Grid.

``DelegatingGrid`` passes every call of Flower's Grid API (set_run, run, create_message,
get_node_ids, push_messages, pull_messages, send_and_receive) to the Grid it wraps; a
wrapper (``PromptGrid``, ``FailureWatch``, ``CohortGrid``) overrides only what it changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from flsuite.flower import Run

__all__ = ["DelegatingGrid"]


class DelegatingGrid(Grid):
    """A Grid that hands every call to ``grid`` (kept as ``self._grid``)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
