"""The append-only audit log: signed entries in the shared hash-chained log.

Each line is the canonical JSON of an entry: seq, time, kind, payload, key (the signer's
key id), prev, hash and sig. The file is a `flsuite.storage.HashChainLog` under LOG_DOMAIN,
which gives the log its rules: hash = sha256(LOG_DOMAIN, prev, canonical body of the five
fields seq..key), the first entry's prev is GENESIS, appends are locked, verified and
fsynced, and a torn last line (never committed) is ignored by readers and set aside to
``audit.jsonl.torn`` by the next writer. sig, the one field the hash does not cover, is
the Ed25519 signature of the hash (domain ENTRY_DOMAIN).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flsuite.audit.canonical import canonical_json
from flsuite.audit.keys import key_id, sign
from flsuite.errors import IntegrityError
from flsuite.storage.chain import GENESIS, ChainHead, HashChainLog, entry_hash

__all__ = ["AuditEntry", "AuditLog", "seal", "GENESIS_PREV", "ENTRY_DOMAIN", "LOG_DOMAIN"]

GENESIS_PREV = GENESIS
LOG_DOMAIN = "flsuite.audit.log/2"
ENTRY_DOMAIN = "flsuite.audit.entry/1"
_BODY = ("seq", "time", "kind", "payload", "key")
_FIELDS = (*_BODY, "prev", "hash", "sig")


def _check_body(body: dict[str, Any]) -> None:
    """ValueError naming the field when `body` is not the hashed part of an audit entry."""
    if set(body) != set(_BODY):
        raise ValueError(f"fields {sorted(body)} are not {sorted(_BODY)}")
    if not isinstance(body["seq"], int) or isinstance(body["seq"], bool) or body["seq"] < 1:
        raise ValueError("seq is not a positive integer")
    if not isinstance(body["payload"], dict):
        raise ValueError("payload is not an object")
    for name in ("time", "kind", "key"):
        if not isinstance(body[name], str):
            raise ValueError(f"{name} is not a string")


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
        """The fields the hash covers besides prev."""
        return {"seq": self.seq, "time": self.time, "kind": self.kind,
                "payload": self.payload, "key": self.key}

    def computed_hash(self) -> str:
        """The entry's hash, recomputed from its content and prev."""
        return entry_hash(LOG_DOMAIN, self.prev, self.body())

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev": self.prev, "hash": self.hash, "sig": self.sig}

    def to_line(self) -> bytes:
        return canonical_json(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, data: Any) -> AuditEntry:
        """Build from a parsed line; ValueError naming the field when the shape is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if set(data) != set(_FIELDS):
            raise ValueError(f"fields {sorted(data)} are not {sorted(_FIELDS)}")
        _check_body({name: data[name] for name in _BODY})
        for name in ("prev", "hash", "sig"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name} is not a string")
        return cls(**{name: data[name] for name in _FIELDS})


def seal(*, seq: int, time: str, kind: str, payload: dict[str, Any], prev: str,
         signing_key: Ed25519PrivateKey) -> AuditEntry:
    """Make a signed entry; ValueError if the payload is not canonical JSON."""
    body = {"seq": seq, "time": time, "kind": kind, "payload": payload, "key": key_id(signing_key)}
    digest = entry_hash(LOG_DOMAIN, prev, body)
    return AuditEntry(**body, prev=prev, hash=digest, sig=sign(signing_key, ENTRY_DOMAIN, digest.encode()))


class AuditLog:
    """The log file of one registry (mode 0644: the folder is handed to auditors)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._log = HashChainLog(self.path, domain=LOG_DOMAIN, name="audit log", unhashed=("sig",),
                                 check_body=_check_body, mode=0o644)

    def read_lines(self) -> tuple[list[bytes], bytes]:
        """(committed lines without their newline, bytes of a torn last line or b''), not
        verified: `verify_chain` checks and reports every line."""
        return self._log.read_lines()

    def last(self) -> AuditEntry | None:
        """The last committed entry of a log whose chain verifies and whose last entry's seq is its
        line number (IntegrityError if not). Its signature is the caller's to check."""
        last = self._log.last()
        if last is None:
            return None
        entry = AuditEntry.from_dict(last.record())
        if entry.seq != last.number:
            raise IntegrityError(f"audit log {self.path} line {last.number}: has seq {entry.seq}")
        return entry

    def repair_torn_tail(self) -> int:
        """Set aside and cut off an uncommitted, torn last line; the number of bytes removed."""
        return self._log.repair_torn_tail()

    def append(self, *, kind: str, payload: dict[str, Any], time: str,
               signing_key: Ed25519PrivateKey) -> AuditEntry:
        """Seal and durably append one entry after the current last one."""
        def body(head: ChainHead) -> dict[str, Any]:
            return {"seq": head.entries + 1, "time": time, "kind": kind, "payload": payload,
                    "key": key_id(signing_key)}

        entry = self._log.append(body, unhashed=lambda digest: {
            "sig": sign(signing_key, ENTRY_DOMAIN, digest.encode())})
        return AuditEntry.from_dict(entry.record())
