"""A real federated study from the command line, as a research team runs it."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli


def test_two_round_study_writes_every_output(tmp_path):
    out = tmp_path / "study"
    result = run_cli("run", "experiment=smoke", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "final accuracy" in result.stdout and str(out.name) in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["final_accuracy"] > 0.85 and 0.5 < summary["final_auc"] <= 1.0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())[1]["accuracy"] == pytest.approx(summary["final_accuracy"])
    sites = {r["site"] for r in csv.DictReader((out / "site_metrics.csv").open())}
    assert sites == {f"site-{i}" for i in range(5)}
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "federation:" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["federation.rounds=0"], "federation.rounds=0"),
        (["data.dirichlet_alpha=-1"], "data.dirichlet_alpha=-1"),
        (["training.learning_rate=abc"], "training.learning_rate='abc'"),
        (["bogus.key=1"], "bogus: unknown key"),
        (["model=nope"], "model/nope"),
        (["federation.num_sites=400", "federation.rounds=1"], "use at most"),
        (["data=csv", "data.csv_path=/nonexistent/site.csv"], "/nonexistent/site.csv"),
    ],
)
def test_bad_input_exits_2_with_one_message_and_no_traceback(args, fragment, tmp_path):
    result = run_cli("run", *args, "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_csv_study_with_a_missing_label_column_is_refused(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("a,b\n" + "\n".join(f"{i},{i % 2}" for i in range(40)) + "\n")
    result = run_cli("run", "data=csv", f"data.csv_path={path}", "data.label_column=outcome",
                     "+data.feature_ranges={a:[0,40],b:[0,1]}", "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2 and "no label column 'outcome'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_site_csv_study_runs(tmp_path):
    path = tmp_path / "records.csv"
    rows = [f"{x / 100:.2f},{(x * 7 % 13) / 13:.3f},{int(x > 50)}" for x in range(100)]
    path.write_text("dose,score,outcome\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o"
    result = run_cli("run", "privacy=none", "data=csv", f"data.csv_path={path}", "data.label_column=outcome",
                     "+data.feature_ranges={dose:[0,1],score:[0,1]}", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] > 0.6


@pytest.mark.slow
def test_sweep_runs_each_combination(tmp_path):
    result = run_cli("run", "-m", "experiment=smoke", "federation.rounds=1,2", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rounds = [json.loads((tmp_path / f"{i}_federation.rounds={i + 1}" / "summary.json").read_text())["rounds_completed"] for i in range(2)]
    assert rounds == [1, 2]
    assert "Sweep" in result.stdout


def test_version_prints_and_exits_0():
    result = run_cli("--version", timeout=60)
    assert result.returncode == 0 and result.stdout.strip().startswith("flsuite ")
