"""The one configuration schema of a flsuite study.

Hydra composes YAML from ``configs/``; this schema validates the result once, at the
boundary. Its defaults are those of the default study (``flsuite run`` with no
overrides); the YAML groups state only what they change. Every section is frozen, refuses
unknown keys (a typo is an error, not a silently ignored setting) and is strict: numbers
must be finite, true/false is not a number and text is not a number.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

UNIT_OF_PRIVACY = "one record at one site"

MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"a random seed, 0 to {MAX_SEED} (numpy's range)")]
CSV_ONLY_FIELDS = ("csv_path", "label_column", "feature_columns", "num_classes", "feature_ranges", "schema_path")


def feature_range_problem(column: str, bounds: Any, *, where: str = "data.feature_ranges") -> str | None:
    """Why ``bounds`` is not a declared feature range (two finite numbers, [min, max] with min < max); None when it is.

    The one check of a declared range, made where ranges enter: the config (``DataConfig``, so also
    the study a site receives) and a schema file (``feature_schema.read_schema_file``), and again by
    the scaler (``data.feature_ranges.scale_to_ranges``) for a caller that took neither path.
    """
    ok = (
        isinstance(bounds, (list, tuple))
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        and bounds[0] < bounds[1]
    )
    if ok:
        return None
    return f"{where}.{column}={bounds!r}: give [min, max], two finite numbers with min < max, e.g. {column}: [0, 120]"


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys refused, strict types.

    Strict means a bool is not taken for a number, nor text for a number or a bool
    (an int is still a valid float), and ``allow_inf_nan=False`` refuses inf and nan.
    Values that reach the schema as text (Flower's run_config) are decoded by the bridge.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class DataConfig(Section):
    """Which records, and how they are split across simulated sites."""

    dataset: Literal["breast_cancer", "digits", "csv"] = "breast_cancer"
    csv_path: str | None = Field(None, description="the CSV file of dataset=csv (data=csv); refused for other datasets")
    label_column: str | None = None
    feature_columns: list[str] | None = None
    num_classes: int | None = Field(None, ge=2)
    feature_ranges: dict[str, list[float]] | None = Field(
        None,
        description="each CSV feature's declared [min, max] (from domain knowledge, never from the records): "
        "sites and the coordinator scale every feature onto [-1, 1] with it; values outside are clipped and counted",
    )
    schema_path: str | None = Field(
        None,
        description="a YAML or JSON file holding `feature_ranges: {column: [min, max]}`, read when the study is "
        "composed and sent to the sites with the study (instead of data.feature_ranges)",
    )
    partitioning: Literal["iid", "dirichlet", "size_skew"] = "dirichlet"
    dirichlet_alpha: float = Field(0.5, gt=0)
    size_skew_sigma: float = Field(1.0, gt=0)
    min_site_records: int = Field(40, ge=2)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: Seed = 0

    @model_validator(mode="after")
    def _csv_needs_path_and_label(self) -> DataConfig:
        if self.dataset == "csv" and (not self.csv_path or not self.label_column):
            raise ValueError("dataset=csv needs data.csv_path and data.label_column")
        if self.feature_ranges is not None and self.schema_path is not None:
            raise ValueError("data.feature_ranges and data.schema_path both declare the feature ranges: give one")
        for column, bounds in (self.feature_ranges or {}).items():
            if problem := feature_range_problem(column, bounds):
                raise ValueError(problem)
        if self.dataset != "csv":
            given = [f"data.{name}={getattr(self, name)!r}" for name in CSV_ONLY_FIELDS if getattr(self, name) is not None]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(
                    f"{', '.join(given)} {verb} only to dataset=csv, but data.dataset={self.dataset!r}: "
                    "add `data=csv` to train on the CSV file, or drop the setting"
                )
        return self


class ModelConfig(Section):
    """Which network each site trains; all are Opacus-compatible (no BatchNorm)."""

    name: Literal["logreg", "mlp", "cnn"] = "logreg"
    hidden_units: int = Field(64, ge=1)
    channels: int = Field(8, ge=1)


class FederationConfig(Section):
    """Rounds, cohort selection and the server-side strategy."""

    rounds: int = Field(10, ge=1)
    num_sites: int = Field(5, ge=1)
    fraction_sites: float = Field(1.0, gt=0, le=1)
    min_sites: int = Field(3, ge=1)
    round_timeout_s: float = Field(
        600.0,
        gt=0,
        description="a round's deadline: it closes then with the valid replies that arrived, if they reach min_sites; "
        "a secure round holds each of its stages to it (unless secagg.stage_timeout_s is set)",
    )
    max_missed_rounds: int = Field(
        3,
        ge=1,
        description="a site that gives no valid reply in time in this many rounds in a row is pruned: no later round "
        "waits for it (summary pruned_sites); it comes back only through planning",
    )
    max_update_norm: float = Field(
        100.0,
        gt=0,
        description="the largest L2 norm of a site's update (its weights minus the global model's) that a round "
        "averages; a reply beyond it is rejected. Measured largest honest update (10 or 15 rounds x 5 sites): "
        "6.1 in the default study (DP-SGD noise), 1.7 without DP, 4.0 in experiment=digits_dp, 1.3 digits MLP, 1.9 digits CNN",
    )
    max_site_records: int = Field(
        10_000_000,
        ge=1,
        description="the most training records a site may declare; its declared count is its aggregation weight",
    )
    strategy: Literal["fedavgm", "fedavg", "fedprox", "fedadam"] = Field(
        "fedavgm",
        description="fedavgm: FedAvg with server momentum (the default: it keeps label-skewed sites converging); "
        "fedavg, fedprox, fedadam",
    )
    proximal_mu: float = Field(0.01, ge=0)
    server_momentum: float = Field(0.9, ge=0, lt=1, description="FedAvgM's momentum on the averaged update (fedavgm)")
    server_learning_rate: float | None = Field(
        None, gt=0, description="the server optimiser's step (fedavgm, fedadam); unset: FedAvgM 1.0, FedAdam 0.1"
    )

    @model_validator(mode="after")
    def _min_sites_fit(self) -> FederationConfig:
        if self.min_sites > self.num_sites:
            raise ValueError(
                f"min_sites={self.min_sites} is more than num_sites={self.num_sites}; "
                "lower federation.min_sites or add sites"
            )
        return self


class TrainingConfig(Section):
    """Local training at each site."""

    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(
        2.0, gt=0, description="the local step; DP-SGD's clipped gradients are small (privacy.max_grad_norm 0.5), "
        "hence a large default (experiments/README.md, issue 11)"
    )


class PrivacyConfig(Section):
    """Site-level DP-SGD; the unit of privacy is one record at one site.

    The noise is set one way: a study budget (``target_epsilon``, the default) from
    which each site's sigma is planned, or a fixed ``noise_multiplier``. Giving
    ``noise_multiplier`` alone drops the default target; giving both is refused.
    """

    enabled: bool = True
    noise_multiplier: float | None = Field(
        None,
        gt=0,
        description="a fixed sigma for every site (> 0); setting it alone clears the default "
        "target_epsilon, setting both is an error",
    )
    target_epsilon: float | None = Field(
        3.0,
        gt=0,
        description="the epsilon this study may spend, from which sigma is planned; "
        "cleared when noise_multiplier is given alone (or set it to null)",
    )
    max_grad_norm: float = Field(0.5, gt=0, description="per-record gradient clipping norm (DP-SGD's sensitivity)")
    delta: float | None = Field(1e-5, gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    max_epsilon: float = Field(10.0, gt=0)
    grad_sample_mode: Literal["hooks", "ghost"] = "hooks"
    secure_rng: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fixed_noise_replaces_the_default_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("noise_multiplier") is not None and "target_epsilon" not in data:
            return {**data, "target_epsilon": None}
        return data

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> PrivacyConfig:
        if not self.enabled:
            return self
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError(
                f"privacy.noise_multiplier={self.noise_multiplier!r} and privacy.target_epsilon={self.target_epsilon!r} "
                "are both set: keep one (for a fixed sigma set privacy.target_epsilon=null, \"\" in Flower's run_config)"
            )
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError(
                "with privacy.enabled=true set privacy.target_epsilon or privacy.noise_multiplier "
                "(or privacy=none for no DP)"
            )
        return self


class SecAggConfig(Section):
    """Secure aggregation: the coordinator only sees the sum of the sites' updates.

    ``threshold_fraction`` of each site's share group (its neighbours and itself) must
    answer to rebuild its secrets; ``neighbours`` empty means SecAgg+'s logarithmic default
    (``flsuite.secagg.graph.default_neighbours``: 3·log2(n) up to even), a number of at
    least cohort_size-1 means every other site.
    """

    enabled: bool = True
    threshold_fraction: float = Field(0.6, gt=0.5, le=1)
    neighbours: int | None = Field(None, ge=2)
    max_dropouts: int | None = Field(None, ge=0)
    clip_range: float = Field(8.0, gt=0)
    clip_out_of_range: bool = False
    weight_cap: int = Field(10_000, ge=1)
    mask_cipher: Literal["aes-256-ctr", "chacha20"] = "aes-256-ctr"
    stage_timeout_s: float | None = Field(
        None,
        gt=0,
        description="each secure-aggregation stage's deadline (setup, share-keys, train, unmask); empty: "
        "federation.round_timeout_s, the same deadline per stage as a plain round's",
    )

    def stage_deadline_s(self, round_timeout_s: float) -> float:
        """Each secure stage's deadline: ``stage_timeout_s``, else the round's (``federation.round_timeout_s``)."""
        return float(self.stage_timeout_s) if self.stage_timeout_s is not None else float(round_timeout_s)

    def settings_for(self, cohort_size: int):
        """The protocol settings for a round of ``cohort_size`` sites (validated; ConfigError if not allowed)."""
        from flsuite.secagg.graph import default_neighbours
        from flsuite.secagg.settings import SecAggSettings

        asked = self.neighbours if self.neighbours is not None else default_neighbours(cohort_size)
        neighbours = asked if asked < cohort_size - 1 else None
        group = (cohort_size - 1 if neighbours is None else neighbours) + 1
        threshold = max(group // 2 + 1, math.ceil(self.threshold_fraction * group))
        return SecAggSettings(
            cohort_size=cohort_size,
            threshold=min(threshold, group),
            neighbours=neighbours,
            max_dropouts=self.max_dropouts,
            clip_range=self.clip_range,
            clip_out_of_range=self.clip_out_of_range,
            weight_cap=self.weight_cap,
            mask_cipher=self.mask_cipher,
        )


class EngineConfig(Section):
    """Where the ServerApp and ClientApps run: ``deployment`` is set by ``flsuite launch``."""

    name: Literal["inline", "ray", "deployment"] = "inline"
    threads_per_site: int = Field(1, ge=1)
    parallel_sites: int = Field(
        1,
        ge=1,
        description="inline engine: how many simulated sites handle a request at once (1: one after another "
        "in the coordinator's process); see site_workers",
    )
    site_workers: Literal["processes", "threads"] = Field(
        "processes",
        description="inline engine with parallel_sites > 1: 'processes' runs the sites' ClientApp in that many "
        "worker processes (at most one per core / threads_per_site), 'threads' in threads of the coordinator's "
        "process (they share the GIL: DP-SGD on small models barely gains)",
    )


class RegistryConfig(Section):
    """Where global models are published."""

    enabled: bool = True
    path: str | None = None
    publish: Literal["every_round", "best_and_final", "final"] = "every_round"
    signing_key: str | None = None
    encryption_key_file: str | None = None
    encryption_key_env: str | None = None


class MonitoringConfig(Section):
    """Per-site private evaluation (see flsuite/site/evaluation.py): each site holds out
    ``holdout_fraction`` of its records (a seeded split, never trained on), evaluates the global
    model on them after the chosen rounds and releases per-class correct/total counts through
    the Gaussian mechanism (std ``noise_multiplier`` x sqrt(2)), accounted in its ledger and
    budgeted in the plan. Runs in DP studies (privacy.enabled) only.
    """

    enabled: bool = True
    every: int = Field(
        0,
        ge=0,
        description="rounds between per-site evaluations (plus the final round); 0: the final round only, "
        "one release per site, the cheapest that still reports per-site accuracy",
    )
    noise_multiplier: float = Field(
        5.0,
        gt=0,
        description="sigma of the Gaussian mechanism relative to the counts' L2 sensitivity sqrt(2); "
        "one release at 5 costs epsilon 0.73 alone at delta 1e-5, less once composed with training",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    drift: bool = Field(
        False,
        description="each site releases a DP histogram of its labels (and drift_features) once per study, kept in "
        "its folder, and is flagged when it moved more than drift_threshold (total variation beyond the noise) since "
        "its previous study; off by default: one more Gaussian release per study (epsilon 0.73 alone at sigma 5)",
    )
    drift_features: list[int] | None = Field(None, description="feature columns (0-based) whose histograms drift also tracks (none: labels only)")
    drift_bins: int = Field(5, ge=2, le=100, description="equal bins over [-1, 1] (values outside fall in the end bins)")
    drift_threshold: float = Field(0.2, gt=0, le=1)
    drift_noise_multiplier: float = Field(5.0, gt=0, description="sigma relative to the histograms' L2 sensitivity sqrt(1 + features)")


TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class TrackingConfig(Section):
    """Experiment tracking of ``flsuite run`` (``tracking=mlflow``; needs the extra ``flsuite[mlflow]``)."""

    backend: Literal["none", "mlflow"] = "none"
    uri: str | None = Field(
        None,
        description="the MLflow tracking store; unset: sqlite:///<outputs root>/mlflow.db, the outputs root being "
        "--output-dir when given, else ./outputs",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="the MLflow experiment; unset: the study's name (a sweep logs into its first run's experiment)",
    )

    @model_validator(mode="after")
    def _uri_names_a_tracking_store(self) -> TrackingConfig:
        if self.uri is not None:
            scheme, sep, rest = self.uri.partition(":")
            if not sep or scheme.split("+")[0].lower() not in TRACKING_SCHEMES or not rest.strip("/"):
                raise ValueError(
                    f"tracking.uri={self.uri!r} is not an MLflow tracking store: give sqlite:///PATH/mlflow.db, "
                    "http(s)://HOST:PORT of an MLflow server, or a database URI (postgresql://...); "
                    "or leave it unset for sqlite:///<outputs root>/mlflow.db"
                )
        return self


class StudyConfig(Section):
    """A whole federated study."""

    name: str = "default"
    seed: Seed = 0
    output_dir: str | None = None
    sites_dir: str = ".flsuite/sites"
    resume: bool = False  # set by `flsuite run --resume`/`launch --resume`: continue the study in output_dir
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    federation: FederationConfig = FederationConfig()
    training: TrainingConfig = TrainingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secagg: SecAggConfig = SecAggConfig()
    engine: EngineConfig = EngineConfig()
    registry: RegistryConfig = RegistryConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def site_evaluation(self) -> bool:
        """Whether sites evaluate privately and hold out records for it (monitoring in a DP study)."""
        return self.monitoring.enabled and self.privacy.enabled

    def first_cohort_size(self) -> int:
        """Sites asked in a round while none has dropped out or refused."""
        federation = self.federation
        return min(federation.num_sites, max(federation.min_sites, int(federation.num_sites * federation.fraction_sites)))

    @model_validator(mode="after")
    def _tracking_runs_where_it_is_logged(self) -> StudyConfig:
        if self.tracking.backend != "none" and self.engine.name == "deployment":
            raise ValueError(
                f"tracking={self.tracking.backend} is logged by `flsuite run` on this machine; a study on "
                "engine=deployment (`flsuite launch`) is not tracked: drop tracking or run it with `flsuite run`"
            )
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits_the_cohort(self) -> StudyConfig:
        if self.secagg.enabled:
            from flsuite.errors import ConfigError

            try:
                self.secagg.settings_for(self.first_cohort_size())
                self.secagg.settings_for(self.federation.min_sites)
            except ConfigError as exc:
                raise ValueError(f"{exc} (cohorts here have {self.federation.min_sites} to {self.first_cohort_size()} sites)") from None
        return self
