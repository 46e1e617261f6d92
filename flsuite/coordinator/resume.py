"""Resuming a study whose coordinator died (kill -9, power loss) from its output folder.

``flsuite run --resume OUTPUT_DIR`` (and ``flsuite launch --resume``) continue the study
from the last version it published in its registry, with the same plan:

- ``prepare_resume`` (the command, before anything runs or is written) refuses a folder
  that is not a study (no ``config.yaml`` and ``resume.json``), a study that completed, a
  registry that does not publish every round, overrides that change the study, and a
  registry that fails its offline verification (signed by the coordinator's own key):
  it fails closed. It returns the study of ``config.yaml`` with ``resume`` set, which travels
  to the ServerApp in the run_config.
- ``ResumePoint.load`` (the ServerApp) verifies the registry again, finds the last version
  of the study's run (``resume.json`` names the run), loads its weights; the rounds go on
  after its round, publishing under the same run id, so version numbers and lineage
  (each version's parent) continue.
- ``restore_outputs`` keeps the rows of metrics.csv, site_metrics.csv and privacy.csv up
  to that round (rows of a later round that was written but never published are dropped,
  as is a torn last line); the resumed rounds' rows are added after them. With monitoring,
  ``SiteMonitor.restore`` does the same for site_evaluation.csv.
- ``ResumedPlan`` re-plans a DP study with the sigma, q and steps of privacy_plan.csv
  (the plan already written), after checking that what every site's ledger holds now
  (the completed rounds, and an interrupted round's spend: never replayed for free) plus
  the remaining rounds and their evaluation and drift releases (counted by ``plan_site``'s
  rule, ``study_evaluation_phases``) still fits the site's cap; else StudyOverBudget names the site.
- ``ResumeRecorder`` rewrites ``resume.json`` (atomically) after each published round.

Privacy is never spent twice for a completed round: the study starts after it. A round
that was interrupted after sites trained stays in their ledgers and is run again (a new,
counted spend).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flsuite.config import compose_study, validate_study
from flsuite.config.schema import StudyConfig
from flsuite.errors import ConfigError, IntegrityError, PlanError, RegistryError, StudyOverBudget
from flsuite.storage import durable

__all__ = [
    "ALLOWED_OVERRIDES",
    "RESUME_FILE",
    "ResumePoint",
    "ResumeRecorder",
    "ResumeState",
    "ResumedPlan",
    "prepare_resume",
    "restore_outputs",
    "verify_study_registry",
]

RESUME_FILE = "resume.json"
#: Overrides a resume may take: how the engine runs, never what the study is.
ALLOWED_OVERRIDES = ("engine.parallel_sites", "engine.threads_per_site")
#: The output files with one row per round (and per site), kept on resume.
ROUND_FILES = ("metrics.csv", "site_metrics.csv", "privacy.csv")
TEXT_COLUMNS = frozenset({"site", "accountant", "rng"})  # never read back as numbers (a site may be named "1e5")


@dataclass(frozen=True)
class ResumeState:
    """What resume.json says: the study's run id and the last round it published (0: none yet)."""

    run_id: str
    study: str
    round: int = 0
    version: int | None = None

    def write(self, folder: Path) -> None:
        durable.write_atomic(folder / RESUME_FILE, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def read(cls, folder: Path) -> ResumeState:
        path = folder / RESUME_FILE
        try:
            raw = json.loads(path.read_text())
            state = cls(run_id=raw["run_id"], study=raw["study"], round=raw["round"], version=raw["version"])
        except FileNotFoundError:
            raise ConfigError(f"{folder} is not a study that can be resumed: it has no {RESUME_FILE} "
                              "(its coordinator never started a round). Give the output folder of a study "
                              "`flsuite run` started.") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} cannot be read ({exc}): the study in {folder} cannot be resumed") from None
        if not isinstance(state.run_id, str) or not state.run_id or not isinstance(state.round, int) or state.round < 0:
            raise ConfigError(f"{path} is malformed (run_id {state.run_id!r}, round {state.round!r}): "
                              f"the study in {folder} cannot be resumed")
        return state


# -- the command's side: check everything before anything runs ------------------------------

