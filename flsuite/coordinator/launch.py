"""`flsuite launch`, part 1: turn Hydra overrides into a study a real federation can run.

Everything here happens before anything is submitted: compose and validate the study, mark
it `engine=deployment`, make every path it names absolute on the coordinator's machine
(the ServerApp runs there, in a working folder of Flower's choosing), find the federation's
connection in the coordinator's FLWR_HOME and check that the coordinator answers over TLS.
`flsuite.coordinator.submit` then runs `flwr run` with the plan.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flsuite.config import HydraDirs, compose_study, run_folder, split_hydra_dirs, to_run_config, toml_scalar, validate_study
from flsuite.config.schema import StudyConfig
from flsuite.coordinator.superlink import flwr_home
from flsuite.deployment.config import CoordinatorConfig
from flsuite.deployment.network import Address, parse_address, probe_tls
from flsuite.errors import ConfigError, CoordinatorUnreachable, DeploymentError

# What a Flower App of flsuite is made of: the FAB is built from a copy of these, so that
# `flwr run` never reads (or rewrites) the source folder and never walks .venv or outputs/.
APP_FILES = ("pyproject.toml", "README.md")
APP_FOLDERS = ("flsuite", "server", "clients", "configs")
RUN_CONFIG_FILE = "run_config.toml"


@dataclass(frozen=True)
class Connection:
    """A `[superlink.NAME]` entry of FLWR_HOME/config.toml."""

    federation: str
    address: Address
    ca_certificate: Path | None
    flwr_home: Path


@dataclass(frozen=True)
class LaunchPlan:
    """A validated study and where it goes: everything `submit_study` needs."""

    study: StudyConfig
    connection: Connection
    output_dir: Path
    app_dir: Path
    registered_sites: int | None = None
    resumed_after: int = 0  # with --resume: the last round the folder's study published (its rounds 1..N ran before)

    def run_config(self) -> dict[str, bool | int | float | str]:
        return to_run_config(self.study)

    def earlier_rows(self) -> list[dict]:
        """The rows metrics.json holds for the rounds a resumed study already ran (1..resumed_after)."""
        try:
            rows = json.loads((self.output_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return []
        rows = [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
        return [row for row in rows if isinstance(row.get("round"), int) and row["round"] <= self.resumed_after]

    def earlier_round_lines(self) -> list[str]:
        """For a resumed study: what the rounds before the restart were, marked as earlier (none otherwise)."""
        from flsuite.coordinator.submit import progress_line

        if not self.study.resume or not self.resumed_after:
            return []
        earlier = self.earlier_rows()
        planned = self.study.federation.rounds
        return [f"rounds 1-{self.resumed_after} ran before the restart; this run goes on from round {self.resumed_after + 1}",
                *(f"  earlier {progress_line(row, planned)}" for row in earlier)]


def plan_launch(
    overrides: list[str],
    *,
    federation: str | None = None,
    coordinator: CoordinatorConfig | None = None,
    output_dir: Path | None = None,
    app_dir: Path | None = None,
    now: datetime | None = None,
    resume: Path | None = None,
) -> LaunchPlan:
    """Compose and validate the study, resolve its paths and the federation's connection.

    Raises a UserError (ConfigError, DeploymentError) naming what is wrong before anything
    runs. Does not contact the coordinator: `check_coordinator_answers` does. With ``resume``
    (an output folder), the study is that folder's, checked by ``resume.prepare_resume`` (its
    registry verified), and travels with ``resume`` set in the run_config.
    """
    if resume is not None:
        return _plan_resume(resume, overrides, federation=federation, coordinator=coordinator, output_dir=output_dir, app_dir=app_dir)
    overrides, dirs = split_hydra_dirs(list(overrides), multirun=False)  # hydra.run.dir names the folder, as for `flsuite run`
    study = compose_study(overrides)
    if study.engine.name not in ("inline", "deployment"):
        raise ConfigError(
            f"engine={study.engine.name} runs a simulated federation; `flsuite launch` always runs on the "
            "real federation (engine=deployment). Drop the engine override, or use `flsuite run`."
        )
    folder = _output_folder(study, overrides, output_dir, dirs, now=now or datetime.now())
    study = _for_deployment(study, folder)
    home = flwr_home(coordinator) if coordinator else _default_flwr_home()
    name = federation or (coordinator.federation if coordinator else None)
    if not name:
        raise ConfigError("no federation named: pass --federation NAME, or --config coordinator.yaml to use its federation.")
    if coordinator and federation and federation != coordinator.federation:
        raise ConfigError(
            f"--federation {federation} does not match federation: {coordinator.federation} in the coordinator "
            "config. Drop --federation, or pass the config of that federation's coordinator."
        )
    connection = read_connection(home, name)
    registered = len(coordinator.sites) if coordinator and coordinator.sites else None
    return LaunchPlan(study=study, connection=connection, output_dir=folder,
                      app_dir=(app_dir or default_app_dir()).resolve(), registered_sites=registered)


def _plan_resume(resume: Path, overrides: list[str], *, federation: str | None, coordinator: CoordinatorConfig | None,
                 output_dir: Path | None, app_dir: Path | None) -> LaunchPlan:
    """The plan of `flsuite launch --resume FOLDER`: the folder's study, on the federation it ran on."""
    from flsuite.coordinator.resume import ResumeState, prepare_resume

    if output_dir is not None:
        raise ConfigError("--resume continues the study in its own folder: drop --output-dir")
    study = prepare_resume(resume, list(overrides))
    if study.engine.name != "deployment":
        raise ConfigError(f"the study in {resume} ran on engine={study.engine.name} (simulated sites, whose ledgers are in "
                          f"{study.sites_dir}): resume it with `flsuite run --resume {resume}`")
    folder = Path(study.output_dir or resume)
    study = _for_deployment(study, folder)
    home = flwr_home(coordinator) if coordinator else _default_flwr_home()
    name = federation or (coordinator.federation if coordinator else None)
    if not name:
        raise ConfigError("no federation named: pass --federation NAME, or --config coordinator.yaml to use its federation.")
    registered = len(coordinator.sites) if coordinator and coordinator.sites else None
    return LaunchPlan(study=study, connection=read_connection(home, name), output_dir=folder,
                      app_dir=(app_dir or default_app_dir()).resolve(), registered_sites=registered,
                      resumed_after=ResumeState.read(folder).round)


