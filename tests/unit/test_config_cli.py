"""`flsuite run` with bad input: exit 2, one line, no traceback, and nothing written.

Each case must fail at validation, before any training: no output folder, no registry,
no signing key, no simulated sites' ledgers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flsuite.registry import create_key_file, load_or_create_signing_key
from tests.conftest import run_cli

FAST = ["experiment=smoke", "privacy=none", "secagg=none"]  # short even if the defence is missing


def _refused(tmp_path: Path, *args: str, output_dir: Path | None = None) -> str:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = output_dir or tmp_path / "out"
    before = sorted(tmp_path.rglob("*"))
    result = run_cli("run", *args, "--output-dir", str(out), cwd=cwd, timeout=240)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(tmp_path.rglob("*")) == before, "files were written before the input was refused"
    return result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["training.learning_rate=inf"], "training.learning_rate=inf"),
        (["privacy=dp", "privacy.noise_multiplier=0", "privacy.target_epsilon=null"], "privacy.noise_multiplier=0"),
        (["seed=-1"], "seed=-1"),
        (["federation.rounds=true"], "federation.rounds=True"),
        (["data.csv_path=x.csv"], "`data=csv`"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(tmp_path, args, named):
    message = _refused(tmp_path, *FAST, *args)
    assert named in message


def test_an_output_dir_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    message = _refused(tmp_path, *FAST, output_dir=target)
    assert f"--output-dir {target} exists and is not a folder" in message
    assert target.read_text() == "keep me"


def test_a_missing_csv_file_is_refused_before_anything_is_written(tmp_path):
    message = _refused(tmp_path, *FAST, "data=csv", f"data.csv_path={tmp_path / 'gone.csv'}")
    assert "data.csv_path" in message and "gone.csv" in message


def test_an_encryption_key_others_can_read_is_refused_before_anything_is_written(tmp_path):
    key_file = tmp_path / "blob.key"
    create_key_file(key_file)
    key_file.chmod(0o644)
    message = _refused(tmp_path, *FAST, f"registry.encryption_key_file={key_file}")
    assert f"chmod 600 {key_file}" in message


def test_a_sweep_checks_every_run_before_the_first_starts(tmp_path):
    loose = tmp_path / "loose.key"
    load_or_create_signing_key(loose)
    loose.chmod(0o644)
    fresh = tmp_path / "keys" / "fresh.key"  # run 0 would create it if it started
    message = _refused(tmp_path, "-m", *FAST, "federation.rounds=1", f"registry.signing_key={fresh},{loose}")
    assert f"chmod 600 {loose}" in message
    assert not fresh.exists()
