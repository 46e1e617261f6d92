"""Encryption at rest of weight blobs: AES-256-GCM with a key that never enters the registry.

The key comes from a file or an environment variable (32 bytes: raw, hex or base64).
A blob's address stays the SHA-256 of its plaintext; the address is bound into the
ciphertext as associated data, so a ciphertext moved to another address fails to open.
Manifests record a short key id (a hash of the key) so a wrong key is named before any
decryption is tried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flsuite.errors import EncryptionKeyError, IntegrityError
from flsuite.storage.keyfiles import InsecureKeyFile, KeyFileExists, read_private, write_private

__all__ = [
    "ALGORITHM",
    "key_from_file",
    "key_from_env",
    "create_key_file",
    "encryption_key_id",
    "encrypt_blob",
    "decrypt_blob",
]

ALGORITHM = "AES-256-GCM"
_MAGIC = b"FLSENC1\0"
_NONCE_BYTES = 12
_KEY_BYTES = 32


def key_from_file(path: str | os.PathLike[str]) -> bytes:
    """Read a 32-byte key from a file: 32 raw bytes, or 64 hex characters, or base64; refuse
    a file that group or other users may read."""
    path = Path(path)
    try:
        data = read_private(path, what="encryption key file")
    except InsecureKeyFile as exc:
        raise EncryptionKeyError(str(exc)) from None
    except OSError as exc:
        raise EncryptionKeyError(f"encryption key file {path}: cannot be read ({exc.strerror}); "
                                 "give the file that holds the registry's 32-byte key") from None
    if len(data) == _KEY_BYTES:
        return data
    return _decode(data.strip(), f"encryption key file {path}")


def key_from_env(name: str) -> bytes:
    """Read a 32-byte key, hex or base64, from the environment variable `name`."""
    value = os.environ.get(name)
    if not value:
        raise EncryptionKeyError(f"environment variable {name} is not set; set it to the "
                                 "registry's 32-byte key (64 hex characters)")
    return _decode(value.strip().encode(), f"environment variable {name}")


def create_key_file(path: str | os.PathLike[str]) -> bytes:
    """Write a fresh random key as hex to a new file with mode 0600; refuse to overwrite."""
    key = os.urandom(_KEY_BYTES)
    try:
        write_private(path, (key.hex() + "\n").encode("ascii"))
    except KeyFileExists:
        raise EncryptionKeyError(f"encryption key file {path} exists already; "
                                 "keep it, or choose another path") from None
    return key


def encryption_key_id(key: bytes) -> str:
    """A short public name of a key (16 hex digits of a domain-separated SHA-256)."""
    _check_key(key)
    return hashlib.sha256(b"flsuite.blob-key/1\0" + key).hexdigest()[:16]


def encrypt_blob(plaintext: bytes, *, key: bytes, address: str) -> bytes:
    """magic + random 96-bit nonce + AES-256-GCM(plaintext) with the address as associated data."""
    _check_key(key)
    nonce = os.urandom(_NONCE_BYTES)
    return _MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(address))


def decrypt_blob(data: bytes, *, key: bytes, address: str) -> bytes:
    """The plaintext of an encrypted blob; IntegrityError if it does not open with `key`."""
    _check_key(key)
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _NONCE_BYTES + 16:
        raise IntegrityError(f"blob {address[:16]}: not an flsuite encrypted blob")
    nonce = data[len(_MAGIC):len(_MAGIC) + _NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, data[len(_MAGIC) + _NONCE_BYTES:], _aad(address))
    except InvalidTag:
        raise IntegrityError(f"blob {address[:16]}: authentication failed (altered blob or "
                             "wrong key)") from None


def _aad(address: str) -> bytes:
    return b"flsuite.blob/1\0" + address.encode("ascii")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
        raise EncryptionKeyError("the encryption key must be 32 bytes (AES-256); "
                                 "load it with key_from_file or key_from_env")


def _decode(text: bytes, source: str) -> bytes:
    candidates = []
    try:
        candidates.append(bytes.fromhex(text.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        candidates.append(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        pass
    for key in candidates:
        if len(key) == _KEY_BYTES:
            return key
    raise EncryptionKeyError(f"{source}: not a 32-byte key (expected 64 hex characters, "
                             "base64 of 32 bytes, or 32 raw bytes); create one with create_key_file")
