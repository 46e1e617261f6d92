"""Atomic, mode-aware file writing for keys and certificates.

Every file is written to a temporary file in the target folder, fsynced, and then moved
into place, so a crash never leaves half a key behind. Private keys get mode 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from flsuite.storage.durable import fsync_dir
from flsuite.pki.errors import OverwriteRefused

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


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
    caller's check and this write (the final step is a hard link, which fails if the
    name exists).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OverwriteRefused(
                    f"refusing to overwrite {path}: it already exists. Pass --force to replace it."
                ) from None
            tmp.unlink()
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_private(path: Path, data: bytes, *, force: bool = False) -> Path:
    """Write a private key (mode 0600)."""
    return write_atomic(path, data, mode=PRIVATE_MODE, force=force)


def write_public(path: Path, data: bytes, *, force: bool = False) -> Path:
    """Write a certificate, public key or other shareable file (mode 0644)."""
    return write_atomic(path, data, mode=PUBLIC_MODE, force=force)

