"""Compose a study config from the Hydra tree in ``configs/`` and validate it once.

``flsuite run key=value ...`` and ``flsuite run -m key=a,b`` both come through here:
Hydra composes the YAML groups and applies the overrides, the schema validates the
result, and every Hydra complaint becomes a ``ConfigError`` a person can act on.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from flsuite.config.schema import StudyConfig
from flsuite.config.validation import validate_study
from flsuite.errors import ConfigError

PRIMARY_CONFIG = "config"


def config_dir() -> Path:
    """The folder of the Hydra config tree (``FLSUITE_CONFIG_DIR`` wins if set)."""
    override = os.environ.get("FLSUITE_CONFIG_DIR")
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "configs"
    if not (folder / f"{PRIMARY_CONFIG}.yaml").is_file():
        raise ConfigError(
            f"no Hydra config tree at {folder}: install flsuite from its source folder "
            "(pip install -e .) or set FLSUITE_CONFIG_DIR to a folder holding config.yaml"
        )
    return folder


def compose_raw(overrides: list[str]) -> dict[str, Any]:
    """Compose the YAML tree with the overrides into a plain nested dict."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    folder = config_dir()
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            composed = compose(config_name=PRIMARY_CONFIG, overrides=_settable(overrides, folder))
        return OmegaConf.to_container(composed, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_hydra_message(exc)) from None


def _settable(overrides: list[str], folder: Path) -> list[str]:
    """Let value overrides reach every schema key, even one the YAML leaves at its default.

    Hydra refuses keys its YAML does not hold; the schema is the judge of what exists,
    so ``key=value`` becomes ``++key=value`` (set or add) unless ``key`` names a group.
    """
    groups = {entry.name for entry in folder.iterdir() if entry.is_dir()}
    settable = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" in override and not key.startswith(("+", "~")) and key.split("@")[0] not in groups:
            override = f"++{override}"
        settable.append(override)
    return settable


def compose_study(overrides: list[str]) -> StudyConfig:
    """Compose and validate one study (a CSV study's schema file read into ``data.feature_ranges``)."""
    from flsuite.config.feature_schema import resolve_schema_file

    return resolve_schema_file(validate_study(compose_raw(overrides)))


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Expand Hydra sweep syntax (``a=1,2 b=x,y``, ``range(...)``) into one override list per run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(_hydra_message(exc)) from None
    axes = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(combination) for combination in itertools.product(*axes)]


def _hydra_message(exc: Exception) -> str:
    message = " ".join(str(exc).split()).split(" Config search path:")[0]
    return message
