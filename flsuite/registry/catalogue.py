"""The SQLite catalogue: an index of versions and alias moves, rebuilt from the audit log.

The audit log is the record of truth; the catalogue is the fast index derived from it.
Rows are applied in one transaction per log entry together with `applied_seq`, so after
a crash the catalogue is at most behind the log, never ahead, and the next writer
replays what is missing. Triggers make versions and alias moves immutable.

Being a cache, the catalogue can be checked: `expected_state(entries)` rebuilds from log
entries the exact rows (versions, alias moves, applied_seq) the catalogue must hold, and
`differences(expected, Catalogue.state())` names every row that is missing, extra or
different, and every alias whose current target differs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flsuite.audit.canonical import canonical_json
from flsuite.audit.log import AuditEntry
from flsuite.registry.aliases import current_aliases
from flsuite.registry.manifest import VersionInfo

__all__ = ["Catalogue", "CatalogueState", "expected_state", "differences", "VERSION_KIND",
           "ALIAS_KIND"]

VERSION_KIND = "version.published"
ALIAS_KIND = "alias.moved"

_VERSION_COLUMNS = ("number", "run_id", "study_id", "round", "parent", "blob_sha256", "stored_sha256",
                    "manifest", "manifest_hash", "manifest_sig", "seq", "created_at")
_MOVE_COLUMNS = ("seq", "alias", "action", "from_version", "to_version", "time")


def _version_row(entry: AuditEntry) -> tuple[Any, ...]:
    """The versions row a version.published entry becomes (in _VERSION_COLUMNS order)."""
    p = entry.payload
    m = p["manifest"]
    return (m["version"], m["run_id"], m["study_id"], m["round"], m["parent"], m["blob"]["sha256"],
            m["blob"]["stored_sha256"], canonical_json(m).decode("utf-8"), p["manifest_hash"],
            p["manifest_sig"], entry.seq, m["created_at"])


def _move_row(entry: AuditEntry) -> tuple[Any, ...]:
    """The alias_moves row an alias.moved entry becomes (in _MOVE_COLUMNS order)."""
    p = entry.payload
    return (entry.seq, p["alias"], p["action"], p["from_version"], p["to_version"], entry.time)


@dataclass
class CatalogueState:
    """Everything the catalogue holds, as plain rows: what is compared with the log."""

    applied_seq: int = 0
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)  # number -> row
    moves: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> row

    def aliases(self) -> dict[str, int]:
        return current_aliases(self.moves[seq] for seq in sorted(self.moves))


def expected_state(entries: Iterable[AuditEntry]) -> CatalogueState:
    """The catalogue a writer builds by applying `entries` (KeyError/TypeError if malformed)."""
    state = CatalogueState()
    for entry in entries:
        if entry.kind == VERSION_KIND:
            row = dict(zip(_VERSION_COLUMNS, _version_row(entry), strict=True))
            state.versions[row["number"]] = row
        elif entry.kind == ALIAS_KIND:
            state.moves[entry.seq] = dict(zip(_MOVE_COLUMNS, _move_row(entry), strict=True))
        state.applied_seq = entry.seq
    return state


def differences(expected: CatalogueState, actual: CatalogueState) -> list[tuple[str, str]]:
    """(where, what) for every row of `actual` that is not exactly as in `expected`."""
    found: list[tuple[str, str]] = []
    if actual.applied_seq != expected.applied_seq:
        found.append(("catalogue applied_seq", f"is {actual.applied_seq}, the log gives "
                      f"{expected.applied_seq}"))
    for number in sorted(expected.versions.keys() | actual.versions.keys()):
        want, have = expected.versions.get(number), actual.versions.get(number)
        where = f"version {number}" + (f" (audit entry {want['seq']})" if want else "")
        if have is None:
            found.append((where, "missing from the catalogue"))
        elif want is None:
            found.append((where, "in the catalogue but not published in the audit log"))
        elif want != have:
            columns = ", ".join(c for c in _VERSION_COLUMNS if want[c] != have.get(c))
            found.append((where, f"the catalogue's row differs from the signed audit entry in "
                          f"{columns} (edited or swapped)"))
    for seq in sorted(expected.moves.keys() | actual.moves.keys()):
        want, have = expected.moves.get(seq), actual.moves.get(seq)
        where = f"alias move at audit entry {seq}"
        if have is None:
            found.append((where, f"missing from the catalogue (alias {want['alias']!r} -> "
                          f"version {want['to_version']})"))
        elif want is None:
            found.append((where, "in the catalogue but not in the audit log"))
        elif want != have:
            columns = ", ".join(c for c in _MOVE_COLUMNS if want[c] != have.get(c))
            found.append((where, f"the catalogue's row differs from the audit entry in {columns}"))
    want_aliases, have_aliases = expected.aliases(), actual.aliases()
    for alias in sorted(want_aliases.keys() | have_aliases.keys()):
        if want_aliases.get(alias) != have_aliases.get(alias):
            found.append((f"alias {alias!r}", f"the catalogue points it at version "
                          f"{have_aliases.get(alias)}, the audit log at {want_aliases.get(alias)}"))
    return found


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    number INTEGER PRIMARY KEY, run_id TEXT NOT NULL, study_id TEXT NOT NULL,
    round INTEGER NOT NULL, parent INTEGER, blob_sha256 TEXT NOT NULL,
    stored_sha256 TEXT NOT NULL, manifest TEXT NOT NULL, manifest_hash TEXT NOT NULL,
    manifest_sig TEXT NOT NULL, seq INTEGER NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS versions_by_run ON versions (run_id, number);
CREATE INDEX IF NOT EXISTS versions_by_blob ON versions (blob_sha256);
CREATE TABLE IF NOT EXISTS alias_moves (
    seq INTEGER PRIMARY KEY, alias TEXT NOT NULL, action TEXT NOT NULL,
    from_version INTEGER, to_version INTEGER NOT NULL, time TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS versions_immutable BEFORE UPDATE ON versions
    BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END;
CREATE TRIGGER IF NOT EXISTS versions_kept BEFORE DELETE ON versions
    BEGIN SELECT RAISE(ABORT, 'versions are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS alias_moves_immutable BEFORE UPDATE ON alias_moves
    BEGIN SELECT RAISE(ABORT, 'alias moves are immutable'); END;
CREATE TRIGGER IF NOT EXISTS alias_moves_kept BEFORE DELETE ON alias_moves
    BEGIN SELECT RAISE(ABORT, 'alias moves are never deleted'); END;
"""


