"""The SQLite catalogue: an index of versions and alias moves, rebuilt from the audit log.

The audit log is the record of truth; the catalogue is the fast index derived from it.
Rows are applied in one transaction per log entry together with `applied_seq`, so after
a crash the catalogue is at most behind the log, never ahead, and the next writer
replays what is missing. Triggers make versions and alias moves immutable.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from flsuite.audit.canonical import canonical_json
from flsuite.audit.log import AuditEntry
from flsuite.registry.manifest import VersionInfo

__all__ = ["Catalogue", "VERSION_KIND", "ALIAS_KIND"]

VERSION_KIND = "version.published"
ALIAS_KIND = "alias.moved"

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
                    self._insert_version(entry)
                elif entry.kind == ALIAS_KIND:
                    p = entry.payload
                    self._db.execute("INSERT INTO alias_moves VALUES (?, ?, ?, ?, ?, ?)",
                                     (entry.seq, p["alias"], p["action"], p["from_version"],
                                      p["to_version"], entry.time))
            self._db.execute("INSERT INTO meta VALUES ('applied_seq', ?) ON CONFLICT(key) DO "
                             "UPDATE SET value = excluded.value", (str(entries[-1].seq),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value", (key, value))

    def _insert_version(self, entry: AuditEntry) -> None:
        p = entry.payload
        m = p["manifest"]
        self._db.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (m["version"], m["run_id"], m["study_id"], m["round"], m["parent"],
             m["blob"]["sha256"], m["blob"]["stored_sha256"], canonical_json(m).decode("utf-8"),
             p["manifest_hash"], p["manifest_sig"], entry.seq, m["created_at"]))

    @staticmethod
    def _info(row: sqlite3.Row) -> VersionInfo:
        return VersionInfo.from_manifest(json.loads(row["manifest"]), manifest_hash=row["manifest_hash"],
                                         manifest_sig=row["manifest_sig"], seq=row["seq"])
