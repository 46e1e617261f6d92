"""The operator's side of a site's privacy ledger: create it with its genesis anchor, or reset it.

A site's ledger is created together with its signed genesis anchor (entries 0) by
``flsuite site start`` (a real site) or when a simulated site's folder is made. After that
the site only ever checks its ledger against the anchor, and fails closed when they do not
match. Starting over is only ever this explicit, logged command: ``reset_ledger`` archives
the old ledger and anchor (renamed with a time stamp; never deleted), writes a fresh
genesis anchor and appends what it did to ``<ledger>.reset.log`` beside the ledger.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from flsuite.errors import FlsuiteError
from flsuite.privacy import LedgerAnchor, PrivacyLedger, anchor_path, utc_now_iso
from flsuite.secagg import load_identity

__all__ = ["LedgerReset", "ensure_site_ledger", "reset_ledger", "reset_log_path"]


@dataclasses.dataclass(frozen=True)
class LedgerReset:
    """What a reset did: the archived files, what the old ledger held, the new anchor, the log."""

    ledger: Path
    archived: tuple[Path, ...]
    old_state: str
    log_file: Path

    def lines(self) -> list[str]:
        archived = ", ".join(str(p) for p in self.archived) or "nothing (no ledger and no anchor existed)"
        return [
            f"privacy ledger {self.ledger} reset by the operator",
            f"old ledger: {self.old_state}",
            f"archived (not deleted): {archived}",
            f"new genesis anchor: {anchor_path(self.ledger)}",
            f"logged to: {self.log_file}",
        ]


def reset_log_path(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".reset.log")


def ensure_site_ledger(ledger: Path, *, site: str, dataset: str, identity_key: Path) -> bool:
    """At site start: a brand-new site (neither ledger nor anchor) gets its genesis anchor
    (returns True, logged); an existing ledger is checked against its anchor (IntegrityError)."""
    anchor = LedgerAnchor(ledger, site=site, dataset=dataset, key=load_identity(identity_key))
    book = PrivacyLedger(ledger)
    with book.locked():
        if not ledger.exists() and not anchor.path.exists():
            anchor.write_genesis()
            _log_line(ledger, {"at": utc_now_iso(), "action": "genesis", "site": site, "dataset": dataset,
                               "anchor": str(anchor.path)})
            return True
        anchor.check(book.state())
    return False


def reset_ledger(ledger: Path, *, site: str, dataset: str, identity_key: Path) -> LedgerReset:
    """Archive the ledger and its anchor, write a fresh genesis anchor, log it; under the ledger's lock."""
    ledger = Path(ledger)
    anchor = LedgerAnchor(ledger, site=site, dataset=dataset, key=load_identity(identity_key))
    book = PrivacyLedger(ledger)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    with book.locked():
        try:
            state = book.state()
            old = f"{state.head.entries} entries, head {state.head.hash}, {len(state.open)} open reservations"
        except FlsuiteError as error:
            old = f"unreadable ({error})"
        archived = []
        for path in (ledger, anchor.path):
            if path.exists():
                target = path.with_name(f"{path.name}.archived-{stamp}")
                os.rename(path, target)
                archived.append(target)
        anchor.write_genesis()
        log_file = _log_line(ledger, {
            "at": utc_now_iso(), "action": "reset", "site": site, "dataset": dataset, "old_ledger": old,
            "archived": [str(p) for p in archived], "operator": _operator(),
        })
    return LedgerReset(ledger=ledger, archived=tuple(archived), old_state=old, log_file=log_file)


def _log_line(ledger: Path, record: dict) -> Path:
    return log_reset(reset_log_path(ledger), record)


def log_reset(path: Path, record: dict) -> Path:
    """Append one JSON line (with the time and the operator) to a reset log, durably."""
    record = {"at": utc_now_iso(), "operator": _operator(), **record}
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(record, sort_keys=True) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return path


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"
