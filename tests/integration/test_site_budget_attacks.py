"""Issue 11 attacks on a site's budget, at the site guard: the key, the race, the simulated cap, the reset."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from flsuite import protocol
from flsuite.cli.deployment_commands import site_app
from flsuite.config import compose_study, to_run_config
from flsuite.errors import BudgetExhausted, PlanError
from flsuite.flower import InProcessGrid, new_run
from flsuite.models.weights import model_to_arrays
from flsuite.models.zoo import build_model
from flsuite.privacy import DpEvent, PrivacyLedger, utc_now_iso
from flsuite.site import build_client_app, ensure_site_ledger, prepare_simulated_sites, simulated_node_config, site_privacy
from tests.integration.test_site_guard import ask, site_key

SIGMA = {"noise-multiplier": 1.2}


def write_csv(path, rows):
    x, y = rows
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    lines = [header, *(",".join([*(repr(float(v)) for v in xi), str(int(yi))]) for xi, yi in zip(x, y, strict=True))]
    path.write_text("\n".join(lines) + "\n")


def real_site_request(tmp_path, csv, *overrides):
    """One DP train request at a real site (its own CSV, ledger, key and cap); returns its SiteStatus."""
    ranges = "+data.feature_ranges={" + ",".join(f"f{i}:[0,5000]" for i in range(30)) + "}"  # raw breast cancer values
    study = compose_study([f"sites_dir={tmp_path / 'unused'}", "experiment=smoke", "secagg=none", "data=csv",
                           f"data.csv_path={csv}", "data.label_column=label", "data.num_classes=2", ranges, *overrides])
    node = {"site-name": "hospital-a", "data-path": str(csv), "ledger-path": str(tmp_path / "ledger.jsonl"),
            "identity-key": str(site_key(tmp_path)), "max-epsilon": 50.0, "delta": 1e-5}
    grid = InProcessGrid.for_client_app(build_client_app(), run=new_run(7, to_run_config(study)), node_configs=[node])
    features = len(study.data.feature_columns) if study.data.feature_columns else 30
    arrays = model_to_arrays(build_model(study.model, num_features=features, num_classes=2, image_shape=None, seed=0))
    reply = ask(grid, arrays, **SIGMA)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE])


def test_the_spend_carries_over_whatever_the_study_or_the_hospital_does_with_the_rows(tmp_path):
    """Issue 11.1: each of these used to start the site from 0 spent (a new data fingerprint)."""
    x, y = load_breast_cancer(return_X_y=True)
    csv = tmp_path / "site.csv"
    write_csv(csv, (x, y))
    ensure_site_ledger(tmp_path / "ledger.jsonl", site="hospital-a", dataset="hospital-a", identity_key=site_key(tmp_path))
    spent = [real_site_request(tmp_path, csv).spent_epsilon]
    steps = [
        ("feature columns", lambda: None, ["data.feature_columns=[f0,f1,f2,f3,f4,f5,f6,f7,f8,f9]"]),
        ("one more row", lambda: write_csv(csv, (np.vstack([x, x[:1]]), np.append(y, y[0]))), []),
        ("rows reversed", lambda: write_csv(csv, (x[::-1], y[::-1])), []),
    ]
    for k, (what, change, overrides) in enumerate(steps, start=2):
        change()
        status = real_site_request(tmp_path, csv, *overrides)
        assert len(status.prior_events) == k, what
        assert status.spent_epsilon > spent[-1], f"{what}: the spend restarted"
        assert {e.dataset for e in status.prior_events} == {"hospital-a"}
        spent.append(status.spent_epsilon)


def test_float64_rows_and_a_new_partition_change_nothing_about_the_key(tmp_path):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none"])
    prepare_simulated_sites(tmp_path, study)
    node = simulated_node_config(tmp_path, 0, study=study)
    _, y = load_breast_cancer(return_X_y=True)
    guard32 = site_privacy(node, site="site-0", labels=y.astype(np.int32), study=study)
    guard64 = site_privacy(node, site="site-0", labels=y.astype(np.int64), study=study)
    assert guard32.dataset == guard64.dataset == "site-0"
    repartitioned = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "data.dirichlet_alpha=0.6"])
    assert simulated_node_config(tmp_path, 0, study=repartitioned)[protocol.DATASET] == "site-0"


def test_a_new_partition_of_a_simulated_site_still_counts_its_past_spend(tmp_path):
    statuses = []
    for overrides in ([], ["data.dirichlet_alpha=0.6"]):
        study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", *overrides])
        prepare_simulated_sites(tmp_path, study)
        grid = InProcessGrid.for_client_app(build_client_app(), run=new_run(7, to_run_config(study)),
                                            node_configs=[{"partition-id": 0, "num-partitions": 3}])
        arrays = model_to_arrays(build_model(study.model, num_features=30, num_classes=2, image_shape=None, seed=0))
        reply = ask(grid, arrays, **SIGMA)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        statuses.append(protocol.SiteStatus.from_record(reply.content.config_records[protocol.SITE]))
    assert len(statuses[1].prior_events) == 2 and statuses[1].spent_epsilon > statuses[0].spent_epsilon


def _projected(dataset="site-0", steps=400):
    return DpEvent(study_id="s", run_id="r", round=1, site="site-0", dataset=dataset, sample_rate=0.1,
                   noise_multiplier=1.0, steps=steps, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                   rng="reservation", recorded_at=utc_now_iso())


def test_two_concurrent_requests_against_a_cap_that_fits_one_never_both_train(tmp_path):
    """Issue 11.2: the check and the append were two operations; both requests passed."""
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp"])
    prepare_simulated_sites(tmp_path, study)
    node = dict(simulated_node_config(tmp_path, 0, study=study))
    budget = site_privacy(node, site="site-0", labels=np.zeros(400), study=study).budget
    phase = _projected().phase
    one, two = budget.project_phases([], phase).projected, budget.project_phases([phase], phase).projected
    node[protocol.MAX_EPSILON] = (one + two) / 2  # one request fits, two do not
    barrier, outcomes = threading.Barrier(2), []

    def request():
        guard = site_privacy(node, site="site-0", labels=np.zeros(400), study=study)
        barrier.wait()
        try:
            outcomes.append(guard.reserve(_projected()))
        except BudgetExhausted as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(type(o).__name__ for o in outcomes) == ["BudgetExhausted", "Reservation"]
    ledger = PrivacyLedger(tmp_path / "site-0" / "ledger.jsonl")
    assert len(ledger.charged("site-0")) == 1 and len(ledger.state().open) == 1


def test_an_open_reservation_counts_as_spent_after_a_crash(tmp_path):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp"])
    prepare_simulated_sites(tmp_path, study)
    node = simulated_node_config(tmp_path, 0, study=study)
    guard = site_privacy(node, site="site-0", labels=np.zeros(400), study=study)
    guard.reserve(_projected(steps=10))  # the site dies here, before training ends
    status = site_privacy(node, site="site-0", labels=np.zeros(400), study=study).status()
    assert len(status.prior_events) == 1 and status.spent_epsilon > 0


def test_a_study_cannot_change_the_delta_of_existing_simulated_sites(tmp_path):
    prepare_simulated_sites(tmp_path, compose_study([f"sites_dir={tmp_path}", "experiment=smoke"]))
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "privacy.delta=0.006"])
    with pytest.raises(PlanError, match=r"site-0.*delta 1e-05.*privacy.delta=0.006"):
        prepare_simulated_sites(tmp_path, study)
    with pytest.raises(PlanError, match="site-0"):
        simulated_node_config(tmp_path, 0, study=study)  # the site refuses it too


def test_a_study_cannot_raise_the_cap_of_existing_simulated_sites(tmp_path):
    prepare_simulated_sites(tmp_path, compose_study([f"sites_dir={tmp_path}", "experiment=smoke"]))
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "privacy.max_epsilon=100"])
    prepare_simulated_sites(tmp_path, study)
    assert simulated_node_config(tmp_path, 0, study=study)[protocol.MAX_EPSILON] == 10.0
    x, y = load_breast_cancer(return_X_y=True)
    guard = site_privacy(simulated_node_config(tmp_path, 0, study=study), site="site-0", labels=y, study=study)
    assert guard.budget.max_epsilon == 10.0 and guard.status().max_epsilon == 10.0


def test_only_the_explicit_reset_command_starts_a_cut_ledger_over_and_it_archives_and_logs(tmp_path):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp"])
    prepare_simulated_sites(tmp_path, study)
    node = simulated_node_config(tmp_path, 0, study=study)
    site_privacy(node, site="site-0", labels=np.zeros(400), study=study).reserve(_projected(steps=10))
    ledger = tmp_path / "site-0" / "ledger.jsonl"
    ledger.write_bytes(b"")
    with pytest.raises(Exception, match="anchored head"):
        site_privacy(node, site="site-0", labels=np.zeros(400), study=study).status()
    runner = CliRunner()
    refused = runner.invoke(site_app, ["reset-ledger", "--sites-dir", str(tmp_path), "--site", "site-0"])
    assert refused.exit_code != 0 and ledger.exists()
    done = runner.invoke(site_app, ["reset-ledger", "--sites-dir", str(tmp_path), "--site", "site-0", "--yes"])
    assert done.exit_code == 0, done.output
    assert "archived" in done.output and "reset" in done.output
    archived = sorted(p.name for p in (tmp_path / "site-0").glob("*.archived-*"))
    assert len(archived) == 2 and any(name.startswith("ledger.jsonl.head") for name in archived)
    assert '"action": "reset"' in (tmp_path / "site-0" / "ledger.jsonl.reset.log").read_text()
    status = site_privacy(node, site="site-0", labels=np.zeros(400), study=study).status()
    assert status.prior_events == () and status.ledger_head.entries == 0


def test_deleting_a_simulated_sites_whole_folder_does_not_start_it_over_unnoticed(tmp_path):
    import shutil

    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp"])
    prepare_simulated_sites(tmp_path, study)
    node = simulated_node_config(tmp_path, 0, study=study)
    site_privacy(node, site="site-0", labels=np.zeros(400), study=study).reserve(_projected(steps=10))
    shutil.rmtree(tmp_path / "site-0")  # identity key, site config, ledger and anchor: all gone
    with pytest.raises(PlanError, match="reset-ledger"):
        prepare_simulated_sites(tmp_path, study)
    assert not (tmp_path / "site-0").exists()  # refused before anything was written
    done = CliRunner().invoke(site_app, ["reset-ledger", "--sites-dir", str(tmp_path), "--site", "site-0", "--yes"])
    assert done.exit_code == 0, done.output
    assert '"action": "forget-lost-site"' in (tmp_path / "reset.log").read_text()
    prepare_simulated_sites(tmp_path, study)  # after the logged reset: a new site
    assert site_privacy(simulated_node_config(tmp_path, 0, study=study), site="site-0", labels=np.zeros(400), study=study).status().prior_events == ()
