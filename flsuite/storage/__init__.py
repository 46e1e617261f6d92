"""Storage every part of flsuite shares: durable writes, the one hash-chained log, key files.

Pure (no torch, no flwr): the privacy ledger and the audit log are thin users of
`HashChainLog`; PKI, audit signing keys, secure-aggregation identities and the registry's
encryption key go through `keyfiles`.
"""

from flsuite.storage.canonical import canonical_json
from flsuite.storage.chain import GENESIS, ChainEntry, ChainHead, ChainRead, ChainTail, HashChainLog, entry_hash
from flsuite.storage.durable import TEMP_PREFIX, fsync_dir, write_atomic
from flsuite.storage.keyfiles import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    InsecureKeyFile,
    KeyFileError,
    KeyFileExists,
    check_private,
    read_private,
    write_private,
    write_public,
)

__all__ = [
    "GENESIS",
    "PRIVATE_MODE",
    "PUBLIC_MODE",
    "TEMP_PREFIX",
    "ChainEntry",
    "ChainHead",
    "ChainRead",
    "ChainTail",
    "HashChainLog",
    "InsecureKeyFile",
    "KeyFileError",
    "KeyFileExists",
    "canonical_json",
    "check_private",
    "entry_hash",
    "fsync_dir",
    "read_private",
    "write_atomic",
    "write_private",
    "write_public",
]
