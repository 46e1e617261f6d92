"""Stage names and the compact encodings used in stage messages.

Stage messages are flat dicts whose values are str, int or bytes, so they map one to one
onto a Flower ConfigRecord. Node ids are uint64 (beyond a ConfigRecord int), so id lists
travel as packed big-endian bytes; lists of fixed-size blobs travel concatenated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from flsuite.errors import SecAggRefused

from .primitives import PROTOCOL, SHARE_BYTES, u64

__all__ = [
    "CIPHERTEXT_SIZE", "KEY_SIZE", "SHARE_SIZE", "SIGNATURE_SIZE", "STAGES",
    "field", "pack_blobs", "pack_ids", "setup_digest", "unpack_blobs", "unpack_ids",
]

STAGES = ("setup", "share-keys", "train", "unmask")
KEY_SIZE = 32
SIGNATURE_SIZE = 64
PLAINTEXT_SIZE = 8 + 8 + 2 + 2 * SHARE_BYTES  # sender, recipient, share index, self-mask share, key share
CIPHERTEXT_SIZE = 12 + PLAINTEXT_SIZE + 16  # nonce, ciphertext, GCM tag
SHARE_SIZE = 2 + SHARE_BYTES  # share index, share


def pack_ids(ids: Sequence[int]) -> bytes:
    return b"".join(u64(i) for i in ids)


def unpack_ids(data: bytes) -> list[int]:
    if not isinstance(data, bytes) or len(data) % 8:
        raise ValueError("packed node ids must be bytes of a multiple of 8")
    return [int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data), 8)]


def pack_blobs(blobs: Sequence[bytes], size: int) -> bytes:
    if any(len(b) != size for b in blobs):
        raise ValueError(f"every blob must be {size} bytes")
    return b"".join(blobs)


def unpack_blobs(data: bytes, size: int) -> list[bytes]:
    if not isinstance(data, bytes) or len(data) % size:
        raise ValueError(f"packed blobs must be bytes of a multiple of {size}")
    return [data[i : i + size] for i in range(0, len(data), size)]


def pack_names(names: Sequence[str]) -> str:
    return json.dumps(list(names))


def unpack_names(text: str) -> list[str]:
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("names must be a JSON list of strings")
    return names


def setup_digest(*, run_id: int, server_round: int, settings_wire: str, cohort: Sequence[int],
                 model_hash: bytes, vector_length: int) -> bytes:
    """Hash of everything announced at setup; every site signs it with its round keys, so
    peers detect a coordinator that told sites different things."""
    h = hashlib.sha256(PROTOCOL + b"/setup")
    for part in (u64(run_id), u64(server_round), settings_wire.encode(), pack_ids(sorted(cohort)),
                 model_hash, u64(vector_length)):
        h.update(u64(len(part)) + part)
    return h.digest()


def field(message: Mapping[str, Any], key: str, kind: type) -> Any:
    """message[key] checked to be of ``kind``; a missing or mistyped field is a bad request."""
    value = message.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SecAggRefused("bad-request", f"field {key!r} is missing or not {kind.__name__}")
    return value
