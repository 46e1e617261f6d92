"""Site identity keys and the pinned list of site identities, on disk.

Formats (shared with flsuite.pki):
- identity private key: PEM, PKCS8, unencrypted Ed25519, file mode 0600;
- pinned identities: JSON {"sites": {"<site-name>": "<base64 of the raw 32-byte Ed25519 public key>"}}.
Every site verifies its peers' round keys against its OWN pinned file, never against a
list sent by the coordinator.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from flsuite.errors import ConfigError
from flsuite.storage.keyfiles import KeyFileExists, read_private, write_private, write_public

__all__ = ["generate_identity", "load_identity", "load_pinned_identities", "public_identity", "write_pinned_identities"]


def generate_identity(path: str | os.PathLike[str], *, overwrite: bool = False) -> bytes:
    """Write a new Ed25519 identity key (PEM PKCS8, mode 0600); return its raw public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        write_private(path, pem, overwrite=overwrite)
    except KeyFileExists:
        raise ConfigError(f"identity key {path} already exists; remove it or pass overwrite=True to replace it.") from None
    return public_identity(key)


def public_identity(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an identity."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_identity(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a site's identity private key; refuse a file other users may read."""
    path = Path(path)
    try:
        data = read_private(path, what="identity key")
    except FileNotFoundError:
        raise ConfigError(
            f"identity key {path} does not exist; set node-config 'identity-key' to the site's key "
            "file (flsuite pki issues it)."
        ) from None
    except OSError as exc:
        raise ConfigError(f"identity key {path} cannot be read: {exc.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"identity key {path} is encrypted; flsuite expects an unencrypted PKCS8 PEM key.") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"identity key {path} is not a PEM PKCS8 private key.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key {path} is a {type(key).__name__}, not an Ed25519 key.")
    return key


def write_pinned_identities(path: str | os.PathLike[str], identities: Mapping[str, bytes]) -> None:
    """Write the pinned identities file from {site name: raw 32-byte public key}."""
    sites = {}
    for name, public in sorted(identities.items()):
        _check_name(name, path)
        _check_public(public, name, path)
        sites[name] = base64.b64encode(public).decode("ascii")
    write_public(path, (json.dumps({"sites": sites}, indent=2, sort_keys=True) + "\n").encode("utf-8"), overwrite=True)


def load_pinned_identities(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read the pinned identities file: {site name: raw 32-byte Ed25519 public key}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"pinned identities file {path} does not exist; set node-config 'identities-file' to the "
            "federation's identities JSON."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"pinned identities file {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"pinned identities file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sites"), dict) or not data["sites"]:
        raise ConfigError(f'pinned identities file {path} must look like {{"sites": {{"<name>": "<base64 key>"}}}}.')
    pinned: dict[str, bytes] = {}
    for name, encoded in data["sites"].items():
        _check_name(name, path)
        try:
            public = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            public = b""
        _check_public(public, name, path)
        pinned[name] = public
    return pinned


def _check_name(name: object, path: object) -> None:
    try:
        encoded = name.encode("utf-8") if isinstance(name, str) else b""
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry
        encoded = b""
    if not encoded or len(encoded) > 255:
        raise ConfigError(f"pinned identities {path}: site name {name!r} must be a non-empty string of at most 255 bytes "
                          "of UTF-8.")


def _check_public(public: object, name: str, path: object) -> None:
    try:
        if not isinstance(public, bytes) or len(public) != 32:
            raise ValueError
        Ed25519PublicKey.from_public_bytes(public)
    except ValueError:
        raise ConfigError(
            f"pinned identities {path}: the key of site {name!r} is not base64 of a raw 32-byte Ed25519 public key."
        ) from None
