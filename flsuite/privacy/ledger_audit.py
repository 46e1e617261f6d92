"""An auditor's check of one site's privacy ledger, offline, against the head the site signed.

Given a site's ledger (a copy is enough), its anchored head (``<ledger>.head``) and the
site's pinned public identity, it checks that the hash chain verifies, that the anchored
head is signed by that identity, and that the ledger holds exactly what was signed (not
cut, not rewritten); then it recomputes the site's total epsilon from every charged event
(final events and open reservations) with Google's dp_accounting PLD accountant, an
accountant flsuite did not write. Pure: no torch, no flwr.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable
from pathlib import Path

from flsuite.errors import FlsuiteError, ProtocolError
from flsuite.privacy.accounting import step_event
from flsuite.privacy.anchor import anchor_path, verify_head
from flsuite.privacy.events import DpEvent
from flsuite.privacy.ledger import LedgerState, PrivacyLedger
from flsuite.protocol import LedgerHead

__all__ = ["LedgerAudit", "audit_ledger", "pld_epsilon", "pld_epsilon_of_phases"]


@dataclasses.dataclass(frozen=True)
class LedgerAudit:
    """What the auditor found; ``ok`` only when every check passed."""

    ledger: Path
    entries: int
    head_hash: str
    anchored: LedgerHead | None
    signature: str  # "verified", "not signed by the pinned identity", "not checked: ..."
    problems: tuple[str, ...]
    charged: tuple[DpEvent, ...]
    delta: float | None
    epsilon_pld: float | None
    state: LedgerState | None = dataclasses.field(default=None, repr=False, compare=False)  # the verified read; None when it failed

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "ledger": str(self.ledger),
            "ok": self.ok,
            "entries": self.entries,
            "head_hash": self.head_hash,
            "anchored_head": self.anchored.to_record() if self.anchored else None,
            "signature": self.signature,
            "problems": list(self.problems),
            "charged_events": len(self.charged),
            "delta": self.delta,
            "epsilon_pld": self.epsilon_pld,
        }


def pld_epsilon(events: tuple[DpEvent, ...], delta: float) -> float:
    """Epsilon of every event composed, by dp_accounting's PLD accountant (pessimistic estimate)."""
    return pld_epsilon_of_phases([event.phase for event in events], delta)


def pld_epsilon_of_phases(phases: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of (sample rate q, noise multiplier sigma, steps) phases composed, by dp_accounting's PLD;
    each step is the accountant's ``step_event`` (q = 1: the plain Gaussian mechanism, not sampled)."""
    grouped: dict[tuple[float, float], int] = {}
    for q, sigma, steps in phases:  # composition commutes: equal mechanisms compose in one self-composition
        if steps:
            grouped[(float(q), float(sigma))] = grouped.get((float(q), float(sigma)), 0) + int(steps)
    if not grouped:
        return 0.0
    return _pld_epsilon(tuple(sorted(grouped.items())), float(delta))


@functools.lru_cache(maxsize=256)
def _pld_epsilon(grouped: tuple[tuple[tuple[float, float], int], ...], delta: float) -> float:
    from dp_accounting import pld

    accountant = pld.PLDAccountant()
    for (q, sigma), steps in grouped:
        accountant.compose(step_event(q, sigma), steps)
    return float(accountant.get_epsilon(delta))


def audit_ledger(ledger: str | Path, *, public_key: bytes | None) -> LedgerAudit:
    """Check one ledger against its anchored head and recompute its spend with PLD."""
    ledger = Path(ledger)
    problems: list[str] = []
    try:
        state = PrivacyLedger(ledger).state()
    except FlsuiteError as error:
        return LedgerAudit(ledger, 0, "", None, "not checked: the ledger does not verify", (str(error),), (), None, None)
    anchored = _read_anchor(anchor_path(ledger), problems)
    signature = "not checked: no pinned identity given"
    if anchored is not None:
        if public_key is not None:
            signature = "verified" if verify_head(anchored, public_key) else "not signed by the pinned identity"
            if signature != "verified":
                problems.append(f"the anchored head is {signature}")
        if state.head.entries < anchored.entries:
            problems.append(f"the ledger holds {state.head.entries} entries, fewer than the {anchored.entries} its site signed (cut)")
        elif state.hash_at(anchored.entries) != anchored.hash:
            problems.append(f"entry {anchored.entries} differs from the head its site signed (rewritten)")
    charged = state.charged()
    deltas = {event.delta for event in charged}
    delta = max(deltas) if deltas else None
    epsilon = pld_epsilon(charged, delta) if delta is not None else 0.0
    return LedgerAudit(ledger, state.head.entries, state.head.hash, anchored, signature, tuple(problems), charged, delta, epsilon,
                       state)


def _read_anchor(path: Path, problems: list[str]) -> LedgerHead | None:
    try:
        return LedgerHead.from_record(json.loads(path.read_text()))
    except FileNotFoundError:
        problems.append(f"no anchored head at {path}: the ledger cannot be checked against what its site signed")
    except (ValueError, ProtocolError) as error:
        problems.append(f"the anchored head {path} is malformed ({error})")
    return None
