"""The one append-only, hash-chained JSON-lines log under the privacy ledger and the audit log.

A line is the canonical JSON of one entry: the user's body fields, ``prev`` (the hash of the
entry before) and ``hash`` = sha256(domain "\\n" prev "\\n" canonical body), plus any fields
the user declared unhashed (the audit log's signature over ``hash``). The domain names the
user, so an entry of one log never verifies as an entry of another.

Rules every user shares:
- genesis: the first entry's prev is GENESIS (64 zeros); an absent or empty log has head
  (0 entries, GENESIS).
- torn tail: an entry counts once its newline is on disk. An unterminated last line is a
  write that was never acknowledged: reading ignores it and reports it (`ChainRead.torn`);
  the next append (or `repair_torn_tail`) moves its bytes to ``<file>.torn`` and truncates
  it away, under the exclusive lock.
- locking: writers hold an exclusive flock on the file, readers a shared one.
- durability: one write of the whole line, then fsync of the file (and of its folder when
  the file is new).
- fail closed: reading and appending verify every line (or, for bytes a read verified before,
  that they are still exactly those bytes) and refuse, with an IntegrityError naming the line,
  a log whose chain is broken.
POSIX only (fcntl).

A log is read many times as it grows (a site's ledger several times per training, a registry's
audit log at every publish), so the committed bytes a read verified are remembered
(``VerifiedPrefixes``): a later read whose bytes begin with exactly those bytes verifies only the
lines after them. A full ``read`` decodes the earlier lines again (into new objects); an append,
``head``, ``last`` and ``read_after`` (the entries after a head the caller holds) do not decode them
at all: what they pay for the earlier lines is reading the file and comparing its bytes (a log over
a quarter of the budget: their SHA-256), not parsing JSON.
The check is on the bytes themselves, not on file stamps: any change inside them (an edited,
removed or reordered line, a rewritten file) is a different prefix and is verified in full.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from flsuite.errors import IntegrityError
from flsuite.storage.canonical import canonical_json
from flsuite.storage.durable import fsync_dir

__all__ = ["GENESIS", "ChainEntry", "ChainHead", "ChainRead", "ChainTail", "HashChainLog", "entry_hash"]

GENESIS = "0" * 64
_LINK_FIELDS = frozenset({"prev", "hash"})
_log = logging.getLogger(__name__)


def entry_hash(domain: str, prev: str, body: Mapping[str, Any]) -> str:
    """The hash of an entry: SHA-256 over the log's domain, the previous hash and the body."""
    return hashlib.sha256(b"%s\n%s\n%s" % (domain.encode(), prev.encode(), canonical_json(body))).hexdigest()


@dataclasses.dataclass(frozen=True)
class ChainHead:
    """How many entries a log holds and the hash of the last one (GENESIS when empty): a
    commitment a user can report or sign, so that a reset or rewritten log shows up elsewhere."""

    entries: int
    hash: str


@dataclasses.dataclass(frozen=True)
class ChainEntry:
    """One verified entry: its line number (from 1), body, links and unhashed fields."""

    number: int
    body: dict[str, Any]
    prev: str
    hash: str
    unhashed: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """The whole line as a JSON object."""
        return {**self.body, **self.unhashed, "prev": self.prev, "hash": self.hash}


@dataclasses.dataclass(frozen=True)
class ChainRead:
    """A verified read: the committed entries, the head, and the bytes of a torn last line."""

    entries: tuple[ChainEntry, ...]
    head: ChainHead
    torn: bytes
    committed_bytes: int


@dataclasses.dataclass(frozen=True)
class _Tail:
    """What verifying a log's new lines gives: the head, the bytes verified before (their lines
    not decoded), the entries after them, the torn bytes, and the committed bytes' length."""

    head: ChainHead
    known: int
    entries: tuple[ChainEntry, ...]
    torn: bytes
    committed: int


@dataclasses.dataclass(frozen=True)
class ChainTail:
    """The entries after a head the caller already holds (``HashChainLog.read_after``), the head,
    and the bytes of a torn last line."""

    entries: tuple[ChainEntry, ...]
    head: ChainHead
    torn: bytes


