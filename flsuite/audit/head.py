"""The signed head: a small file naming the log's last entry, rewritten after every append.

An auditor compares the log against it: a log that ends before the head's seq was
truncated, one whose entry at that seq has another hash was rewritten. A log that runs
past the head is fine (a writer was killed between its append and the head update).

An auditor who keeps a head they verified (`save_head`) can later detect a rollback: a
copy of the log that ends before that head (older) or holds another entry at its seq
(diverging) is not a continuation of what they saw (`continuation_problem`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flsuite.audit.canonical import canonical_json
from flsuite.audit.keys import key_id, sign, signature_valid
from flsuite.audit.log import AuditEntry
from flsuite.errors import ConfigError
from flsuite.storage.durable import write_atomic

__all__ = ["SignedHead", "write_head", "read_head", "save_head", "read_saved_head",
           "continuation_problem", "HEAD_DOMAIN"]

HEAD_DOMAIN = "flsuite.audit.head/1"


@dataclass(frozen=True)
class SignedHead:
    """The signed pointer to the log's last entry at some moment."""

    registry_id: str
    seq: int
    hash: str
    time: str
    key: str
    sig: str

    def signed_bytes(self) -> bytes:
        return canonical_json({"registry_id": self.registry_id, "seq": self.seq,
                               "hash": self.hash, "time": self.time, "key": self.key})

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        return signature_valid(public_key, HEAD_DOMAIN, self.signed_bytes(), self.sig)


def write_head(path: Path, entry: AuditEntry, *, registry_id: str, time: str,
               signing_key: Ed25519PrivateKey) -> SignedHead:
    """Sign a head naming `entry` and replace `path` atomically."""
    unsigned = SignedHead(registry_id=registry_id, seq=entry.seq, hash=entry.hash, time=time,
                          key=key_id(signing_key), sig="")
    head = SignedHead(**{**asdict(unsigned),
                         "sig": sign(signing_key, HEAD_DOMAIN, unsigned.signed_bytes())})
    write_atomic(path, canonical_json(asdict(head)) + b"\n")
    return head


def read_head(path: Path) -> SignedHead | None:
    """The head at `path`, None if there is none; ValueError when it is malformed."""
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    fields = {"registry_id": str, "seq": int, "hash": str, "time": str, "key": str, "sig": str}
    if not isinstance(data, dict) or set(data) != set(fields):
        raise ValueError(f"fields are not {sorted(fields)}")
    for name, kind in fields.items():
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise ValueError(f"{name} is not a {kind.__name__}")
    return SignedHead(**data)


def save_head(path: Path, head: SignedHead) -> None:
    """Keep a verified head at `path` (replaced atomically) for a later `--since` check."""
    write_atomic(Path(path), canonical_json(asdict(head)) + b"\n", mode=0o644)


def read_saved_head(path: Path) -> SignedHead:
    """The head an auditor kept; ConfigError when the file is missing or malformed."""
    try:
        head = read_head(path)
    except ValueError as exc:
        raise ConfigError(f"saved head {path}: malformed ({exc}); give a file written by "
                          "`flsuite audit verify --write-head`") from None
    except OSError as exc:
        raise ConfigError(f"saved head {path}: cannot be read ({exc.strerror})") from None
    if head is None:
        raise ConfigError(f"saved head {path}: no such file; give a file written by "
                          "`flsuite audit verify --write-head`")
    if head.seq < 1:
        raise ConfigError(f"saved head {path}: malformed (seq {head.seq} is not a positive integer)")
    return head


def continuation_problem(saved: SignedHead, entries: list[AuditEntry | None],
                         registry_id: str | None) -> tuple[str, str] | None:
    """(where, what) when the log `entries` is not `saved`'s log or a continuation of it:
    another registry, fewer entries (an older copy), or another entry at its seq (diverging)."""
    if registry_id is not None and saved.registry_id != registry_id:
        return "saved head", f"names registry {saved.registry_id}, this is registry {registry_id}"
    if saved.seq > len(entries):
        return (f"audit entry {len(entries) + 1}", f"missing: the saved head names entry {saved.seq} "
                f"but this log ends at entry {len(entries)} (an older copy: rolled back)")
    entry = entries[saved.seq - 1]
    if entry is None or entry.hash != saved.hash:
        return (f"audit entry {saved.seq}", "differs from the saved head (this log diverges from "
                "the one verified before: rewritten)")
    return None
