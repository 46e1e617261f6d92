"""The tamper-evident audit chain: signed, hash-linked JSON lines and a signed head.

Registry-agnostic building blocks; `flsuite.registry` uses them for its audit log and
its verification.
"""

from flsuite.audit.canonical import canonical_json, canonical_sha256, sha256_hex
from flsuite.audit.chain import GENESIS_KIND, ChainResult, Problem, verify_chain
from flsuite.audit.head import SignedHead, read_head, write_head
from flsuite.audit.keys import (
    key_id,
    load_or_create_signing_key,
    load_public_key_pem,
    load_signing_key,
    public_key_pem,
    sign,
    signature_valid,
)
from flsuite.audit.log import ENTRY_DOMAIN, AuditEntry, AuditLog, seal

__all__ = [
    "ENTRY_DOMAIN",
    "GENESIS_KIND",
    "AuditEntry",
    "AuditLog",
    "ChainResult",
    "Problem",
    "SignedHead",
    "canonical_json",
    "canonical_sha256",
    "key_id",
    "load_or_create_signing_key",
    "load_public_key_pem",
    "load_signing_key",
    "public_key_pem",
    "read_head",
    "seal",
    "sha256_hex",
    "sign",
    "signature_valid",
    "verify_chain",
    "write_head",
]