BodySource = Mapping[str, Any] | Callable[[ChainHead], Mapping[str, Any]]


class HashChainLog:
    """One hash-chained JSON-lines file.

    `domain` separates this log's hashes from every other's; `unhashed` names the fields
    a line carries besides its body that the hash does not cover (they are given at append
    time as a function of the new hash, e.g. a signature); `check_body` raises ValueError on
    a body the user cannot read (checked on every read and before every append); `name`
    opens every error message; `mode` is the file's mode when created.
    """

    def __init__(self, path: str | os.PathLike[str], *, domain: str, name: str,
                 unhashed: Collection[str] = (), check_body: Callable[[dict[str, Any]], object] | None = None,
                 mode: int = 0o600) -> None:
        if not domain or "\n" in domain:
            raise ValueError(f"domain must be a non-empty single line, got {domain!r}")
        if _LINK_FIELDS & set(unhashed):
            raise ValueError(f"unhashed fields {sorted(unhashed)} may not be 'prev' or 'hash'")
        self.path = Path(path)
        self.domain = domain
        self.name = name
        self.unhashed = frozenset(unhashed)
        self.check_body = check_body
        self.mode = mode

    def __repr__(self) -> str:
        return f"HashChainLog({str(self.path)!r}, domain={self.domain!r})"

    # -- reading -------------------------------------------------------------------------
    def read(self) -> ChainRead:
        """Every committed entry, verified; IntegrityError naming the first bad line."""
        return self._parse(self._read_bytes())

    def head(self) -> ChainHead:
        """The verified head (``peek``'s first part)."""
        return self.peek()[0]

    def peek(self) -> tuple[ChainHead, bytes]:
        """The verified head and the bytes of a torn last line. Only the lines not verified before
        are decoded; the earlier ones are compared with the bytes a read verified."""
        tail = self._verify_tail(self._read_bytes())
        return tail.head, tail.torn

    def last(self) -> ChainEntry | None:
        """The last committed entry of a log whose chain verifies (None when empty).

        Only the lines not verified before are decoded and checked, and the last line; the
        earlier ones are compared with what a read verified (``VerifiedPrefixes``), not decoded.
        """
        data = self._read_bytes()
        tail = self._verify_tail(data)
        if tail.entries:
            return tail.entries[-1]
        if tail.head.entries == 0:
            return None
        start = data.rfind(b"\n", 0, tail.committed - 1) + 1
        return self._decode(data[start : tail.committed - 1], tail.head.entries, verify=False)

    def read_after(self, known: ChainHead) -> ChainTail | None:
        """The verified entries after ``known``, when ``known`` is the head of the log's first
        ``known.entries`` lines and those lie within the bytes a read of this log verified before;
        None otherwise (then read the log in full). The lines up to ``known`` are compared, not
        decoded: a user that keeps what it built from them (the ledger's folded state) decodes only
        the lines after them. IntegrityError naming the first bad line, as ``read``.
        """
        data = self._read_bytes()
        tail = self._verify_tail(data)
        verified = tail.head.entries - len(tail.entries)  # lines in the prefix verified before
        if not known.entries <= verified:
            return None
        # the verified prefix's lines after ``known``, if any (checked before: decoded, not checked again)
        lines = data[: tail.known].split(b"\n")[known.entries : verified] if known.entries < verified else []
        between = tuple(self._decode(line, number, verify=False) for number, line in enumerate(lines, start=known.entries + 1))
        entries = (*between, *tail.entries)
        if (entries[0].prev if entries else tail.head.hash) != known.hash:
            return None
        return ChainTail(entries, tail.head, tail.torn)

    def read_lines(self) -> tuple[list[bytes], bytes]:
        """(committed lines without their newline, bytes of a torn last line or b''), not
        verified: for an auditor who checks and reports every line itself."""
        *lines, torn = self._read_bytes().split(b"\n")
        return lines, torn

    def _read_bytes(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return _read_all(fd)
        finally:
            os.close(fd)

    def _cache_key(self) -> tuple[Any, ...]:
        return (str(self.path), self.domain, self.unhashed, self.check_body)

    def _parse(self, data: bytes) -> ChainRead:
        tail = self._verify_tail(data)
        *known, _ = data[: tail.known].split(b"\n")
        entries = [self._decode(line, number, verify=False) for number, line in enumerate(known, start=1)]
        return ChainRead((*entries, *tail.entries), tail.head, tail.torn, tail.committed)

    def _verify_tail(self, data: bytes) -> _Tail:
        """Verify the committed lines after the longest prefix of ``data`` verified before
        (all of them when none was), and remember the committed bytes as verified.

        IntegrityError naming the first bad line. The prefix's lines are not decoded: a caller
        that needs only the head, or the last entry, decodes the new lines alone.
        """
        key = self._cache_key()
        known, head = _VERIFIED.prefix(key, data) or (0, ChainHead(0, GENESIS))
        *lines, torn = data[known:].split(b"\n")
        entries: list[ChainEntry] = []
        prev = head.hash
        for number, line in enumerate(lines, start=head.entries + 1):
            entry = self._decode(line, number)
            if entry.prev != prev:
                raise self._broken(number, "hash chain broken")
            if entry.hash != entry_hash(self.domain, prev, entry.body):
                raise self._broken(number, "checksum mismatch")
            entries.append(entry)
            prev = entry.hash
        committed = len(data) - len(torn)
        head = ChainHead(head.entries + len(entries), prev)
        if committed > known:
            _VERIFIED.remember(key, data[:committed], head)
        return _Tail(head, known, tuple(entries), torn, committed)

    def _decode(self, line: bytes, number: int, *, verify: bool = True) -> ChainEntry:
        """One line as an entry; ``verify=False`` only for a line of bytes a read already verified
        (it is decoded again, into new objects, but not checked again)."""
        try:
            record = _json_object(line)
        except (ValueError, UnicodeDecodeError):
            raise self._broken(number, "not a valid entry") from None
        required = _LINK_FIELDS | self.unhashed
        if not required <= record.keys() or not all(isinstance(record[k], str) for k in _LINK_FIELDS):
            raise self._broken(number, "not a valid entry")
        if verify and canonical_json(record) != line:
            raise self._broken(number, "not in canonical form")
        body = {k: v for k, v in record.items() if k not in required}
        if verify and self.check_body is not None:
            try:
                self.check_body(body)
            except ValueError:
                raise self._broken(number, "not a valid entry") from None
        return ChainEntry(number, body, record["prev"], record["hash"],
                          {k: record[k] for k in sorted(self.unhashed)})

    def _broken(self, number: int, what: str) -> IntegrityError:
        return IntegrityError(f"{self.name} {self.path} line {number}: {what}")

    # -- writing -------------------------------------------------------------------------
    def append(self, body: BodySource, *,
               unhashed: Callable[[str], Mapping[str, Any]] | None = None) -> ChainEntry:
        """Durably append one entry after verifying the log (``_verify_tail``); returns the new entry.

        `body` is the entry's fields, or a function of the current head that returns them
        (for entries that number themselves); `unhashed` maps the new entry's hash to the
        fields declared unhashed (e.g. a signature of it).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                fsync_dir(self.path.parent)
            current = self._verify_tail(_read_all(fd))
            if current.torn:
                self._set_aside(fd, current.torn, current.committed)
            entry = self._seal(body(current.head) if callable(body) else body, current.head, unhashed)
            os.lseek(fd, current.committed, os.SEEK_SET)
            _write_all(fd, canonical_json(entry.record()) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def repair_torn_tail(self) -> int:
        """Set aside and cut off a torn last line now; the number of bytes removed."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.lseek(fd, 0, os.SEEK_END)
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                return 0  # ends with a whole line: nothing torn (and nothing more to read)
            data = _read_all(fd)
            committed = data.rfind(b"\n") + 1
            torn = data[committed:]
            self._set_aside(fd, torn, committed)
            return len(torn)
        finally:
            os.close(fd)

    def _seal(self, body: Mapping[str, Any], head: ChainHead,
              unhashed: Callable[[str], Mapping[str, Any]] | None) -> ChainEntry:
        body = dict(body)
        clash = (_LINK_FIELDS | self.unhashed) & body.keys()
        if clash:
            raise ValueError(f"{self.name}: body fields {sorted(clash)} are reserved")
        digest = entry_hash(self.domain, head.hash, body)
        extra = dict(unhashed(digest)) if unhashed is not None else {}
        if extra.keys() != self.unhashed:
            raise ValueError(f"{self.name}: unhashed fields {sorted(extra)} are not the declared "
                             f"{sorted(self.unhashed)}")
        return ChainEntry(head.entries + 1, body, head.hash, digest, extra)

    def _set_aside(self, fd: int, torn: bytes, committed: int) -> None:
        """Under the exclusive lock: keep the torn bytes in <file>.torn, then truncate them."""
        side = self.path.with_name(self.path.name + ".torn")
        _log.warning(
            "%s %s: an unterminated last entry (%d bytes) from an interrupted write was never "
            "acknowledged; moved to %s and removed", self.name, self.path, len(torn), side,
        )
        side_fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_all(side_fd, torn + b"\n")
            os.fsync(side_fd)
        finally:
            os.close(side_fd)
        os.ftruncate(fd, committed)
        os.fsync(fd)


@dataclasses.dataclass(frozen=True)
class _Prefix:
    """Committed bytes a read verified: held whole (``held``), or, for a log too large to hold, as
    their SHA-256 (``digest``); exactly one of the two is set."""

    length: int
    held: bytes | None
    digest: bytes | None
    head: ChainHead

    def begins(self, data: bytes) -> bool:
        """Whether ``data`` begins with exactly these bytes."""
        if self.held is not None:
            return data.startswith(self.held)
        return len(data) >= self.length and hashlib.sha256(memoryview(data)[: self.length]).digest() == self.digest


class VerifiedPrefixes:
    """The committed bytes of the last verified read of each log (by path, domain and rules)
    and the head they verified to, within a byte budget: a read whose bytes begin with them
    verifies only the rest.

    Only what a full verification accepted is kept, and a prefix is reused only when the new
    bytes begin with it byte for byte, so a read reports exactly what verifying every line would.
    A log larger than a quarter of the budget (a registry's audit log after many studies) is
    remembered by the SHA-256 of its bytes instead, so that it too is not verified in full again.
    """

    def __init__(self, *, most_bytes: int = 64 << 20) -> None:
        self._most_bytes = most_bytes
        self._prefixes: OrderedDict[tuple[Any, ...], _Prefix] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def _get(self, key: tuple[Any, ...]) -> _Prefix | None:
        with self._lock:
            hit = self._prefixes.get(key)
            if hit is not None:
                self._prefixes.move_to_end(key)
            return hit

    def prefix(self, key: tuple[Any, ...], data: bytes) -> tuple[int, ChainHead] | None:
        """The length and head of the prefix of ``data`` verified before, or None."""
        hit = self._get(key)
        return (hit.length, hit.head) if hit is not None and hit.begins(data) else None

    def remember(self, key: tuple[Any, ...], committed: bytes, head: ChainHead) -> None:
        """Keep ``committed`` (bytes a full verification accepted, to ``head``) as the log's verified prefix."""
        if len(committed) > self._most_bytes // 4:
            prefix = _Prefix(len(committed), None, hashlib.sha256(committed).digest(), head)
        else:
            prefix = _Prefix(len(committed), committed, None, head)
        with self._lock:
            old = self._prefixes.pop(key, None)
            self._held -= _size(old)
            self._prefixes[key] = prefix
            self._held += _size(prefix)
            while self._held > self._most_bytes:
                self._held -= _size(self._prefixes.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._prefixes.clear()
            self._held = 0


def _size(prefix: _Prefix | None) -> int:
    """What a remembered prefix counts against the budget: its bytes, or its digest's."""
    if prefix is None:
        return 0
    return len(prefix.held) if prefix.held is not None else len(prefix.digest or b"")


_VERIFIED = VerifiedPrefixes()


def _json_object(line: bytes) -> dict[str, Any]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


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
