"""Issue 13 acceptance: a study's summary shows per-site accuracy and the fairness gap, and their
privacy cost is in each site's ledger and in the plan."""

from __future__ import annotations

import csv

import pytest

from flsuite.config import compose_study
from flsuite.privacy import GAUSSIAN, PrivacyLedger, epsilon, pld_epsilon
from flsuite.registry import Registry
from flsuite.simulation import run_local_study


@pytest.mark.slow
def test_a_study_reports_per_site_accuracy_and_the_gap_and_accounts_them(tmp_path):
    study = compose_study([f"sites_dir={tmp_path / 'sites'}", "experiment=smoke"])
    summary = run_local_study(study, tmp_path / "out")
    assert summary["status"] == "completed"
    monitoring = summary["monitoring"]
    final = monitoring["final"]
    assert final["round"] == 2 and final["sites"] == 5 and not monitoring["withheld"]
    assert final["gap"] == pytest.approx(final["best_accuracy"] - final["worst_accuracy"])
    assert set(monitoring["sites"]) == {f"site-{i}" for i in range(5)}
    assert all(site["noise_std"] > 0 for site in monitoring["sites"].values())
    rows = list(csv.DictReader((tmp_path / "out" / "site_evaluation.csv").open()))
    assert len(rows) == 5 and {row["round"] for row in rows} == {"2"}

    plan = list(csv.DictReader((tmp_path / "out" / "privacy_plan.csv").open()))
    for row in plan:
        name = row["site"]
        events = PrivacyLedger(tmp_path / "sites" / name / "ledger.jsonl").events()
        gaussian = [e for e in events if e.mechanism == GAUSSIAN]
        assert len(gaussian) == 1 and gaussian[0].round == 2 and row["evaluation_releases"] == "1"
        spent = epsilon(events, delta=1e-5)
        assert spent == pytest.approx(float(row["study_epsilon"]), rel=0.01)  # the plan's epsilon includes the release
        assert summary["privacy"]["sites"][name]["epsilon_spent"] == pytest.approx(spent, rel=1e-9) and spent <= 3.0

    with Registry.open(summary["registry"]) as registry:
        metrics = registry.version(summary["final_version"]).metrics
        certificate = registry.version(summary["final_version"]).dp_certificate
    for name, claim in certificate["sites"].items():  # the study's epsilon covers its training and its release
        events = PrivacyLedger(tmp_path / "sites" / name / "ledger.jsonl").events()
        assert claim["epsilon"] * (1 + 1e-3) >= pld_epsilon(events, claim["delta"]), name
    assert metrics["site_accuracy_gap"] == pytest.approx(final["gap"])
    assert metrics["site_accuracy_worst"] == pytest.approx(final["worst_accuracy"])
