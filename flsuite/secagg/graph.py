"""The SecAgg+ neighbour graph: which sites mask with, and hold Shamir shares for, which.

Both the coordinator and every site compute it from the cohort, run and round, so neither
side chooses it freely. With k neighbours (k even, k < n-1) the sites sit on a ring in an
order fixed by a hash of (run, round, node) and each takes k/2 neighbours on either side;
k = n-1 gives the complete graph of classic SecAgg.

``default_neighbours(n)`` is the SecAgg+ choice of k when the study does not set one:
k = 3·log2(n), rounded up to even, at most n-1 (Bell et al. 2020 keep k = O(log n)).
Its constant is sized for the rates we document: per round, up to 5% of the sites drop
out and up to 5% are corrupt and collude with the coordinator, each site independently
(threshold_fraction 0.6, so t = ceil(0.6(k+1)) of a site's k+1 share holders must answer).
By a union bound over the n sites of the ring, with the binomial tails of a site's k
neighbours:

    n      k    t   P(round aborts: > k+1-t of a group drop)   P(t of a group corrupt)
    10     9    6   3.3e-4                                        1.2e-5
    50    18   12   5.4e-5                                        1.7e-10
    100   20   13   2.0e-5                                        6.8e-11
    1000  30   19   6.5e-7                                        6.1e-15

(at 10% dropout and 10% corruption: 8.9e-3 / 6.4e-4 at 10 sites, 8.7e-3 / 5.2e-7 at 50).
The ring order is a hash of (run, round, node): sites corrupted *after* the coordinator
knows the round's ring can be chosen as one site's neighbours, which these numbers do not
cover; where that is the threat, set ``secagg.neighbours`` higher (or to cohort_size-1
for the complete graph).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

__all__ = ["default_neighbours", "neighbour_graph", "share_group"]

NEIGHBOURS_PER_LOG2 = 3


def default_neighbours(cohort_size: int) -> int:
    """SecAgg+'s k for a round of ``cohort_size`` sites: 3·log2(n) up to even, at most n-1."""
    if cohort_size < 3:
        raise ValueError(f"a secure round needs at least 3 sites, not {cohort_size}")
    k = math.ceil(NEIGHBOURS_PER_LOG2 * math.log2(cohort_size))
    k += k % 2
    return min(k, cohort_size - 1)


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


def share_group(graph: Mapping[int, frozenset[int]], node: int) -> list[int]:
    """Holders of ``node``'s shares in share-index order: its neighbours and itself, sorted.

    The share index of a holder is its position in this list plus one.
    """
    return sorted(graph[node] | {node})
