"""The tamper-evident audit chain: signed, hash-linked JSON lines and a signed head.

Registry-agnostic building blocks; `flsuite.registry` uses them for its audit log and
its verification.
"""

from flsuite.audit.canonical import canonical_json, canonical_sha256, sha256_hex
from flsuite.audit.chain import GENESIS_KIND, PIN_MIN_CHARS, ChainResult, Problem, check_pin, verify_chain
from flsuite.audit.head import (
    SignedHead,
    continuation_problem,
    read_head,
    read_saved_head,
    save_head,
    write_head,
)
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
    "PIN_MIN_CHARS",
    "AuditEntry",
    "AuditLog",
    "ChainResult",
    "Problem",
    "SignedHead",
    "canonical_json",
    "canonical_sha256",
    "check_pin",
    "continuation_problem",
    "key_id",
    "load_or_create_signing_key",
    "load_public_key_pem",
    "load_signing_key",
    "public_key_pem",
    "read_head",
    "read_saved_head",
    "save_head",
    "seal",
    "sha256_hex",
    "sign",
    "signature_valid",
    "verify_chain",
    "write_head",
]
