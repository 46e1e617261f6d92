"""Where ``flsuite run`` and ``flsuite launch`` write: folder names from the experiment and its overrides, and Hydra's own dirs.

A single run (or launch) goes to ``--output-dir``, or ``hydra.run.dir=...``, or
``outputs/DATE/TIME_NAME_OVERRIDES`` (``NAME`` the study's name, ``OVERRIDES`` the
command's overrides but ``experiment=``, which the name already says). A sweep goes to
``--output-dir``, or ``hydra.sweep.dir=...``, or ``multirun/DATE/TIME_NAME``, one
subfolder per run named ``N_OVERRIDES`` after the overrides that vary between runs, and
the sweep's table beside them. Names keep only letters, digits and ``._=,+-`` (anything
else becomes ``-``) and are at most ``MAX_NAME`` characters: a longer one is cut and ends
with a digest of the whole, so two long override lists never share a folder. Hydra's
``${now:FORMAT}`` in a dir is expanded with the run's start time. Pure: no torch, no flwr.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flsuite.errors import ConfigError

MAX_NAME = 80
"""The longest folder name flsuite makes from a study's name and overrides (file systems allow 255)."""

RUN_DIR, SWEEP_DIR = "hydra.run.dir", "hydra.sweep.dir"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_NOW = re.compile(r"\$\{now:([^}]*)\}")


@dataclass(frozen=True)
class HydraDirs:
    """The ``hydra.run.dir`` / ``hydra.sweep.dir`` a command gave (None when not given)."""

    run_dir: str | None = None
    sweep_dir: str | None = None


def split_hydra_dirs(overrides: list[str], *, multirun: bool) -> tuple[list[str], HydraDirs]:
    """Take Hydra's own output-dir overrides out of ``overrides``; refuse other ``hydra.*`` keys.

    ``hydra.run.dir`` is for a single run and ``hydra.sweep.dir`` for ``-m``, as in Hydra.
    Any other ``hydra.`` override would be silently ignored by the schema, so it is refused.
    """
    study_overrides: list[str] = []
    found: dict[str, str] = {}
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if not key.startswith("hydra.") and key != "hydra":
            study_overrides.append(override)
            continue
        if key not in (RUN_DIR, SWEEP_DIR) or not sep:
            raise ConfigError(
                f"{override!r}: flsuite honours only {RUN_DIR}=FOLDER (one run) and {SWEEP_DIR}=FOLDER (with -m) "
                "among Hydra's own settings; drop the override"
            )
        if not value.strip():
            raise ConfigError(f"{override!r} names no folder: give {key}=FOLDER")
        found[key] = value
    if multirun and RUN_DIR in found:
        raise ConfigError(f"{RUN_DIR} applies to a single run; a sweep (-m) writes under {SWEEP_DIR}=FOLDER")
    if not multirun and SWEEP_DIR in found:
        raise ConfigError(f"{SWEEP_DIR} applies to a sweep (-m); a single run writes to {RUN_DIR}=FOLDER")
    return study_overrides, HydraDirs(found.get(RUN_DIR), found.get(SWEEP_DIR))


def safe_name(*parts: str) -> str:
    """``parts`` joined with ``_`` as a folder name: safe characters only, at most ``MAX_NAME`` long."""
    name = _UNSAFE.sub("-", "_".join(part for part in parts if part)).strip("-.") or "study"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - len(digest) - 1].rstrip('-_.')}-{digest}"


def override_label(overrides: list[str]) -> list[str]:
    """The overrides that say how a run differs from its experiment (``experiment=`` is in the name)."""
    return [o.lstrip("+~") for o in overrides if o.lstrip("+~").partition("=")[0] != "experiment"]


def expand_now(folder: str, stamp: datetime) -> Path:
    """A Hydra dir with ``${now:FORMAT}`` expanded at ``stamp``; other ``${...}`` are refused."""
    expanded = _NOW.sub(lambda match: stamp.strftime(match.group(1)), folder)
    if "${" in expanded:
        raise ConfigError(f"{folder!r}: flsuite expands only ${{now:FORMAT}} in Hydra's dirs; write the folder out")
    return Path(expanded)


def run_folder(name: str, overrides: list[str], stamp: datetime, *, output_dir: Path | None, dirs: HydraDirs) -> Path:
    """The folder of a single run."""
    if output_dir is not None and dirs.run_dir is not None:
        raise ConfigError(f"--output-dir and {RUN_DIR} both name the output folder: give one")
    if output_dir is not None:
        return output_dir
    if dirs.run_dir is not None:
        return expand_now(dirs.run_dir, stamp)
    day, time = stamp.strftime("%Y-%m-%d"), stamp.strftime("%H-%M-%S")
    return Path("outputs") / day / safe_name(time, name, *override_label(overrides))


def sweep_folders(name: str, runs: list[list[str]], stamp: datetime, *, output_dir: Path | None,
                  dirs: HydraDirs) -> tuple[Path, list[Path]]:
    """The sweep's folder and one subfolder per run, ``N_`` plus the overrides that vary."""
    if output_dir is not None and dirs.sweep_dir is not None:
        raise ConfigError(f"--output-dir and {SWEEP_DIR} both name the sweep's folder: give one")
    if output_dir is not None:
        root = output_dir
    elif dirs.sweep_dir is not None:
        root = expand_now(dirs.sweep_dir, stamp)
    else:
        root = Path("multirun") / stamp.strftime("%Y-%m-%d") / safe_name(stamp.strftime("%H-%M-%S"), name)
    common = set.intersection(*(set(run) for run in runs)) if runs else set()
    return root, [root / safe_name(str(index), *(o.lstrip("+~") for o in run if o not in common))
                  for index, run in enumerate(runs)]