class Catalogue:
    """One connection to `catalogue.sqlite`; read-only unless `writable`."""

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = Path(path)
        self.writable = writable
        if writable:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        else:
            try:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:  # a read-only copy without its -shm file
                self._db = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True,
                                           isolation_level=None)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        """Checkpoint the WAL into the main file (so a copied folder is complete) and close."""
        if self._db is None:
            return
        if self.writable:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._db = None

    # -- reading --
    def applied_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()
        return int(row[0]) if row else 0

    def versions(self, run_id: str | None = None) -> list[VersionInfo]:
        query, args = "SELECT * FROM versions", ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        return [self._info(row) for row in self._db.execute(query + " ORDER BY number", args)]

    def version(self, number: int) -> VersionInfo | None:
        row = self._db.execute("SELECT * FROM versions WHERE number = ?", (number,)).fetchone()
        return None if row is None else self._info(row)

    def rows(self) -> list[dict[str, Any]]:
        """Raw version rows, for verification."""
        return [dict(row) for row in self._db.execute("SELECT * FROM versions ORDER BY number")]

    def latest_number(self, run_id: str | None = None) -> int | None:
        query, args = "SELECT max(number) FROM versions", ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        return self._db.execute(query, args).fetchone()[0]

    def stored_hash_of_blob(self, blob_sha256: str) -> tuple[str, dict[str, Any]] | None:
        row = self._db.execute("SELECT stored_sha256, manifest FROM versions WHERE blob_sha256 = ? "
                               "ORDER BY number LIMIT 1", (blob_sha256,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1])["blob"])

    def state(self) -> CatalogueState:
        """Every row and applied_seq, for comparison with the log (ValueError if unreadable)."""
        self._db.execute("BEGIN")  # one snapshot, even while a writer applies entries
        try:
            versions = {row["number"]: row for row in self.rows()}
            moves = {row["seq"]: row for row in self.alias_moves()}
            return CatalogueState(applied_seq=self.applied_seq(), versions=versions, moves=moves)
        finally:
            self._db.execute("COMMIT")

    def alias_moves(self, alias: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM alias_moves", ()
        if alias is not None:
            query, args = query + " WHERE alias = ?", (alias,)
        return [dict(row) for row in self._db.execute(query + " ORDER BY seq", args)]

    # -- writing (one transaction per audit entry) --
    def apply(self, entries: list[AuditEntry]) -> None:
        """Apply audit entries (versions, alias moves) and advance applied_seq, in one transaction."""
        if not entries:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for entry in entries:
                if entry.kind == VERSION_KIND:
                    self._db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     _version_row(entry))
                elif entry.kind == ALIAS_KIND:
                    self._db.execute("INSERT INTO alias_moves VALUES (?, ?, ?, ?, ?, ?)", _move_row(entry))
            self._db.execute("INSERT INTO meta VALUES ('applied_seq', ?) ON CONFLICT(key) DO "
                             "UPDATE SET value = excluded.value", (str(entries[-1].seq),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value", (key, value))

    @staticmethod
    def _info(row: sqlite3.Row) -> VersionInfo:
        return VersionInfo.from_manifest(json.loads(row["manifest"]), manifest_hash=row["manifest_hash"],
                                         manifest_sig=row["manifest_sig"], seq=row["seq"])
