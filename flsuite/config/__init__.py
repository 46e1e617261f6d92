"""One validated configuration for a whole study, composed by Hydra and bridged to Flower."""

from flsuite.config.app_paths import FLSUITE_HOME_ENV, anchored_paths, flsuite_home
from flsuite.config.bridge import from_run_config, to_run_config
from flsuite.config.compose import compose_study, config_dir, expand_sweep
from flsuite.config.feature_schema import HOW_TO_DECLARE, missing_ranges, read_schema_file, resolve_schema_file
from flsuite.config.output_folders import HydraDirs, run_folder, split_hydra_dirs, sweep_folders
from flsuite.config.preflight import check_inputs
from flsuite.config.pyproject_sync import sync
from flsuite.config.schema import UNIT_OF_PRIVACY, DataConfig, FederationConfig, ModelConfig, StudyConfig, feature_range_problem
from flsuite.config.toml_text import toml_scalar
from flsuite.config.validation import validate_study

__all__ = [
    "FLSUITE_HOME_ENV",
    "HOW_TO_DECLARE",
    "HydraDirs",
    "UNIT_OF_PRIVACY",
    "DataConfig",
    "FederationConfig",
    "ModelConfig",
    "StudyConfig",
    "anchored_paths",
    "check_inputs",
    "compose_study",
    "config_dir",
    "expand_sweep",
    "feature_range_problem",
    "flsuite_home",
    "from_run_config",
    "missing_ranges",
    "read_schema_file",
    "resolve_schema_file",
    "run_folder",
    "split_hydra_dirs",
    "sweep_folders",
    "sync",
    "to_run_config",
    "toml_scalar",
    "validate_study",
]
