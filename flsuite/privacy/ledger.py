"""The site's privacy ledger: the DP events of one site, in the shared hash-chained log.

Each line is ``{"event": {...}, "prev": ..., "hash": ...}`` in `flsuite.storage.HashChainLog`
under the domain LEDGER_DOMAIN, which gives the ledger its rules: the genesis hash, one
write + fsync per event under an exclusive lock, and the torn-tail rule (an unterminated
last line was never acknowledged, since the site replies only after ``append`` returns:
reading ignores it, the next append moves it to ``<ledger>.torn``). An edited, reordered
or removed entry fails closed with an IntegrityError naming the line. Pass
``on_torn_tail="refuse"`` to fail closed on a torn tail too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flsuite.errors import IntegrityError, LedgerPathError
from flsuite.privacy.events import DpEvent, InvalidDpEvent
from flsuite.storage.chain import GENESIS, ChainHead, ChainRead, HashChainLog

__all__ = ["GENESIS_HASH", "LEDGER_DOMAIN", "LedgerHead", "LedgerPathError", "PrivacyLedger"]

LEDGER_DOMAIN = "flsuite.privacy.ledger/2"
GENESIS_HASH = GENESIS
LedgerHead = ChainHead  # (entries, hash of the last one): what a site reports each round




class PrivacyLedger:
    """Append-only DP events of one site, on the site's own disk."""

    def __init__(self, path: str | os.PathLike[str], *, on_torn_tail: str = "recover") -> None:
        if on_torn_tail not in ("recover", "refuse"):
            raise ValueError(f"on_torn_tail must be 'recover' or 'refuse', got {on_torn_tail!r}")
        self.path = Path(path)
        self.on_torn_tail = on_torn_tail
        self._log = HashChainLog(self.path, domain=LEDGER_DOMAIN, name="privacy ledger", check_body=_event)

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r})"

    def events(self, fingerprint: str | None = None) -> tuple[DpEvent, ...]:
        """Every committed event, oldest first; only those of one data fingerprint if given."""
        read = self._read()
        events = tuple(_event(entry.body) for entry in read.entries)
        if fingerprint is None:
            return events
        return tuple(e for e in events if e.data_fingerprint == fingerprint)

    def head(self) -> LedgerHead:
        return self._read().head

    def append(self, event: DpEvent) -> LedgerHead:
        """Durably append one event; returns the new head. Refuses (IntegrityError) to append
        to a ledger that does not verify."""
        if not isinstance(event, DpEvent):
            raise TypeError(f"append takes a DpEvent, got {type(event).__name__}")
        try:
            entry = self._log.append({"event": event.to_dict()})
        except OSError as error:
            raise self._path_error("write", error) from None
        return LedgerHead(entry.number, entry.hash)

    def _read(self) -> ChainRead:
        try:
            read = self._log.read()
        except OSError as error:
            raise self._path_error("read", error) from None
        if read.torn and self.on_torn_tail == "refuse":
            raise IntegrityError(f"privacy ledger {self.path} line {read.head.entries + 1}: incomplete last entry")
        return read

    def _path_error(self, action: str, error: OSError) -> LedgerPathError:
        return LedgerPathError(
            f"cannot {action} the privacy ledger at {self.path}: {error.strerror or error}. "
            "Point the site's ledger path to a file in a folder this process can write."
        )


def _event(body: dict[str, Any]) -> DpEvent:
    """The DP event of an entry's body; ValueError if the body is not one."""
    if set(body) != {"event"}:
        raise ValueError("not a ledger entry")
    try:
        return DpEvent.from_dict(body["event"])
    except InvalidDpEvent as exc:
        raise ValueError(str(exc)) from None
