"""Stragglers and dead sites: which nodes missed too many rounds in a row to be asked again.

A round closes at its deadline (``federation.round_timeout_s``; per stage in a secure round)
with the valid replies that arrived. A node of the cohort that gave none in time (no reply,
an error reply, or a status query it left unanswered) has *missed* the round; so has a node
the study knew that is no longer in the federation's node list (a SuperNode that died and
whose heartbeats stopped). A node that
misses ``federation.max_missed_rounds`` rounds in a row is *pruned*: no later round waits
for it, and the study records it (summary ``pruned_sites``, the console, the registry's audit
log) with the round and the reason. One valid reply resets its count: a site that misses a
round and then answers again is not pruned.

A pruned node is never asked again under the same standing. It comes back only through
planning: as a new node (a restarted SuperNode), which the round loop plans like any node it
has not seen (its status, and in a DP study its privacy plan: ``admission``); or, with the
same node id, only after it left the federation's node list and reappeared there (a node
that was offline and reconnected), when its earlier declaration and plan are forgotten and it
is planned afresh. A node that stays listed but silent stays pruned: it costs no round its
timeout again.

Pure bookkeeping: no Flower, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MissedRounds", "PrunedSite", "pruning_text"]


@dataclass(frozen=True)
class PrunedSite:
    """A node left out of later rounds after ``misses`` rounds in a row without a valid reply."""

    round: int  # the round whose miss pruned it: it is not asked from round + 1 on
    node_id: int
    name: str | None
    misses: int
    reason: str

    def to_summary(self) -> dict[str, Any]:
        return {"round": self.round, "node_id": self.node_id, "site": self.name, "misses": self.misses, "reason": self.reason}

    def text(self) -> str:
        who = f"site {self.name!r} (node {self.node_id})" if self.name else f"node {self.node_id}"
        return f"round {self.round}: {who} pruned: {self.reason}"


def pruning_text(pruned: Iterable[PrunedSite]) -> str:
    """The pruned sites in a few words (for the message of a study that ran out of sites)."""
    names = [p.name or f"node {p.node_id}" for p in pruned]
    return f"; pruned after too many missed rounds: {', '.join(names)}" if names else ""


class MissedRounds:
    """Counts each node's missed rounds in a row and prunes it at ``max_missed``."""

    def __init__(self, max_missed: int, *, deadline_s: float | None = None) -> None:
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 1:
            raise ValueError(f"max_missed must be an integer >= 1, got {max_missed!r}")
        self.max_missed = max_missed
        self.deadline_s = deadline_s
        self.streak: dict[int, int] = {}
        self.pruned: dict[int, PrunedSite] = {}
        self.history: list[PrunedSite] = []  # every pruning, in order (a node re-admitted and pruned again: twice)
        self.readmitted: list[dict[str, Any]] = []
        self._gone: set[int] = set()  # pruned nodes seen missing from the federation's node list

    def update(self, server_round: int, asked: Iterable[int], missed: Iterable[int], *, names: Mapping[int, str] | None = None,
               stage: str = "train") -> list[PrunedSite]:
        """Record one round: ``asked`` were asked, ``missed`` gave no valid reply in time. Returns the newly pruned.

        ``stage``: what the missed nodes were asked ("train", "status"), or "node-list" for nodes no longer listed.
        """
        missed = set(missed)
        names = names or {}
        newly: list[PrunedSite] = []
        for node in sorted(set(asked) | missed):
            if node in self.pruned:
                continue
            if node not in missed:
                self.streak[node] = 0
                continue
            self.streak[node] = self.streak.get(node, 0) + 1
            if self.streak[node] >= self.max_missed:
                deadline = f" (deadline {self.deadline_s:g} s)" if self.deadline_s is not None else ""
                what = ("no longer in the federation's node list" if stage == "node-list"
                        else f"no valid reply in time{deadline} to its {stage} request")
                reason = (f"missed {self.streak[node]} rounds in a row (last: {what}), "
                          f"federation.max_missed_rounds={self.max_missed}; no later round waits for it")
                pruned = PrunedSite(round=server_round, node_id=node, name=names.get(node), misses=self.streak[node], reason=reason)
                self.pruned[node] = pruned
                self.history.append(pruned)
                newly.append(pruned)
        return newly

    def returning(self, server_round: int, listed: Iterable[int]) -> list[int]:
        """Pruned nodes that left the node list and are listed again: to be planned afresh (and no longer pruned)."""
        listed = set(listed)
        back = sorted(node for node in self._gone if node in listed)
        self._gone.update(node for node in self.pruned if node not in listed)
        for node in back:
            self._gone.discard(node)
            gone = self.pruned.pop(node)
            self.streak[node] = 0
            self.readmitted.append({"round": server_round, "node_id": node, "site": gone.name,
                                    "reason": f"node {node} reconnected after it was pruned in round {gone.round}: planned afresh"})
        return back

    def held_out(self) -> set[int]:
        """The nodes no round asks now."""
        return set(self.pruned)
