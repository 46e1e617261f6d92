"""The SecAgg+ neighbour graph: which sites mask with, and hold Shamir shares for, which.

Both the coordinator and every site compute it from the cohort, run and round, so neither
side chooses it freely. With k neighbours (k even, k < n-1) the sites sit on a ring in an
order fixed by a hash of (run, round, node) and each takes k/2 neighbours on either side;
k = n-1 gives the complete graph of classic SecAgg.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["neighbour_graph", "share_group"]


def neighbour_graph(cohort: Iterable[int], *, neighbours: int, run_id: int, server_round: int) -> dict[int, frozenset[int]]:
    """Map each node of the cohort to the set of its neighbours (never itself)."""
    nodes = sorted(set(cohort))
    n = len(nodes)
    if not 1 <= neighbours <= n - 1:
        raise ValueError(f"neighbours={neighbours} must be between 1 and {n - 1}")
    if neighbours == n - 1:
        return {node: frozenset(x for x in nodes if x != node) for node in nodes}

    def ring_key(node: int) -> bytes:
        return hashlib.sha256(
            b"flsuite-secagg/v1/ring" + run_id.to_bytes(8, "big") + server_round.to_bytes(8, "big") + node.to_bytes(8, "big")
        ).digest()

    ring = sorted(nodes, key=ring_key)
    half = neighbours // 2
    graph: dict[int, frozenset[int]] = {}
    for pos, node in enumerate(ring):
        graph[node] = frozenset(ring[(pos + step) % n] for step in range(-half, half + 1) if step)
    return graph


def share_group(graph: dict[int, frozenset[int]], node: int) -> list[int]:
    """Holders of ``node``'s shares in share-index order: its neighbours and itself, sorted.

    The share index of a holder is its position in this list plus one.
    """
    return sorted(graph[node] | {node})
