"""Pre-flight checks: every path a study names is usable before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flsuite.config import StudyConfig, check_inputs
from flsuite.config.preflight import signing_key_path
from flsuite.errors import ConfigError, DataError
from flsuite.registry import create_key_file, load_or_create_signing_key

AS_ROOT = os.geteuid() == 0


def _study(tmp_path: Path, **sections) -> StudyConfig:
    raw = StudyConfig().model_dump()
    raw["sites_dir"] = str(tmp_path / "sites")
    for name, values in sections.items():
        raw[name].update(values)
    return StudyConfig.model_validate(raw)


def _tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mode) for p in folder.rglob("*"))


def test_a_usable_study_passes_and_nothing_is_written(tmp_path):
    key_file = tmp_path / "blob.key"
    create_key_file(key_file)
    study = _study(tmp_path, registry={"encryption_key_file": str(key_file)})
    before = _tree(tmp_path)
    check_inputs(study, tmp_path / "out" / "study")
    assert _tree(tmp_path) == before


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"--output-dir {target} exists and is not a folder"):
        check_inputs(_study(tmp_path), target)


def test_an_output_dir_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(ConfigError, match=f"cannot be created: {tmp_path / 'taken'} is a file"):
        check_inputs(_study(tmp_path), tmp_path / "taken" / "a" / "b")


@pytest.mark.skipif(AS_ROOT, reason="root may write anywhere")
def test_an_output_dir_in_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="is not writable"):
        check_inputs(_study(tmp_path), locked / "out")


def test_a_sites_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "sites").write_text("")
    with pytest.raises(ConfigError, match="sites_dir .* exists and is not a folder"):
        check_inputs(_study(tmp_path), tmp_path / "out")


def test_a_missing_csv_file_is_a_data_error_naming_it(tmp_path):
    study = _study(tmp_path, data={"dataset": "csv", "csv_path": str(tmp_path / "gone.csv"), "label_column": "y"})
    with pytest.raises(DataError, match=f"data.csv_path {tmp_path / 'gone.csv'} does not exist"):
        check_inputs(study, tmp_path / "out")


def test_a_csv_path_that_is_a_folder_is_refused(tmp_path):
    study = _study(tmp_path, data={"dataset": "csv", "csv_path": str(tmp_path), "label_column": "y"})
    with pytest.raises(DataError, match="is not a file"):
        check_inputs(study, tmp_path / "out")


def test_a_deployment_study_does_not_look_for_the_sites_csv(tmp_path):
    study = _study(tmp_path, data={"dataset": "csv", "csv_path": "/at/the/sites.csv", "label_column": "y",
                                   "feature_ranges": {"x": [0, 1]}}, engine={"name": "deployment"})
    check_inputs(study, tmp_path / "out")


def test_a_missing_encryption_key_file_is_refused(tmp_path):
    study = _study(tmp_path, registry={"encryption_key_file": str(tmp_path / "nokey")})
    with pytest.raises(ConfigError, match=f"registry.encryption_key_file {tmp_path / 'nokey'} does not exist"):
        check_inputs(study, tmp_path / "out")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_an_encryption_key_others_can_read_is_refused_with_chmod_600(tmp_path, mode):
    key_file = tmp_path / "blob.key"
    create_key_file(key_file)
    key_file.chmod(mode)
    study = _study(tmp_path, registry={"encryption_key_file": str(key_file)})
    with pytest.raises(ConfigError, match=f"mode {mode:o} lets others read it; run `chmod 600 {key_file}`"):
        check_inputs(study, tmp_path / "out")


def test_a_malformed_encryption_key_is_refused(tmp_path):
    key_file = tmp_path / "blob.key"
    key_file.write_text("not a key\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="encryption key file"):
        check_inputs(_study(tmp_path, registry={"encryption_key_file": str(key_file)}), tmp_path / "out")


def test_an_unset_encryption_key_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("FLSUITE_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="FLSUITE_TEST_NO_SUCH_KEY is not set"):
        check_inputs(_study(tmp_path, registry={"encryption_key_env": "FLSUITE_TEST_NO_SUCH_KEY"}), tmp_path / "out")


def test_a_signing_key_others_can_read_is_refused_with_chmod_600(tmp_path):
    key = tmp_path / "signing.key"
    load_or_create_signing_key(key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=f"registry.signing_key {key}: mode 644 .*`chmod 600 {key}`"):
        check_inputs(_study(tmp_path, registry={"signing_key": str(key)}), tmp_path / "out")


def test_the_default_signing_key_next_to_the_registry_is_checked_too(tmp_path):
    registry = tmp_path / "shared" / "registry"
    key = tmp_path / "shared" / "coordinator-signing.key"
    load_or_create_signing_key(key)
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_inputs(_study(tmp_path, registry={"path": str(registry)}), tmp_path / "out")


def test_no_key_is_checked_when_the_registry_is_off(tmp_path):
    study = _study(tmp_path, registry={"enabled": False, "encryption_key_file": str(tmp_path / "nokey")})
    check_inputs(study, tmp_path / "out")


def test_every_problem_is_named_in_one_message(tmp_path):
    (tmp_path / "taken").write_text("")
    study = _study(tmp_path, registry={"encryption_key_file": str(tmp_path / "nokey")})
    with pytest.raises(ConfigError) as caught:
        check_inputs(study, tmp_path / "taken")
    assert "--output-dir" in str(caught.value) and "registry.encryption_key_file" in str(caught.value)


@pytest.mark.parametrize(
    "registry",
    [{}, {"path": "/r/reg"}, {"signing_key": "/k/key.pem"}, {"path": "/r/reg", "signing_key": "/k/key.pem"}],
)
def test_the_signing_key_checked_is_the_one_the_publisher_opens(tmp_path, registry):
    from flsuite.coordinator.publishing import registry_paths

    study = _study(tmp_path, registry=registry)
    assert signing_key_path(study, tmp_path / "out") == registry_paths(study, tmp_path / "out")[1]
