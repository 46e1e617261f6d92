"""Issue 13.4: a site flags drift of its own data between studies, privately and accounted."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer

from flsuite import protocol
from flsuite.config import compose_study, to_run_config
from flsuite.flower import InProcessGrid, new_run
from flsuite.models.weights import model_to_arrays
from flsuite.models.zoo import build_model
from flsuite.privacy import GAUSSIAN, PrivacyLedger, drift_sensitivity
from flsuite.site import build_client_app, ensure_site_ledger
from flsuite.site.drift import DRIFT_FILE
from tests.integration.test_site_budget_attacks import write_csv
from tests.integration.test_site_guard import ask, site_key

RAW_RANGES = "+data.feature_ranges={" + ",".join(f"f{i}:[0,5000]" for i in range(30)) + "}"  # raw breast cancer values


def study_at_site(tmp_path, csv, run_id):
    """One study's final evaluation request (with the drift check) at a real site; returns the reply."""
    study = compose_study([f"sites_dir={tmp_path / 'unused'}", "experiment=smoke", "secagg=none", "data=csv",
                           f"data.csv_path={csv}", "data.label_column=label", "data.num_classes=2",
                           "monitoring.drift=true", "monitoring.drift_noise_multiplier=0.5", RAW_RANGES])
    node = {"site-name": "hospital-a", "data-path": str(csv), "ledger-path": str(tmp_path / "site" / "ledger.jsonl"),
            "identity-key": str(site_key(tmp_path)), "max-epsilon": 200.0, "delta": 1e-5}
    grid = InProcessGrid.for_client_app(build_client_app(), run=new_run(run_id, to_run_config(study)), node_configs=[node])
    arrays = model_to_arrays(build_model(study.model, num_features=30, num_classes=2, image_shape=None, seed=0))
    reply = ask(grid, arrays, message_type="evaluate", **{protocol.SITE_EVALUATION: True, protocol.DRIFT_CHECK: True})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def drift_of(reply):
    return dict(reply.content.config_records[protocol.DRIFT])


def test_drift_is_flagged_on_a_shifted_dataset_and_not_on_an_unchanged_one(tmp_path):
    x, y = load_breast_cancer(return_X_y=True)
    csv = tmp_path / "site.csv"
    write_csv(csv, (x, y))
    (tmp_path / "site").mkdir()
    ensure_site_ledger(tmp_path / "site" / "ledger.jsonl", site="hospital-a", dataset="hospital-a", identity_key=site_key(tmp_path))

    first = drift_of(study_at_site(tmp_path, csv, 7))
    assert first[protocol.DRIFT_PREVIOUS] == "" and protocol.DRIFT_FLAGGED not in first  # nothing to compare with yet

    unchanged = drift_of(study_at_site(tmp_path, csv, 8))
    assert unchanged[protocol.DRIFT_PREVIOUS] == "7" and unchanged[protocol.DRIFT_FLAGGED] is False
    assert unchanged[protocol.DRIFT_DISTANCE] < 0.05

    keep = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)[:40]])  # the malignant cases left the site
    write_csv(csv, (x[keep], y[keep]))
    shifted_reply = study_at_site(tmp_path, csv, 9)
    shifted = drift_of(shifted_reply)
    assert shifted[protocol.DRIFT_PREVIOUS] == "8" and shifted[protocol.DRIFT_FLAGGED] is True
    assert shifted[protocol.DRIFT_DISTANCE] - shifted[protocol.DRIFT_MARGIN] > 0.2

    # Each drift release is its own Gaussian event in the ledger, and the histograms stay at the site.
    events = [e for e in PrivacyLedger(tmp_path / "site" / "ledger.jsonl").events() if e.max_grad_norm == drift_sensitivity(0)]
    assert len(events) == 3 and {e.mechanism for e in events} == {GAUSSIAN} and {e.noise_multiplier for e in events} == {0.5}
    assert protocol.dp_event_from_record(shifted_reply.content.config_records[protocol.DRIFT_EVENT]) == events[-1]
    assert len((tmp_path / "site" / DRIFT_FILE).read_text().splitlines()) == 3
    assert "histograms" not in str(dict(shifted_reply.content.config_records[protocol.DRIFT]))