def read_connection(home: Path, federation: str) -> Connection:
    """The address and CA certificate of federation NAME in FLWR_HOME/config.toml."""
    path = home / "config.toml"
    hint = "Start the coordinator with `flsuite coordinator start --config FILE` and pass that --config."
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DeploymentError(f"federation {federation}: {path} does not exist, so no connection is known. {hint}") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise DeploymentError(f"federation {federation}: cannot read {path} ({err}). {hint}") from None
    entry = document.get("superlink", {}).get(federation)
    if not isinstance(entry, dict) or "address" not in entry:
        known = sorted(k for k, v in document.get("superlink", {}).items() if isinstance(v, dict))
        raise DeploymentError(
            f"federation {federation} is not in {path} (known: {', '.join(known) or 'none'}). {hint}"
        )
    address = parse_address(str(entry["address"]), field=f"{path} [superlink.{federation}] address")
    if entry.get("insecure"):
        raise DeploymentError(
            f"federation {federation} in {path} is a plaintext connection (insecure = true); flsuite only "
            "submits studies over TLS. Use the connection `flsuite coordinator start` writes."
        )
    certificate = entry.get("root-certificates")
    return Connection(federation, address, Path(certificate) if certificate else None, home)


def check_coordinator_answers(connection: Connection, *, timeout: float = 10.0) -> str:
    """Handshake with the federation's coordinator; return the TLS version or raise naming it."""
    if connection.ca_certificate is None:
        raise DeploymentError(
            f"federation {connection.federation}: its connection has no root-certificates, so the coordinator "
            f"at {connection.address} cannot be verified. Restart it with `flsuite coordinator start`."
        )
    try:
        return probe_tls(connection.address, ca_certificate=connection.ca_certificate, timeout=timeout)
    except CoordinatorUnreachable as err:
        raise CoordinatorUnreachable(f"federation {connection.federation}: {err}") from None


def default_app_dir() -> Path:
    """The flsuite source folder: pyproject.toml with [tool.flwr.app], server/ and clients/."""
    folder = Path(__file__).resolve().parents[2]
    for name in ("pyproject.toml", "server/app.py", "clients/app.py"):
        if not (folder / name).is_file():
            raise ConfigError(
                f"{folder / name} does not exist: `flsuite launch` submits the Flower App from flsuite's "
                "source folder. Install flsuite from its source folder (pip install -e .)."
            )
    return folder


def stage_app(app_dir: Path, target: Path) -> Path:
    """Copy the Flower App's files into target (a fresh folder) and return it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    target.mkdir(parents=True, exist_ok=False)
    for name in APP_FILES:
        if (app_dir / name).is_file():
            shutil.copy2(app_dir / name, target / name)
    for name in APP_FOLDERS:
        if (app_dir / name).is_dir():
            shutil.copytree(app_dir / name, target / name, ignore=ignore)
    # `flwr run` refuses run-config keys the app's pyproject does not declare: declare exactly
    # the keys this flsuite's schema sends, even when the source folder's copy lags behind.
    from flsuite.config.pyproject_sync import sync

    sync(target / "pyproject.toml")
    return target


def run_config_toml(run_config: dict[str, bool | int | float | str]) -> str:
    """The flat run_config as a TOML document of quoted dotted keys (what `--run-config FILE` reads)."""
    lines = ["# The study's flat run_config, written by `flsuite launch`."]
    for key, value in run_config.items():
        try:
            lines.append(f"{json.dumps(key)} = {toml_scalar(value)}")
        except ValueError as err:
            raise ConfigError(f"{key}={value!r} cannot travel in Flower's run_config: {err}; use a finite number, "
                              "a bool or a string.") from None
    return "\n".join(lines) + "\n"


def _default_flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def _output_folder(study: StudyConfig, overrides: list[str], output_dir: Path | None, dirs: HydraDirs, *,
                   now: datetime) -> Path:
    """--output-dir, else the study's output_dir, else hydra.run.dir, else ``outputs/DATE/TIME_NAME_OVERRIDES``,
    as ``flsuite run`` names it."""
    if output_dir is None and study.output_dir:
        output_dir = Path(study.output_dir)
    folder = run_folder(study.name, overrides, now, output_dir=output_dir, dirs=dirs)
    folder = folder.expanduser().resolve()
    for name in ("summary.json", "metrics.json"):
        if (folder / name).exists():
            raise ConfigError(
                f"output folder {folder} already holds a study ({name}). Choose another --output-dir, "
                "or move that study away."
            )
    return folder


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def _for_deployment(study: StudyConfig, folder: Path) -> StudyConfig:
    """engine=deployment, and every path absolute: the ServerApp runs in a folder of Flower's choosing."""
    raw = study.model_dump(mode="json")
    raw["engine"]["name"] = "deployment"
    raw["output_dir"] = str(folder)
    raw["sites_dir"] = _absolute(raw["sites_dir"])
    raw["data"]["csv_path"] = _absolute(raw["data"]["csv_path"])
    for key in ("path", "signing_key", "encryption_key_file"):
        raw["registry"][key] = _absolute(raw["registry"][key])
    return validate_study(raw)
