"""Key and certificate files of the PKI, on `flsuite.storage.keyfiles`.

Writes are atomic (temp file, fsync, link or rename, fsync of the folder), private keys
get mode 0600, and an existing file is only replaced with --force.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flsuite.errors import OverwriteRefused
from flsuite.storage import keyfiles
from flsuite.storage.keyfiles import PRIVATE_MODE, PUBLIC_MODE

__all__ = ["PRIVATE_MODE", "PUBLIC_MODE", "refuse_existing", "write_atomic", "write_private", "write_public"]


def refuse_existing(paths: Iterable[Path], *, force: bool) -> None:
    """Raise OverwriteRefused naming every path that exists, unless force is set."""
    if force:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise OverwriteRefused(
            f"refusing to overwrite {', '.join(existing)}: it already exists. "
            "Pass --force to replace it (the old key is then gone for good)."
        )


def write_atomic(path: Path, data: bytes, *, mode: int, force: bool = False) -> Path:
    """Write data to path atomically with the given permission mode.

    Without force an existing file is never replaced, even if it appears between the
    caller's check and this write.
    """
    try:
        return keyfiles.write_key_file(path, data, mode=mode, overwrite=force)
    except keyfiles.KeyFileExists:
        raise OverwriteRefused(
            f"refusing to overwrite {path}: it already exists. Pass --force to replace it."
        ) from None


def write_private(path: Path, data: bytes, *, force: bool = False) -> Path:
    """Write a private key (mode 0600)."""
    return write_atomic(path, data, mode=PRIVATE_MODE, force=force)


def write_public(path: Path, data: bytes, *, force: bool = False) -> Path:
    """Write a certificate, public key or other shareable file (mode 0644)."""
    return write_atomic(path, data, mode=PUBLIC_MODE, force=force)
