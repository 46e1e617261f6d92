"""The site's privacy ledger: an append-only, hash-chained JSON-lines file of DP events.

Each line is ``{"event": {...}, "prev": <hash of the line before>, "hash": <sha256>}``; the
hash covers the previous hash and the event, so an edited, reordered or removed entry breaks
the chain and the ledger refuses to be read (fail closed, IntegrityError naming the line).

Durability: an append is one write of the whole line, then fsync of the file (and of its
folder when the file is new), under an exclusive fcntl lock, so concurrent appenders never
interleave. An entry counts once its newline is on disk. A crash mid-write can only leave an
unterminated last line; that entry was never acknowledged (the site replies only after
``append`` returns), so reading ignores it and the next append moves its bytes to
``<ledger>.torn`` and truncates it away, with a warning. Pass ``on_torn_tail="refuse"`` to
fail closed on it instead. POSIX only (fcntl).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

from flsuite.durable import fsync_dir
from flsuite.errors import IntegrityError, LedgerPathError
from flsuite.privacy.events import DpEvent, InvalidDpEvent

__all__ = ["GENESIS_HASH", "LedgerHead", "LedgerPathError", "PrivacyLedger"]

GENESIS_HASH = "0" * 64
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LedgerHead:
    """How many entries the ledger holds and the hash of the last one (a commitment a site
    can report each round, so that a reset or rewritten ledger shows up elsewhere)."""

    entries: int
    hash: str


def _entry_hash(prev: str, event_json: str) -> str:
    return hashlib.sha256(f"flsuite-privacy-ledger-v1\n{prev}\n{event_json}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Parsed:
    events: tuple[DpEvent, ...]
    head: str
    committed_bytes: int
    torn_tail: bytes


class PrivacyLedger:
    """Append-only DP events of one site, on the site's own disk."""

    def __init__(self, path: str | os.PathLike[str], *, on_torn_tail: str = "recover") -> None:
        if on_torn_tail not in ("recover", "refuse"):
            raise ValueError(f"on_torn_tail must be 'recover' or 'refuse', got {on_torn_tail!r}")
        self.path = Path(path)
        self.on_torn_tail = on_torn_tail

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r})"

    # -- reading -------------------------------------------------------------------------
    def events(self, fingerprint: str | None = None) -> tuple[DpEvent, ...]:
        """Every committed event, oldest first; only those of one data fingerprint if given."""
        parsed = self._read()
        if fingerprint is None:
            return parsed.events
        return tuple(e for e in parsed.events if e.data_fingerprint == fingerprint)

    def head(self) -> LedgerHead:
        parsed = self._read()
        return LedgerHead(len(parsed.events), parsed.head)

    def _read(self) -> _Parsed:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return _Parsed((), GENESIS_HASH, 0, b"")
        except OSError as error:
            raise self._path_error("read", error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._parse(_read_all(fd))
        except IsADirectoryError as error:
            raise self._path_error("read", error) from None
        finally:
            os.close(fd)

    def _parse(self, data: bytes) -> _Parsed:
        *lines, tail = data.split(b"\n")
        events: list[DpEvent] = []
        prev = GENESIS_HASH
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
                if not isinstance(record, dict) or set(record) != {"event", "prev", "hash"}:
                    raise ValueError("not a ledger entry")
                event = DpEvent.from_dict(record["event"])
            except (ValueError, InvalidDpEvent, UnicodeDecodeError):
                raise IntegrityError(f"privacy ledger {self.path} line {number}: not a valid entry") from None
            if record["prev"] != prev:
                raise IntegrityError(f"privacy ledger {self.path} line {number}: hash chain broken")
            expected = _entry_hash(prev, event.to_json())
            if record["hash"] != expected:
                raise IntegrityError(f"privacy ledger {self.path} line {number}: checksum mismatch")
            events.append(event)
            prev = expected
        if tail and self.on_torn_tail == "refuse":
            raise IntegrityError(f"privacy ledger {self.path} line {len(lines) + 1}: incomplete last entry")
        return _Parsed(tuple(events), prev, len(data) - len(tail), tail)

    # -- writing -------------------------------------------------------------------------
    def append(self, event: DpEvent) -> LedgerHead:
        """Durably append one event; returns the new head. Refuses (IntegrityError) to append
        to a ledger that does not verify."""
        if not isinstance(event, DpEvent):
            raise TypeError(f"append takes a DpEvent, got {type(event).__name__}")
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise self._path_error("write", error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                fsync_dir(self.path.parent)
            parsed = self._parse(_read_all(fd))
            if parsed.torn_tail:
                self._set_aside(parsed.torn_tail)
                os.ftruncate(fd, parsed.committed_bytes)
            event_json = event.to_json()
            entry_hash = _entry_hash(parsed.head, event_json)
            line = f'{{"event":{event_json},"hash":"{entry_hash}","prev":"{parsed.head}"}}\n'.encode()
            os.lseek(fd, parsed.committed_bytes, os.SEEK_SET)
            _write_all(fd, line)
            os.fsync(fd)
        except OSError as error:
            raise self._path_error("write", error) from None
        finally:
            os.close(fd)
        return LedgerHead(len(parsed.events) + 1, entry_hash)

    def _set_aside(self, torn: bytes) -> None:
        side = self.path.with_name(self.path.name + ".torn")
        _log.warning(
            "privacy ledger %s: an unterminated last entry (%d bytes) from an interrupted write "
            "was never acknowledged; moved to %s and removed",
            self.path, len(torn), side,
        )
        fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_all(fd, torn + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _path_error(self, action: str, error: OSError) -> LedgerPathError:
        return LedgerPathError(
            f"cannot {action} the privacy ledger at {self.path}: {error.strerror or error}. "
            "Point the site's ledger path to a file in a folder this process can write."
        )


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