def prepare_resume(folder: Path, overrides: list[str]) -> StudyConfig:
    """The study to resume from ``folder`` (with ``resume`` set); a UserError/IntegrityError naming what is wrong."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: no such folder. Give the output folder of the study to resume.")
    config_file = folder / "config.yaml"
    if not config_file.is_file() or not (folder / RESUME_FILE).is_file():
        raise ConfigError(f"--resume {folder}: not a study folder (it needs config.yaml and {RESUME_FILE}, "
                          "written when a study starts). Give the output folder of the study to resume.")
    _refuse_completed(folder)
    try:
        stored = validate_study(yaml.safe_load(config_file.read_text()) or {})
    except (yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"{config_file} cannot be read ({exc}); the study cannot be resumed") from None
    study = _with_overrides(stored, overrides)
    _require_every_round_registry(study)
    state = ResumeState.read(folder)
    if state.study != study.name:
        raise ConfigError(f"{folder / RESUME_FILE} is for study {state.study!r}, config.yaml for {study.name!r}: "
                          "the folder mixes two studies and cannot be resumed")
    study = study.model_copy(update={"resume": True, "output_dir": str(folder)})
    verify_study_registry(study, folder)
    return study


def _refuse_completed(folder: Path) -> None:
    path = folder / "summary.json"
    if not path.is_file():
        return
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a summary that cannot be read is not proof of completion; the registry decides
    if isinstance(summary, dict) and summary.get("status") == "completed":
        raise ConfigError(f"the study in {folder} completed ({summary.get('rounds_completed')} of "
                          f"{summary.get('rounds_planned')} rounds): there is nothing to resume. "
                          "Start a new study with another --output-dir.")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _with_overrides(stored: StudyConfig, overrides: list[str]) -> StudyConfig:
    """``stored`` with the overrides that only change how the engine runs; any other change is refused."""
    if not overrides:
        return stored
    defaults = _flat(compose_study([]).model_dump(mode="json"))
    wanted = _flat(compose_study(list(overrides)).model_dump(mode="json"))
    original = _flat(stored.model_dump(mode="json"))
    named = {item.split("=", 1)[0].lstrip("+~") for item in overrides if "=" in item}  # keys set outright
    changed = {key: value for key, value in wanted.items()
               if value != original.get(key) and (value != defaults.get(key) or key in named)}
    refused = sorted(key for key in changed if key not in ALLOWED_OVERRIDES and key not in ("output_dir", "resume"))
    if refused:
        shown = ", ".join(f"{key}={changed[key]!r} (the study has {original.get(key)!r})" for key in refused)
        raise ConfigError(f"--resume continues the same study, so it cannot change {shown}. Drop those overrides, "
                          f"or start a new study with another --output-dir. A resume may only set: {', '.join(ALLOWED_OVERRIDES)}.")
    raw = stored.model_dump(mode="json")
    for key in ALLOWED_OVERRIDES:
        if key in changed:
            section, name = key.split(".")
            raw[section][name] = changed[key]
    return validate_study(raw)


def _require_every_round_registry(study: StudyConfig) -> None:
    if not study.registry.enabled or study.registry.publish != "every_round":
        raise ConfigError(f"study {study.name!r} cannot be resumed: it resumes from the model its registry published "
                          f"after the last completed round, and it ran with registry.enabled={study.registry.enabled}, "
                          f"registry.publish={study.registry.publish}. Resume needs registry.publish=every_round "
                          "(the default); start this study again in a new --output-dir.")


def verify_study_registry(study: StudyConfig, folder: Path) -> None:
    """Fail closed: the study's registry must verify offline, signed by this coordinator's key."""
    from flsuite.audit import key_id, load_signing_key
    from flsuite.coordinator.publishing import encryption_key, registry_paths
    from flsuite.registry import verify_registry

    path, key_path = registry_paths(study, folder)
    if not path.is_dir():
        raise ConfigError(f"the study in {folder} has no registry at {path}: it cannot be resumed (nothing was "
                          "published, or the registry was moved). Start the study again in a new --output-dir.")
    try:
        pin = key_id(load_signing_key(key_path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the coordinator's signing key {key_path} cannot be read ({exc}): the registry of the "
                          "study cannot be checked, so it is not resumed") from None
    report = verify_registry(path, encryption_key=encryption_key(study), expected_key=pin)
    if not report.ok:
        raise IntegrityError(f"the registry {path} does not verify, so the study is not resumed: {report.problems[0]}"
                             f"{f' (and {len(report.problems) - 1} more problems)' if len(report.problems) > 1 else ''}."
                             f" Run `flsuite audit verify {path}` for the whole report.")


# -- the ServerApp's side ---------------------------------------------------------------------

@dataclass
class ResumePoint:
    """Where a resumed study starts: after ``round``, from ``weights`` (None: no version yet)."""

    state: ResumeState
    round: int
    version: int | None
    weights: dict[str, Any] | None
    published: list[int] = field(default_factory=list)
    certificate: dict[str, Any] | None = None
    previous_weights: dict[str, Any] | None = None  # the version before ``version`` (None: the seeded initial model)

    @property
    def first_round(self) -> int:
        return self.round + 1

    @classmethod
    def load(cls, study: StudyConfig, folder: Path) -> ResumePoint:
        """Verify the registry (fail closed) and read the last version of the study's run."""
        from flsuite.coordinator.publishing import encryption_key, registry_paths
        from flsuite.registry import Registry

        _require_every_round_registry(study)
        state = ResumeState.read(folder)
        verify_study_registry(study, folder)
        path, _ = registry_paths(study, folder)
        with Registry.open(path, encryption_key=encryption_key(study), create=False) as registry:
            versions = sorted(registry.versions(state.run_id), key=lambda info: info.number)
            if not versions:
                return cls(state, 0, None, None)
            latest = versions[-1]
            if latest.study_id != study.name or not 1 <= latest.round <= study.federation.rounds:
                raise RegistryError(f"version {latest.number} of run {state.run_id} is round {latest.round} of study "
                                    f"{latest.study_id!r}, not a round of study {study.name!r} "
                                    f"({study.federation.rounds} rounds): the study cannot be resumed")
            weights = registry.load_weights(latest.number)
            previous = registry.load_weights(versions[-2].number) if len(versions) > 1 else None
            return cls(state, latest.round, latest.number, weights, [info.number for info in versions],
                       latest.dp_certificate, previous)

    def arrays_for(self, model: Any) -> Any:
        """The version's weights, loaded into ``model``, as the round loop's ArrayRecord."""
        import torch

        from flsuite.models.weights import model_to_arrays

        if self.weights is None:
            return model_to_arrays(model)
        try:
            model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in self.weights.items()}, strict=True)
        except RuntimeError as exc:
            raise RegistryError(f"version {self.version} does not fit the study's model ({str(exc).splitlines()[0]}): "
                                "the study cannot be resumed") from None
        return model_to_arrays(model)

    def previous_arrays(self, initial: Any) -> Any:
        """The model published before the last version, keyed and ordered as ``initial`` (the seeded model)."""
        from flwr.app import Array, ArrayRecord

        if self.previous_weights is None:
            return initial
        return ArrayRecord({key: Array(self.previous_weights[key]) for key in initial.keys()})

    def seed_publisher(self, publisher: Any) -> None:
        """What this study published before: its versions, and each site's DP phases that produced the model."""
        from flsuite.coordinator.publishing import compact_phases

        publisher.published = list(self.published)
        for site, claim in ((self.certificate or {}).get("sites") or {}).items():
            publisher.phases[site] = compact_phases(claim["phases"])
            publisher.deltas[site] = claim["delta"]


