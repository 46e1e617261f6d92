"""Coordinator and site config files: YAML, validated by frozen pydantic models.

Relative paths are resolved against the folder of the config file, so a config can sit
beside the PKI folder or site bundle it names. Unknown keys, booleans where a number
belongs (YAML's `true` is not 1) and numbers that are not finite are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from flsuite.errors import ConfigError
from flsuite.pki.identities import validate_site_name

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # No setting of these configs is a yes/no; pydantic would take `true` as 1 or 1.0.
        if isinstance(value, bool):
            raise ValueError(f"got the yes/no value {str(value).lower()}; write a number or text here")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _resolve_paths(cls, value: object, info: ValidationInfo) -> object:
        base = (info.context or {}).get("base_dir")
        if base is None:
            return value
        if isinstance(value, Path):
            return (Path(base) / value.expanduser()).resolve()
        if isinstance(value, dict):
            return {k: (Path(base) / v.expanduser()).resolve() if isinstance(v, Path) else v for k, v in value.items()}
        return value


class TlsFiles(_Frozen):
    """The coordinator's TLS files as `flsuite pki` wrote them."""

    ca_certificate: Path = Field(description="The federation CA certificate (pki/ca.crt).")
    certificate: Path = Field(description="The coordinator certificate (pki/coordinator/coordinator.crt).")
    key: Path = Field(description="Its private key (pki/coordinator/coordinator.key).")


class CoordinatorConfig(_Frozen):
    """What `flsuite coordinator start` needs."""

    federation: str = Field("flsuite", pattern=_NAME, description="Connection name for `flwr run . NAME`.")
    state_dir: Path = Field(description="Pid file, log, database and FLWR_HOME live here.")
    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 unless sites are remote.")
    port: int | None = Field(9093, ge=1, le=65535, description="Port to listen on; null picks a free one.")
    connect_host: str | None = Field(
        None, description="Host name the operator's `flwr` CLI uses; defaults to host (127.0.0.1 for 0.0.0.0)."
    )
    tls: TlsFiles
    sites: dict[str, Path] = Field(
        default_factory=dict, description="Site name -> that site's node-auth.pub, registered at start."
    )
    startup_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the SuperLink to answer.")

    @field_validator("sites")
    @classmethod
    def _site_names(cls, sites: dict[str, Path]) -> dict[str, Path]:
        for name in sites:
            try:
                validate_site_name(name)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return sites


class PrivacyCap(_Frozen):
    """The site's own privacy cap: no request that would pass it is trained."""

    max_epsilon: float = Field(gt=0, description="Largest total epsilon this site's data may spend.")
    delta: float = Field(
        gt=0, lt=1, description="The delta of every guarantee at this site; `flsuite site check` refuses one above "
        "1/N for the N records of the data file.",
    )


class SiteConfig(_Frozen):
    """What `flsuite site start` needs."""

    site: str = Field(pattern=_NAME, description="This site's name, as issued by `flsuite pki issue-site`.")
    coordinator: str = Field(description="The coordinator's HOST:PORT.")
    bundle: Path = Field(description="The site bundle folder from the coordinator's operator.")
    data: Path = Field(description="The site's training data file.")
    label_column: str | None = Field(
        None, min_length=1, description="The label column of the data file; default: the study's data.label_column, else 'label'."
    )
    ledger: Path = Field(description="The site's privacy ledger file (created if missing).")
    state_dir: Path = Field(description="Pid file, log and FLWR_HOME of the SuperNode.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Local port of the SuperNode's runtime API; null picks a free one."
    )
    privacy: PrivacyCap
    dataset: str | None = Field(
        None,
        pattern=_NAME,
        description="The name of the data this site's privacy budget belongs to; default: the site name. Every "
        "DP event the ledger holds for it counts against the cap, whatever a study does with the data.",
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for the coordinator to answer.")

    @property
    def budget_dataset(self) -> str:
        """The dataset this site declares: ``dataset``, else the site name."""
        return self.dataset or self.site


def load_coordinator_config(path: Path | str) -> CoordinatorConfig:
    """Read and validate a coordinator config file."""
    return _load(Path(path), CoordinatorConfig)


def load_site_config(path: Path | str) -> SiteConfig:
    """Read and validate a site config file."""
    return _load(Path(path), SiteConfig)


def _load(path: Path, model: type[_Frozen]):  # noqa: ANN202
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist. Pass the path of your YAML config with --config.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of settings, got {type(data).__name__}.")
    try:
        return model.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
