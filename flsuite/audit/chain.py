"""Checks of the audit chain as an auditor runs them: format, order, hashes, links, signatures.

Pure functions over the log's lines and the registry's public keys; each failed check is
a `Problem` naming the entry, so a report can say which entry is bad and why.

A pin (`expected_key`, a key id or a prefix of at least PIN_MIN_CHARS hex digits) means
that every entry is signed by that one key: the genesis entry must list it, and an entry
signed by any other key, even one the genesis also lists, fails. So a log re-signed by an
attacker whose genesis lists the genuine key id beside their own gains nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flsuite.audit.canonical import canonical_json
from flsuite.audit.keys import signature_valid
from flsuite.audit.log import ENTRY_DOMAIN, AuditEntry
from flsuite.errors import ConfigError
from flsuite.storage.chain import GENESIS

__all__ = ["Problem", "ChainResult", "verify_chain", "check_pin", "GENESIS_KIND", "PIN_MIN_CHARS"]

GENESIS_KIND = "registry.created"
PIN_MIN_CHARS = 16
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Problem:
    """One failed check: where (an entry, a version, a file), which check, what is wrong."""

    where: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "check": self.check, "message": self.message}


def check_pin(expected_key: str) -> str:
    """The pin in lower case; ConfigError unless it is 16 to 64 hex digits (a key id or its prefix)."""
    pin = expected_key.strip().lower() if isinstance(expected_key, str) else ""
    if not PIN_MIN_CHARS <= len(pin) <= 64 or not set(pin) <= _HEX:
        raise ConfigError(f"--expect-key {expected_key!r}: give the coordinator's key id (64 hex "
                          f"digits, or at least its first {PIN_MIN_CHARS}), as `flsuite audit verify` "
                          "prints it for a registry you trust")
    return pin


@dataclass(frozen=True)
class ChainResult:
    """The parsed entries (None where a line could not be read), the trusted keys (under a
    pin: only the pinned key), problems."""

    entries: list[AuditEntry | None]
    trusted_keys: frozenset[str]
    problems: list[Problem]


def verify_chain(lines: list[bytes], *, public_keys: dict[str, Ed25519PublicKey],
                 expected_key: str | None = None) -> ChainResult:
    """Check every line; the registry's keys are those its first (genesis) entry names, and
    under a pin only the pinned one of them (ConfigError for a malformed pin)."""
    pin = None if expected_key is None else check_pin(expected_key)
    problems: list[Problem] = []
    entries: list[AuditEntry | None] = []
    trusted: frozenset[str] = frozenset()
    previous_hash: str | None = GENESIS
    for number, line in enumerate(lines, start=1):
        where = f"audit entry at line {number}"
        try:
            entry = AuditEntry.from_dict(json.loads(line))
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(Problem(where, "format", f"unreadable ({exc})"))
            entries.append(None)
            previous_hash = None
            continue
        entries.append(entry)
        where = f"audit entry {entry.seq}" + ("" if entry.seq == number else f" (line {number})")
        if number == 1:
            trusted, genesis_problem = _genesis_keys(entry, pin)
            if genesis_problem:
                problems.append(Problem(where, "genesis", genesis_problem))
        if entry.seq != number:
            problems.append(Problem(where, "sequence", f"expected seq {number}: an entry was "
                                    "deleted, inserted or moved"))
        if canonical_json(entry.to_dict()) != line:
            problems.append(Problem(where, "format", "line is not in canonical form (edited)"))
        if entry.computed_hash() != entry.hash:
            problems.append(Problem(where, "hash", "content does not match its hash (edited)"))
        if previous_hash is not None and entry.prev != previous_hash:
            problems.append(Problem(where, "chain", "prev does not match the hash of the entry "
                                    "before it (reordered, inserted or deleted)"))
        problems.extend(_signature_problems(entry, where, trusted, public_keys, pin))
        previous_hash = entry.hash
    return ChainResult(entries=entries, trusted_keys=trusted, problems=problems)


def _genesis_keys(entry: AuditEntry, pin: str | None) -> tuple[frozenset[str], str]:
    keys = entry.payload.get("keys") if entry.kind == GENESIS_KIND else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        return frozenset(), f"the first entry is not a {GENESIS_KIND} entry naming the keys"
    if pin is None:
        return frozenset(keys), ""
    pinned = frozenset(k for k in keys if k.startswith(pin))
    if not pinned:
        return pinned, f"registry keys {sorted(keys)} do not include the expected key {pin}"
    if len(pinned) > 1:
        return frozenset(), f"the expected key {pin} matches several registry keys; give the whole key id"
    return pinned, ""


def _signature_problems(entry: AuditEntry, where: str, trusted: frozenset[str],
                        public_keys: dict[str, Ed25519PublicKey], pin: str | None) -> list[Problem]:
    if entry.key not in trusted:
        if pin is not None:
            return [Problem(where, "pin", f"signed by key {entry.key[:16]}, not by the expected "
                            f"key {pin[:16]}")]
        return [Problem(where, "signature", f"signed by key {entry.key[:16]}, which is not a "
                        "key of this registry")]
    public_key = public_keys.get(entry.key)
    if public_key is None:
        return [Problem(where, "signature", f"public key {entry.key[:16]} is missing from keys/")]
    if not signature_valid(public_key, ENTRY_DOMAIN, entry.hash.encode(), entry.sig):
        return [Problem(where, "signature", "signature does not verify")]
    return []
