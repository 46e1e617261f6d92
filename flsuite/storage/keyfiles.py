"""Key files: private keys written atomically at 0600, public ones at 0644, and private keys
refused on load when group or other users may access them.

A write goes to a temporary file in the target folder (created 0600), is fsynced, then
takes the target's name (a hard link when overwriting is not allowed, so a file that
appears meanwhile is never replaced) and the folder is fsynced: a crash leaves the old
file or the new one, never half a key. PKI, audit signing keys, secure-aggregation
identities and the registry's encryption key all go through here.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from flsuite.errors import InsecureKeyFile, KeyFileError, KeyFileExists
from flsuite.storage.durable import TEMP_PREFIX, fsync_dir

__all__ = [
    "PRIVATE_MODE",
    "PUBLIC_MODE",
    "InsecureKeyFile",
    "KeyFileError",
    "KeyFileExists",
    "check_private",
    "read_private",
    "write_key_file",
    "write_private",
    "write_public",
]

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def write_private(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write a private key (mode 0600) atomically; KeyFileExists unless `overwrite`."""
    return write_key_file(path, data, mode=PRIVATE_MODE, overwrite=overwrite)


def write_public(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write a certificate, public key or other shareable file (mode 0644) atomically."""
    return write_key_file(path, data, mode=PUBLIC_MODE, overwrite=overwrite)


def write_key_file(path: str | os.PathLike[str], data: bytes, *, mode: int, overwrite: bool = False) -> Path:
    """Write `data` to `path` with exactly `mode` (whatever the umask), durably and atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise KeyFileExists(f"refusing to overwrite {path}: it already exists") from None
        fsync_dir(path.parent)
    finally:
        temp.unlink(missing_ok=True)
    return path


def check_private(path: str | os.PathLike[str], *, what: str = "private key") -> None:
    """InsecureKeyFile when group or other users may access the file at `path` (mode & 0o077);
    OSError (e.g. FileNotFoundError) when it cannot be looked at."""
    _refuse_shared(Path(path), os.stat(path).st_mode, what)


def read_private(path: str | os.PathLike[str], *, what: str = "private key") -> bytes:
    """The bytes of a private key file, after the permission check of `check_private` on the
    file actually opened; OSError when it cannot be read."""
    path = Path(path)
    with open(path, "rb") as handle:
        _refuse_shared(path, os.fstat(handle.fileno()).st_mode, what)
        return handle.read()


def _refuse_shared(path: Path, mode: int, what: str) -> None:
    permissions = stat.S_IMODE(mode)
    if permissions & 0o077:
        raise InsecureKeyFile(
            f"{what} {path} has mode {permissions:o}, so other users on this machine may read it; "
            f"run `chmod 600 {path}` (or replace the key if others could have copied it)."
        )
