"""README's exit-code table is true: each documented case, run as a user runs it (a subprocess
of `python -m flsuite.cli.main`), ends with its code and one message, never a traceback.

Cases covered elsewhere with the same command line: a full disk during a study (3:
test_study_failures.py), too few sites left (3: test_private_secure_study.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flsuite.registry import Registry
from flsuite.registry.testing import publish_sample
from tests.conftest import run_cli


@pytest.fixture()
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "coordinator.pem") as reg:
        publish_sample(reg, round=0)
        publish_sample(reg, round=1)
    return path


def _tampered(registry: Path) -> Path:
    lines = (registry / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (registry / "audit.jsonl").write_bytes(b"".join(lines[:1] + lines[2:]))  # an entry deleted
    return registry


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


# -- 2: bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "federation.rounds=0"], "federation.rounds=0"),
        (["run", "bogus.key=1"], "bogus: unknown key"),
        (["registry", "list", "--bogus"], "No such option"),
        (["launch", "experiment=smoke", "--config", "/nonexistent/coordinator.yaml"], "/nonexistent/coordinator.yaml"),
    ],
)
def test_bad_input_is_2(args, fragment, tmp_path):
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert fragment in result.stdout + result.stderr
    _no_traceback(result)


def test_a_folder_that_is_not_a_registry_is_2(tmp_path):
    result = run_cli("registry", "list", "--registry", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "is not an flsuite registry" in result.stderr
    _no_traceback(result)


def test_registry_export_of_an_unknown_alias_is_2(registry, tmp_path):
    result = run_cli("registry", "export", "production", "--registry", str(registry), "--out", str(tmp_path / "m.safetensors"),
                     timeout=60)
    assert result.returncode == 2 and "'production' is neither a version number nor an alias" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()
    _no_traceback(result)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "privacy plan"])
def test_a_plan_over_a_sites_budget_is_2(command, tmp_path):
    result = run_cli(*command.split(), "experiment=smoke", f"sites_dir={tmp_path / 'sites'}", "privacy.target_epsilon=4",
                     "privacy.max_epsilon=3", *(["--output-dir", str(tmp_path / "o")] if command == "run" else []))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "does not fit every site's remaining privacy budget" in result.stderr and "site-0" in result.stderr
    assert not (tmp_path / "o" / "metrics.csv").exists()  # nothing trained
    _no_traceback(result)


# -- 1: a verification that failed, or a file that could not be written -------------------------


@pytest.mark.parametrize("command", [["audit", "verify"], ["audit", "report"]])
def test_audit_of_a_tampered_registry_is_1(command, registry):
    assert run_cli(*command, str(registry), timeout=60).returncode == 0
    result = run_cli(*command, str(_tampered(registry)), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    _no_traceback(result)


def test_a_registry_command_on_a_catalogue_that_disagrees_with_its_log_is_1(registry):
    result = run_cli("registry", "list", "--registry", str(_tampered(registry)), timeout=60)
    assert result.returncode == 1 and "the catalogue is not the audit log's cache" in result.stderr
    _no_traceback(result)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/sys").is_dir(), reason="needs a read-only /sys")
def test_a_file_the_system_cannot_write_is_1_with_the_path_and_the_cause(registry):
    result = run_cli("registry", "export", "2", "--registry", str(registry), "--out", "/sys/flsuite-model.safetensors", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: /sys/") and ("Permission denied" in result.stderr or "Read-only" in result.stderr)
    _no_traceback(result)


# -- 3: a study that did not complete -----------------------------------------------------------


def test_a_study_whose_rounds_all_abort_is_3_with_each_reason_on_the_console(tmp_path):
    """The issue's case in small: every site's update lies beyond the secure-aggregation clip range,
    every round aborts. It used to print "Study default: completed" and exit 0."""
    out = tmp_path / "o"
    result = run_cli("run", "experiment=smoke", "privacy=none", "secagg.clip_range=1e-6", f"sites_dir={tmp_path / 'sites'}",
                     "--output-dir", str(out))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Study smoke: failed" in result.stdout and "completed" not in result.stdout.split("Study smoke:")[1].split("\n")[0]
    assert "The study failed" in result.stdout
    assert "round 1 was aborted" in result.stdout and "lie beyond the clip range" in result.stdout
    assert "only 0 of 2 planned rounds completed" in result.stdout
    _no_traceback(result)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and len(summary["aborted_rounds"]) == 2 and summary["reasons"]


def test_a_completed_study_is_0(tmp_path):
    result = run_cli("run", "experiment=smoke", "privacy=none", "secagg=none", f"sites_dir={tmp_path / 'sites'}",
                     "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Study smoke: completed" in result.stdout and "The study" not in result.stdout
