"""The append-only audit log: signed JSON lines, each holding the hash of the one before.

Each line is the canonical JSON of an entry: seq, time, kind, payload, prev (hash of the
previous entry, 64 zeros for the first), key (the signer's key id), hash (SHA-256 of the
canonical JSON of the six fields before it) and sig (Ed25519 over that hash). Appending
is one write of one whole line plus fsync; the caller holds the registry's lock. A
process killed mid-write can leave a last line without its newline: that line was never
committed, readers ignore it and the next writer cuts it off.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flsuite.audit.canonical import canonical_json, sha256_hex
from flsuite.audit.keys import key_id, sign
from flsuite.errors import IntegrityError

__all__ = ["AuditEntry", "AuditLog", "seal", "GENESIS_PREV", "ENTRY_DOMAIN"]

GENESIS_PREV = "0" * 64
ENTRY_DOMAIN = "flsuite.audit.entry/1"
_FIELDS = ("seq", "time", "kind", "payload", "prev", "key", "hash", "sig")


@dataclass(frozen=True)
class AuditEntry:
    """One sealed entry of the audit log (an immutable value)."""

    seq: int
    time: str
    kind: str
    payload: dict[str, Any]
    prev: str
    key: str
    hash: str
    sig: str

    def body(self) -> dict[str, Any]:
        """The fields the hash covers."""
        return {"seq": self.seq, "time": self.time, "kind": self.kind,
                "payload": self.payload, "prev": self.prev, "key": self.key}

    def computed_hash(self) -> str:
        """SHA-256 of the canonical body, recomputed from the content."""
        return sha256_hex(canonical_json(self.body()))

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash, "sig": self.sig}

    def to_line(self) -> bytes:
        return canonical_json(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, data: Any) -> AuditEntry:
        """Build from a parsed line; ValueError naming the field when the shape is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if set(data) != set(_FIELDS):
            raise ValueError(f"fields {sorted(data)} are not {sorted(_FIELDS)}")
        if not isinstance(data["seq"], int) or isinstance(data["seq"], bool) or data["seq"] < 1:
            raise ValueError("seq is not a positive integer")
        if not isinstance(data["payload"], dict):
            raise ValueError("payload is not an object")
        for name in ("time", "kind", "prev", "key", "hash", "sig"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name} is not a string")
        return cls(**{name: data[name] for name in _FIELDS})


def seal(*, seq: int, time: str, kind: str, payload: dict[str, Any], prev: str,
         signing_key: Ed25519PrivateKey) -> AuditEntry:
    """Make a signed entry; ValueError if the payload is not canonical JSON."""
    body = {"seq": seq, "time": time, "kind": kind, "payload": payload, "prev": prev,
            "key": key_id(signing_key)}
    digest = sha256_hex(canonical_json(body))
    return AuditEntry(**body, hash=digest, sig=sign(signing_key, ENTRY_DOMAIN, digest.encode()))


class AuditLog:
    """The log file of one registry; writers must hold the registry lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read_lines(self) -> tuple[list[bytes], bytes]:
        """(complete lines without their newline, bytes of a torn last line or b'')."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], b""
        complete, _, torn = data.rpartition(b"\n")
        lines = complete.split(b"\n") if complete or data.startswith(b"\n") else []
        return lines, torn

    def last(self) -> AuditEntry | None:
        """The last committed entry, read from the end of the file."""
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                end = self._committed_end(handle, size)
                if end == 0:
                    return None
                start, chunk = end - 1, 4096
                while start > 0:
                    begin = max(0, start - chunk)
                    handle.seek(begin)
                    block = handle.read(start - begin)
                    found = block.rfind(b"\n")
                    if found >= 0:
                        start = begin + found + 1
                        break
                    start = begin
                handle.seek(start)
                line = handle.read(end - 1 - start)
        except FileNotFoundError:
            return None
        try:
            entry = AuditEntry.from_dict(json.loads(line))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"audit log {self.path}: last entry unreadable ({exc})") from None
        if entry.computed_hash() != entry.hash:
            raise IntegrityError(f"audit log entry {entry.seq}: hash does not match its content")
        return entry

    @staticmethod
    def _committed_end(handle: Any, size: int) -> int:
        """Offset just past the last newline (the end of the committed part)."""
        position = size
        while position > 0:
            begin = max(0, position - 4096)
            handle.seek(begin)
            block = handle.read(position - begin)
            found = block.rfind(b"\n")
            if found >= 0:
                return begin + found + 1
            position = begin
        return 0

    def repair_torn_tail(self) -> int:
        """Cut off an uncommitted, torn last line; the number of bytes removed."""
        try:
            with open(self.path, "r+b") as handle:
                size = handle.seek(0, os.SEEK_END)
                end = self._committed_end(handle, size)
                if end == size:
                    return 0
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
                return size - end
        except FileNotFoundError:
            return 0

    def append(self, *, kind: str, payload: dict[str, Any], time: str,
               signing_key: Ed25519PrivateKey) -> AuditEntry:
        """Seal and durably append one entry after the current last one."""
        self.repair_torn_tail()
        last = self.last()
        entry = seal(seq=1 if last is None else last.seq + 1, time=time, kind=kind,
                     payload=payload, prev=GENESIS_PREV if last is None else last.hash,
                     signing_key=signing_key)
        line = entry.to_line()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry
