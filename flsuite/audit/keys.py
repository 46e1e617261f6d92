"""Ed25519 signing keys of the coordinator: create, load, identify, sign and verify.

The private key (PEM, PKCS8, mode 0600) lives outside any registry folder; a registry
holds only public keys, named by their key id (SHA-256 of the raw public key).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flsuite.errors import ConfigError
from flsuite.storage.keyfiles import KeyFileExists, read_private, write_private

__all__ = [
    "load_or_create_signing_key",
    "load_signing_key",
    "key_id",
    "public_key_pem",
    "load_public_key_pem",
    "sign",
    "signature_valid",
]


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the Ed25519 key at `path`, or create it there (PEM PKCS8, mode 0600) if absent."""
    path = Path(path)
    if path.exists():
        return load_signing_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        write_private(path, pem)
    except KeyFileExists:  # another process created it between exists() and the write
        return load_signing_key(path)
    return key


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (PEM PKCS8); refuse files others can read."""
    path = Path(path)
    try:
        data = read_private(path, what="signing key")
    except OSError as exc:
        raise ConfigError(f"signing key {path}: cannot be read ({exc.strerror}); "
                          "give the path of the coordinator's Ed25519 key") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path}: not an unencrypted PEM private key ({exc}); "
                          "create one with load_or_create_signing_key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path}: is a {type(key).__name__}, not an Ed25519 key")
    return key


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The hex SHA-256 of the raw 32-byte public key: the name a registry knows a key by."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key_pem(data: bytes) -> Ed25519PublicKey | None:
    """Parse a public key PEM; None when it is not an Ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


def sign(key: Ed25519PrivateKey, domain: str, message: bytes) -> str:
    """Base64 Ed25519 signature over `domain` + NUL + `message` (domain separates uses)."""
    return base64.b64encode(key.sign(domain.encode() + b"\0" + message)).decode("ascii")


def signature_valid(public_key: Ed25519PublicKey, domain: str, message: bytes, signature: str) -> bool:
    """True when `signature` (base64) is `public_key`'s signature of domain + NUL + message."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        public_key.verify(raw, domain.encode() + b"\0" + message)
    except (InvalidSignature, ValueError, UnicodeEncodeError, AttributeError):
        return False
    return True

