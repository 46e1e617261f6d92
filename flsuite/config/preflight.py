"""Check, before anything is written, that every path a study names can be used.

The schema judges values; this judges the disk: the output folder can be made, the CSV
file can be read (and its features have declared ranges), and key files exist with only their owner able to read them.
``flsuite run`` calls ``check_inputs`` for every run of a sweep before the first starts,
so a bad path never leaves a half-made output folder, registry or signing key behind.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from flsuite.config.feature_schema import missing_ranges
from flsuite.config.schema import StudyConfig
from flsuite.errors import ConfigError, DataError

DEFAULT_SIGNING_KEY_NAME = "coordinator-signing.key"


def check_inputs(study: StudyConfig, output_dir: Path) -> None:
    """Raise ConfigError (or DataError, for the CSV file) naming every path that cannot be used.

    Reads only: nothing is created or changed. A study on ``engine=deployment`` reads its
    records at the sites, so its ``data.csv_path`` and ``sites_dir`` are not checked here.
    """
    problems: list[tuple[type[ConfigError] | type[DataError], str]] = []
    for message in _folder_problems(Path(output_dir), "--output-dir"):
        problems.append((ConfigError, message))
    local = study.engine.name != "deployment"
    unscalable = missing_ranges(study)  # sites refuse too; say it before anything starts
    if unscalable:
        problems.append((DataError, unscalable))
    if local:
        problems += [(ConfigError, m) for m in _folder_problems(Path(study.sites_dir), "sites_dir")]
        if study.data.dataset == "csv" and study.data.csv_path:
            problems += [(DataError, m) for m in _csv_problems(Path(study.data.csv_path))]
    if study.registry.enabled:
        problems += [(ConfigError, m) for m in _registry_problems(study, Path(output_dir))]
    if problems:
        kind = DataError if all(k is DataError for k, _ in problems) else ConfigError
        raise kind("; ".join(message for _, message in problems))


def signing_key_path(study: StudyConfig, output_dir: Path) -> Path:
    """Where the coordinator's signing key is read or created (as ``study.publishing.registry_paths``)."""
    registry = Path(study.registry.path) if study.registry.path else output_dir / "registry"
    return Path(study.registry.signing_key) if study.registry.signing_key else registry.parent / DEFAULT_SIGNING_KEY_NAME


def _folder_problems(folder: Path, key: str) -> list[str]:
    """A folder that must exist or be creatable, and writable."""
    folder = folder.expanduser()
    if folder.exists():
        if not folder.is_dir():
            return [f"{key} {folder} exists and is not a folder: give a folder path (or move the file away)"]
        if not os.access(folder, os.W_OK | os.X_OK):
            return [f"{key} {folder} is not writable: give a folder you can write to"]
        return []
    return _creatable_problems(folder, key)


def _creatable_problems(path: Path, key: str) -> list[str]:
    """``path`` does not exist: its nearest existing parent must be a writable folder."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [f"{key} {path} cannot be created: {parent} is a file, not a folder"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{key} {path} cannot be created: {parent} is not writable"]
    return []


def _csv_problems(path: Path) -> list[str]:
    path = path.expanduser()
    if not path.exists():
        return [f"data.csv_path {path} does not exist: give the path of the CSV file"]
    if not path.is_file():
        return [f"data.csv_path {path} is not a file: give the path of the CSV file"]
    if not os.access(path, os.R_OK):
        return [f"data.csv_path {path} cannot be read: check its permissions"]
    return []


def _registry_problems(study: StudyConfig, output_dir: Path) -> list[str]:
    registry = study.registry
    problems = []
    if registry.path:
        problems += _folder_problems(Path(registry.path), "registry.path")
    key = signing_key_path(study, output_dir).expanduser()
    if key.exists():
        problems += _secret_file_problems(key, "registry.signing_key", _load_signing_key)
    elif registry.signing_key:
        problems += _creatable_problems(key, "registry.signing_key")
    if registry.encryption_key_file:
        path = Path(registry.encryption_key_file).expanduser()
        if not path.exists():
            problems.append(
                f"registry.encryption_key_file {path} does not exist: give the file that holds the registry's "
                "32-byte key (mode 600)"
            )
        else:
            problems += _secret_file_problems(path, "registry.encryption_key_file", _load_encryption_key)
    if registry.encryption_key_env:
        problems += _loads(lambda: _key_from_env(registry.encryption_key_env))
    return problems


def _secret_file_problems(path: Path, key: str, load: Callable[[Path], None]) -> list[str]:
    """A key file must be a regular file that only its owner can read (mode 600 or tighter)."""
    if not path.is_file():
        return [f"{key} {path} is not a file: give the path of the key file"]
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"{key} {path}: mode {mode:o} lets others read it; run `chmod 600 {path}`"]
    if not os.access(path, os.R_OK):
        return [f"{key} {path} cannot be read: check its owner and permissions"]
    return _loads(lambda: load(path))


def _loads(load: Callable[[], None]) -> list[str]:
    try:
        load()
    except ConfigError as exc:
        return [str(exc)]
    return []


def _load_signing_key(path: Path) -> None:
    from flsuite.audit.keys import load_signing_key

    load_signing_key(path)


def _load_encryption_key(path: Path) -> None:
    from flsuite.registry.encryption import key_from_file

    key_from_file(path)


def _key_from_env(name: str) -> None:
    from flsuite.registry.encryption import key_from_env

    key_from_env(name)
