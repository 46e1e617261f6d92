"""Smoke test of the benchmark harness: ``python -m experiments.bench --quick`` runs every
measurement (small) and writes well-formed results. No timing is asserted: only that each
measurement produced the numbers its table and the README need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "experiments.bench", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return done, out


def _positive(entry: dict) -> bool:
    return entry["n"] >= 1 and 0 < entry["min"] <= entry["median"] <= entry["max"]


@pytest.mark.slow  # the quick benchmark run takes minutes on 2 cores
def test_quick_run_succeeds_and_writes_every_measurement(quick_run):
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["results"]) == {"accounting", "registry", "dp_cost", "secagg", "csv", "engines", "parallel", "history", "utility"}
    assert not [name for name, result in bench["results"].items() if "error" in result]
    machine = bench["meta"]["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["flwr"] and machine["opacus"]
    assert bench["meta"]["command"] == "python -m experiments.bench --quick"


@pytest.mark.slow  # the quick benchmark run takes minutes on 2 cores
def test_results_hold_the_ratios_the_tables_report(quick_run):
    _, out = quick_run
    results = json.loads((out / "bench.json").read_text())["results"]
    dp = results["dp_cost"]["rows"]
    assert {(row["model"], row["batch"]) for row in dp} >= {("cnn", 64), ("cnn", 256), ("wide_mlp", 256)}
    assert all(_positive(row["time_ratio_hooks"]) and _positive(row["time_ratio_ghost"]) and row["memory_ratio_ghost"] > 0
               for row in dp)
    assert next(row for row in dp if row["model"] == "wide_mlp")["parameters"] >= 500_000
    engines = results["engines"]["engines"]
    assert set(engines["per_engine"]) == {"inline", "ray"}
    assert engines["per_engine"]["ray"]["peak_processes"] > 1  # Ray's daemons and workers were counted
    assert all(_positive(engines["ray_over_inline"][k]) for k in ("startup", "first_round", "total", "peak_rss"))
    assert all("overhead_vs_slowest_site" in v for v in results["engines"]["inline_coordinator_overhead"].values())
    assert all(_positive(row["ratio"]) for row in results["secagg"]["rounds"].values())
    parallel = results["parallel"]
    assert all(_positive(v["processes_over_sequential"]) and v["same_accuracy"] in (True, None) for v in parallel["rounds"]["variants"].values())
    assert _positive(parallel["default_study"]["two_over_one"]) and len(parallel["load_average_before"]) == 3
    assert 0.3 < parallel["ceiling"]["ratio"]["median"] < 1.5  # two jobs at once: about half their time one after the other
    history = results["history"]
    assert _positive(history["after_over_before"]) and all(_positive(history["wall_s"][v]) for v in ("before", "after"))
    assert min(history["ledger_entries_per_site"]) > 0 and history["largest_epsilon_difference"] < 1e-3
    assert results["secagg"]["wire"]["upload_bytes"]["ratio"] > 1.0  # masks add a little, never nothing
    assert all(_positive(row["ratio_before"]) for row in results["secagg"]["rounds"].values())
    assert all(row["before"]["seconds"]["median"] > 0 for row in results["secagg"]["shamir"].values())
    csv_load = results["csv"]
    assert csv_load["parses_per_study"]["after"] == 1 < csv_load["parses_per_study"]["before (no cache)"]
    assert csv_load["before"]["seconds"]["median"] > 0 and csv_load["after"]["peak_gib"]["median"] > 0
    accounting = results["accounting"]
    assert accounting["never_below"] and accounting["prv_over_pld"]["min"] >= 1.0
    assert results["registry"]["verify"]["entries"] >= 300
    utility = results["utility"]
    assert {(p["task"], p["setting"], p["epsilon"]) for p in utility["points"]} == {
        (task, setting, eps) for task in ("breast_cancer_logreg", "digits_mlp")
        for setting in ("federated (5 sites)", "centralised") for eps in ("3", "none")}
    assert all(p["status"] == "completed" and 0.0 <= p["accuracy"] <= 1.0 for p in utility["points"])


@pytest.mark.slow  # the quick benchmark run takes minutes on 2 cores
def test_plot_and_markdown_are_written(quick_run):
    _, out = quick_run
    assert (out / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from experiments.bench.report import BEGIN, END, render

    text = render(json.loads((out / "bench.json").read_text()))
    assert text.startswith(BEGIN) and text.endswith(END)
    assert "### Targets" in text and "| CNN DP time ratio" in text and "Failed" not in text


@pytest.mark.slow  # the quick benchmark run takes minutes on 2 cores
def test_readme_block_is_replaced_not_duplicated(quick_run, tmp_path):
    from experiments.bench.report import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written prose\n")
    _, out = quick_run
    bench = json.loads((out / "bench.json").read_text())
    update_readme(readme, bench)
    update_readme(readme, bench)  # a second run replaces the block instead of adding another
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written prose") and text.count("### Targets") == 1


def test_unknown_measurement_is_refused():
    done = subprocess.run([sys.executable, "-m", "experiments.bench", "--only", "nonsense"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown measurement" in done.stderr