class ResumeRecorder:
    """A round listener: rewrites resume.json after each round the publisher published."""

    def __init__(self, folder: Path, state: ResumeState, publisher: Any) -> None:
        self.folder = folder
        self.state = state
        self.publisher = publisher
        state.write(folder)

    def __call__(self, record: Any, arrays: Any) -> None:
        if self.publisher.published:
            self.state = ResumeState(self.state.run_id, self.state.study, record.round, self.publisher.published[-1])
            self.state.write(self.folder)


def restore_outputs(outputs: Any, folder: Path, last_round: int) -> dict[str, int]:
    """Load the rows of rounds 1..last_round into ``outputs`` (a StudyOutputs); returns rows dropped per file."""
    import logging

    dropped: dict[str, int] = {}
    targets = {"metrics.csv": outputs.rows, "site_metrics.csv": outputs.site_rows, "privacy.csv": outputs.privacy_rows}
    for name in ROUND_FILES:
        rows, skipped = read_round_rows(folder / name, last_round)
        targets[name][:] = rows
        dropped[name] = skipped
        if skipped:
            logging.getLogger("flwr").info("resume: %s: dropped %d row(s) of rounds after %d or torn", name, skipped, last_round)
    return dropped


def read_round_rows(path: Path, last_round: int) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``path`` for rounds <= last_round, typed back; and how many rows were dropped.

    A torn last line (no newline, or fewer fields than the header) and rows of later rounds
    (written, but their model was never published) are dropped.
    """
    if not path.is_file():
        return [], 0
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    dropped = 0
    if lines and not lines[-1].endswith("\n"):
        lines, dropped = lines[:-1], 1
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header:
        return [], dropped
    rows = []
    for fields in reader:
        if len(fields) != len(header):
            dropped += 1
            continue
        row = {key: value if key in TEXT_COLUMNS else _typed(value) for key, value in zip(header, fields)}
        if not isinstance(row.get("round"), int) or not 1 <= row["round"] <= last_round:
            dropped += 1
            continue
        rows.append(row)
    return rows, dropped


def _typed(text: str) -> Any:
    """A CSV cell as the outputs wrote it: "" for None, an int, a float, or the text itself."""
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


# -- privacy: the same plan, if it still fits -------------------------------------------------

PLAN_FILE = "privacy_plan.csv"


class ResumedPlan:
    """A planner for ``DpAdmission``: the stored plan's rows, checked against what each site holds now."""

    def __init__(self, folder: Path, first_round: int) -> None:
        from flsuite.privacy import PlanRow

        path = folder / PLAN_FILE
        rows = _plan_rows(path)
        if not rows:
            raise PlanError(f"{path} is missing or empty: the privacy plan of the study cannot be resumed")
        try:
            self.rows = {row["site"]: PlanRow(**row) for row in rows}
        except TypeError as exc:
            raise PlanError(f"{path} is not a privacy plan ({exc}): the study cannot be resumed") from None
        self.first_round = first_round

    @classmethod
    def for_point(cls, folder: Path, first_round: int) -> Any:
        """The stored plan; the usual planner when the study died before it planned (no plan, no round)."""
        if first_round == 1 and not (folder / PLAN_FILE).is_file():
            from flsuite.coordinator.planning import plan_privacy

            return plan_privacy
        return cls(folder, first_round)

    def __call__(self, study: StudyConfig, statuses: Mapping[int, Any]) -> Any:
        from flsuite.coordinator.planning import PrivacyPlan, plan_site, study_evaluation_phases
        from flsuite.privacy import epsilon

        remaining = study.federation.rounds - self.first_round + 1
        # What the rest of the study releases besides training, counted as plan_site counts it (one rule).
        evaluation = study_evaluation_phases(study, first_round=self.first_round)
        releases = sum(steps for _, _, steps in evaluation)
        also = f" and its {releases} evaluation or drift release(s)" if releases else ""
        rows, sigma_by_node, over, texts = [], {}, [], []
        for node, status in sorted(statuses.items(), key=lambda item: item[1].name):
            row = self.rows.get(status.name)
            if row is None:  # a site the study never planned: planned now by the usual rules
                row, fits = plan_site(study, status)
                if not fits:
                    over.append(row)
                    texts.append(f"site {row.site!r} would reach epsilon {row.projected_epsilon:.3f} against its cap {row.max_epsilon}")
            elif not status.private:
                raise PlanError(f"site {status.name!r} was planned for DP-SGD but now reports no privacy status (cap, delta): "
                                "the study cannot be resumed with it")
            elif status.records != row.records:
                raise PlanError(f"site {status.name!r} now declares {status.records} records; the study's plan was made for "
                                f"{row.records} (its q and steps): the study cannot be resumed with the same plan")
            else:
                delta = float(status.delta)
                spent = epsilon(status.prior_phases, delta=delta, accountant=study.privacy.accountant)
                rest = (row.sample_rate, row.noise_multiplier, row.steps_per_round * remaining)
                projected = epsilon((*status.prior_phases, rest, *evaluation), delta=delta, accountant=study.privacy.accountant)
                if projected > float(status.max_epsilon):
                    over.append(row)
                    texts.append(f"site {status.name!r} has spent epsilon {spent:.3f} (this study's completed and "
                                 f"interrupted rounds included); its remaining {remaining} round(s){also} would take it to "
                                 f"{projected:.3f}, over its cap {float(status.max_epsilon):g} by "
                                 f"{projected - float(status.max_epsilon):.3f}")
            rows.append(row)
            sigma_by_node[node] = row.noise_multiplier
        if over:
            raise StudyOverBudget("the resumed study no longer fits every site's privacy budget: " + "; ".join(texts)
                                  + ". It is not resumed; nothing was trained.", rows=rows, over_budget=over)
        return PrivacyPlan(rows=rows, sigma_by_node=sigma_by_node, over_budget=[])


def _plan_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [{key: value if key in TEXT_COLUMNS else _typed(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]
    for row in rows:
        for key in ("sample_rate", "noise_multiplier", "prior_epsilon", "study_epsilon", "projected_epsilon"):
            if isinstance(row.get(key), int):
                row[key] = float(row[key])
    return rows
