"""Choosing which sites train in a round.

Sites that refused (their privacy budget is spent) are never asked again; the rest are
sampled with a seed per study and round, so a study replays the same way.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flwr.serverapp import Grid

from flsuite.coordinator.grid_wrapper import DelegatingGrid


class CohortGrid(DelegatingGrid):
    """A view of a Grid that shows the strategy only the chosen cohort's nodes."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)


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
