"""`flsuite audit ledger`: an auditor checks a site's ledger against the head the site signed, offline,
and recomputes its spend with dp_accounting's PLD accountant."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flsuite.config import compose_study
from flsuite.privacy import audit_ledger, pld_epsilon
from flsuite.secagg import load_pinned_identities, write_pinned_identities
from flsuite.site import prepare_simulated_sites, simulated_node_config, site_privacy
from tests.conftest import run_cli
from tests.integration.test_site_budget_attacks import _projected


@pytest.fixture
def spent_site(tmp_path):
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp"])
    prepare_simulated_sites(tmp_path, study)
    guard = site_privacy(simulated_node_config(tmp_path, 0, study=study), site="site-0", labels=np.zeros(400), study=study)
    reservation = guard.reserve(_projected(steps=50))
    guard.spend(reservation, _projected(steps=50))
    guard.reserve(_projected(steps=30))  # left open, as after a crash: it counts
    return tmp_path


def test_an_untouched_ledger_verifies_and_its_spend_is_the_pld_of_every_charged_event(spent_site):
    pinned = load_pinned_identities(spent_site / "identities.json")
    found = audit_ledger(spent_site / "site-0" / "ledger.jsonl", public_key=pinned["site-0"])
    assert found.ok and found.signature == "verified" and len(found.charged) == 2
    assert found.epsilon_pld == pytest.approx(pld_epsilon((_projected(steps=50), _projected(steps=30)), 1e-5))
    result = run_cli("audit", "ledger", str(spent_site / "site-0"), "--identities", str(spent_site / "identities.json"), timeout=120)
    assert result.returncode == 0 and "ledger verified" in result.stdout and "signature: verified" in result.stdout


def test_a_cut_ledger_fails_the_audit(spent_site):
    ledger = spent_site / "site-0" / "ledger.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:-1]))
    result = run_cli("audit", "ledger", str(ledger), "--identities", str(spent_site / "identities.json"), timeout=120)
    assert result.returncode == 1 and "cut" in result.stdout and "Traceback" not in result.stderr


def test_a_head_not_signed_by_the_pinned_identity_fails_the_audit(spent_site):
    attacker = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    write_pinned_identities(spent_site / "other.json", {"site-0": attacker})
    result = run_cli("audit", "ledger", str(spent_site / "site-0"), "--identities", str(spent_site / "other.json"), timeout=120)
    assert result.returncode == 1 and "not signed by the pinned identity" in result.stdout


def test_a_missing_ledger_is_bad_input(tmp_path):
    result = run_cli("audit", "ledger", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "no privacy ledger" in result.stderr
