"""Digests that pin what ran: the hash of a configuration and of the source code.

`config_hash` hashes the canonical JSON of a config dict; `code_digest` hashes the sorted
source files under given package folders, so two runs with the same digests ran the
same configuration and the same code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flsuite.audit.canonical import canonical_sha256
from flsuite.errors import ConfigError

__all__ = ["config_hash", "code_digest"]

_SKIPPED_DIRS = {"__pycache__", ".git", ".pytest_cache", ".hypothesis", ".mypy_cache", ".venv"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd"}


def config_hash(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of `config` (keys sorted, no whitespace)."""
    try:
        return canonical_sha256(dict(config))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config_hash: the config is not plain JSON ({exc}); "
                          "dump it to dicts, lists, strings, finite numbers first") from None


def code_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Hex SHA-256 over every source file under the given folders (or files), sorted by path.

    Each file contributes its path relative to its root's parent (so the package name
    counts) and the SHA-256 of its bytes; caches and compiled files are left out.
    """
    records: list[tuple[str, str]] = []
    roots = [Path(p) for p in paths]
    if not roots:
        raise ConfigError("code_digest: give at least one package folder, e.g. the flsuite package")
    for root in roots:
        if not root.exists():
            raise ConfigError(f"code_digest: {root} does not exist; give existing package folders")
        files = [root] if root.is_file() else _source_files(root)
        for file in files:
            name = file.relative_to(root.parent).as_posix()
            records.append((name, hashlib.sha256(file.read_bytes()).hexdigest()))
    digest = hashlib.sha256()
    for name, file_hash in sorted(records):
        encoded = name.encode("utf-8")
        digest.update(len(encoded).to_bytes(4, "big") + encoded + bytes.fromhex(file_hash))
    return digest.hexdigest()


def _source_files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in files:
            path = Path(folder, name)
            if path.suffix not in _SKIPPED_SUFFIXES and path.is_file():
                found.append(path)
    return found
