"""Integrity checks a writer runs on the spot: one blob, one version, one replayed log entry.

The full offline audit of a registry is `flsuite.registry.verify`; these are the cheap
checks done before weights are handed out, a version is promoted, or a log entry is
replayed into the catalogue.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flsuite.audit.canonical import canonical_sha256, sha256_hex
from flsuite.audit.keys import key_id, load_public_key_pem, signature_valid
from flsuite.audit.log import ENTRY_DOMAIN, AuditEntry, AuditLog
from flsuite.errors import EncryptionKeyError, IntegrityError
from flsuite.registry.catalogue import VERSION_KIND
from flsuite.registry.encryption import decrypt_blob, encryption_key_id
from flsuite.registry.layout import Layout
from flsuite.registry.manifest import MANIFEST_DOMAIN, VersionInfo

__all__ = ["open_blob", "check_version", "trusted_entry", "public_keys"]


def public_keys(layout: Layout) -> dict[str, Ed25519PublicKey]:
    """The registry's public keys whose file name matches their key id (others are ignored)."""
    keys = {}
    for path in sorted(Path(layout.keys).glob("*.pub")):
        key = load_public_key_pem(path.read_bytes())
        if key is not None and key_id(key) == path.stem:
            keys[path.stem] = key
    return keys


def open_blob(layout: Layout, manifest: dict[str, Any], *, encryption_key: bytes | None) -> bytes:
    """The plaintext safetensors bytes of a version's blob, every hash checked."""
    blob = manifest["blob"]
    address, where = blob["sha256"], f"version {manifest['version']}"
    try:
        stored = layout.blob(address).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{where}: blob {address[:16]} is missing") from None
    if sha256_hex(stored) != blob["stored_sha256"]:
        raise IntegrityError(f"{where}: blob {address[:16]} does not match its recorded hash")
    encryption = blob["encryption"]
    if encryption is None:
        return stored
    if encryption_key is None:
        raise EncryptionKeyError(f"{where}: the blob is encrypted ({encryption['algorithm']}, key id "
                                 f"{encryption['key_id']}); give its key with --encryption-key-file "
                                 "or the FLSUITE_ENCRYPTION_KEY variable")
    given = encryption_key_id(encryption_key)
    if given != encryption["key_id"]:
        raise EncryptionKeyError(f"{where}: wrong encryption key (the blob was sealed with key id "
                                 f"{encryption['key_id']}, the given key has id {given})")
    plaintext = decrypt_blob(stored, key=encryption_key, address=address)
    if sha256_hex(plaintext) != address:
        raise IntegrityError(f"{where}: decrypted blob does not match its address {address[:16]}")
    return plaintext


def check_version(layout: Layout, info: VersionInfo, *, log: AuditLog,
                  encryption_key: bytes | None) -> None:
    """IntegrityError unless the version's manifest, signature, log entry and blob all hold."""
    where = f"version {info.number}"
    if info.manifest.get("version") != info.number:
        raise IntegrityError(f"{where}: manifest names version {info.manifest.get('version')}")
    if canonical_sha256(info.manifest) != info.manifest_hash:
        raise IntegrityError(f"{where}: manifest does not match its hash")
    keys = public_keys(layout)
    if not any(signature_valid(k, MANIFEST_DOMAIN, info.manifest_hash.encode(), info.manifest_sig)
               for k in keys.values()):
        raise IntegrityError(f"{where}: manifest signature does not verify")
    lines, _ = log.read_lines()
    if not 1 <= info.seq <= len(lines):
        raise IntegrityError(f"{where}: its audit entry {info.seq} is missing")
    entry = _parse(lines[info.seq - 1], info.seq)
    if (entry.kind != VERSION_KIND or entry.payload.get("version") != info.number
            or entry.payload.get("manifest_hash") != info.manifest_hash):
        raise IntegrityError(f"{where}: audit entry {info.seq} does not record this manifest")
    _check_entry(entry, keys)
    if info.encrypted and encryption_key is None:
        stored = layout.blob(info.blob_sha256)
        if not stored.is_file() or sha256_hex(stored.read_bytes()) != info.manifest["blob"]["stored_sha256"]:
            raise IntegrityError(f"{where}: blob {info.blob_sha256[:16]} is missing or altered")
    else:
        open_blob(layout, info.manifest, encryption_key=encryption_key)


def trusted_entry(line: bytes, seq: int, signing_key: Ed25519PrivateKey) -> AuditEntry:
    """Parse a committed log line for replay; IntegrityError unless seq, hash and signature hold."""
    entry = _parse(line, seq)
    check_signed(entry, signing_key)
    return entry


def check_signed(entry: AuditEntry, signing_key: Ed25519PrivateKey) -> None:
    """IntegrityError unless the entry's hash holds and the writer's key signed it."""
    _check_entry(entry, {key_id(signing_key): signing_key.public_key()})


def _parse(line: bytes, seq: int) -> AuditEntry:
    try:
        entry = AuditEntry.from_dict(json.loads(line))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"audit entry {seq}: unreadable ({exc}); run flsuite audit verify") from None
    if entry.seq != seq:
        raise IntegrityError(f"audit entry at line {seq} has seq {entry.seq}; run flsuite audit verify")
    return entry


def _check_entry(entry: AuditEntry, keys: dict[str, Ed25519PublicKey]) -> None:
    if entry.computed_hash() != entry.hash:
        raise IntegrityError(f"audit entry {entry.seq}: content does not match its hash")
    key = keys.get(entry.key)
    if key is None or not signature_valid(key, ENTRY_DOMAIN, entry.hash.encode(), entry.sig):
        raise IntegrityError(f"audit entry {entry.seq}: signature does not verify")
