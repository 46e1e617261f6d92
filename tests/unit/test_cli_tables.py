"""Tables at 80 columns and in pipes: no number is cut, delta keeps its digits, --format json|csv."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flsuite.cli.main import app
from flsuite.cli.study_commands import sweep_table
from flsuite.cli.tables import Column, TableData, emit, format_number

PLAN = ["privacy", "plan", "privacy.accountant=rdp", "federation.rounds=2"]


def _plan(tmp_path, *extra: str) -> str:
    result = CliRunner().invoke(app, [*PLAN, f"sites_dir={tmp_path / 'sites'}", *extra], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_plan_piped_at_80_columns_keeps_every_number_whole(tmp_path):
    text = _plan(tmp_path)
    rows = json.loads(_plan(tmp_path, "--format", "json"))["rows"]
    assert "…" not in text
    for row in rows:
        line = next(line for line in text.splitlines() if line.startswith(row["site"] + " "))
        assert format_number(row["q"]) in line and format_number(row["sigma"], 3) in line
        assert " 1e-05 " in line  # delta, not 0.0000
        assert format_number(row["eps study"], 3) in line


def test_plan_csv_and_json_carry_full_precision(tmp_path):
    rows = json.loads(_plan(tmp_path, "--format", "json"))["rows"]
    table = list(csv.DictReader(io.StringIO(_plan(tmp_path, "--format", "csv"))))
    assert [r["site"] for r in table] == [r["site"] for r in rows] and len(rows) == 5
    for from_csv, from_json in zip(table, rows):
        assert float(from_csv["sigma"]) == from_json["sigma"] and float(from_csv["delta"]) == 1e-05
        assert float(from_csv["q"]) == from_json["q"]


def test_a_bad_format_is_refused_with_the_choices(tmp_path):
    result = CliRunner().invoke(app, [*PLAN, "--format", "xml"])
    assert result.exit_code == 2 and "table" in result.output and "csv" in result.output


def _wide() -> TableData:
    columns = [Column("site"), *(Column(name, numeric=True) for name in ("N", "q", "steps/rd", "steps", "sigma", "delta",
                                                                          "eps before", "eps study", "eps total", "cap", "left"))]
    table = TableData("Privacy plan at a narrow terminal", [*columns, Column("folder")])
    table.add_row("a-hospital-with-a-long-name", 123, 0.1234567, 16, 160, 2.4148061, 1e-5, 0.0, 2.9965129, 2.99651, 10.0,
                  7.0034871, "/data/outputs/2026-11-30/10-11-12_digits_dp_privacy.target_epsilon=1")
    return table


def test_a_terminal_of_80_columns_shows_every_number_whole():
    buffer = io.StringIO()
    emit(_wide(), "table", Console(file=buffer, force_terminal=True, width=80, color_system=None))
    text = buffer.getvalue()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for number in ("0.1235", "2.4148", "1e-05", "2.9965", "7.0035", "10.0000", "123", "160"):
        assert f" {number} " in text, number
    assert "continued" in text  # too wide for one table: split, not cut


def test_the_sweep_table_keeps_its_folder_column_whole_when_piped():
    folder = "/very/long/path/multirun/2026-11-30/10-11-12_smoke/0_federation.rounds=1_model=mlp"
    summary = {"status": "completed", "final_accuracy": 0.9115, "final_auc": 0.98826, "wall_s": 1.127, "output_dir": folder}
    buffer = io.StringIO()
    emit(sweep_table([(["federation.rounds=1", "model=mlp"], summary)]), "table", Console(file=buffer, width=80))
    assert folder in buffer.getvalue() and "0.9883" in buffer.getvalue()


def test_numbers_keep_their_significant_digits():
    assert format_number(1e-5) == "1e-05" and format_number(0.0001234) == "0.0001234"
    assert format_number(0.1234567) == "0.1235" and format_number(2.4148, 3) == "2.415"
    assert format_number(123456789.0) == "1.235e+08" and format_number(0.0) == "0.0000"
    assert format_number(float("nan")) == "nan"


def _registry(tmp_path):
    from flsuite.registry import Registry
    from flsuite.registry.testing import publish_sample

    path = tmp_path / "a-registry-folder-with-a-name-long-enough-to-be-cut-at-eighty-columns" / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "coordinator.pem") as reg:
        publish_sample(reg, round=0, metrics={"accuracy": 0.8123456}, epsilon=1.23456789)
    return path


def test_registry_list_and_audit_report_keep_the_path_and_numbers_and_speak_csv(tmp_path):
    path = _registry(tmp_path)
    runner = CliRunner(env={"COLUMNS": "80"})
    listed = runner.invoke(app, ["registry", "list", "--registry", str(path)])
    assert listed.exit_code == 0 and str(path) in listed.output and "1.2346" in listed.output
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["registry", "list", "--registry", str(path),
                                                               "--format", "csv"]).output)))
    assert rows[0]["version"] == "1" and float(rows[0]["max eps"]) == pytest.approx(1.23456789)
    report = runner.invoke(app, ["audit", "report", str(path), "--format", "csv"])
    claims = list(csv.DictReader(io.StringIO(report.output)))
    assert claims and all(float(c["claimed eps"]) == pytest.approx(1.23456789) for c in claims)
    assert json.loads(runner.invoke(app, ["audit", "report", str(path), "--format", "json"]).output)["versions"]
    text = runner.invoke(app, ["audit", "report", str(path)]).output
    assert "…" not in text and "1.2346" in text
