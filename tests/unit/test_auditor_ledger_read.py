"""The auditor reads and verifies each ``--ledger`` once and takes the charge at the signed head from
that read (``LedgerState.up_to``), with no temporary copy; the attacks on that path (a cut ledger, an
edited entry before or beyond the head, a forged head) are reported as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flsuite.config import compose_study
from flsuite.privacy import DpEvent, PrivacyLedger, anchor_path, pld_epsilon, utc_now_iso
from flsuite.registry import Registry
from flsuite.registry.auditor import auditor_report
from flsuite.registry.testing import publish_sample, sample_certificate
from flsuite.secagg import write_pinned_identities
from flsuite.site import prepare_simulated_sites, simulated_node_config, site_privacy
from flsuite.storage.chain import HashChainLog


def projected(steps: int) -> DpEvent:
    return DpEvent(study_id="s", run_id="r", round=1, site="site-0", dataset="site-0", sample_rate=0.1,
                   noise_multiplier=1.0, steps=steps, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                   rng="reservation", recorded_at=utc_now_iso())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Site-0's folder: spent 50 steps, then reserved 30 (the registry's signed head is here), then
    spent that reservation as 20 steps and reserved 10 more after the head."""
    root = tmp_path_factory.mktemp("sites")
    study = compose_study([f"sites_dir={root}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp"])
    prepare_simulated_sites(root, study)
    guard = site_privacy(simulated_node_config(root, 0, study=study), site="site-0", labels=np.zeros(400), study=study)
    guard.spend(guard.reserve(projected(50)), projected(50))
    open_at_head = guard.reserve(projected(30))
    head = json.loads(anchor_path(root / "site-0" / "ledger.jsonl").read_text())
    guard.spend(open_at_head, projected(20))
    guard.reserve(projected(10))
    return root, head


def registry_with(tmp_path, head: dict, *, epsilon: float = 50.0):
    certificate = sample_certificate({"site-0": epsilon}, q=0.1, sigma=1.0, steps=1)
    certificate["sites"]["site-0"].update(total_epsilon=epsilon, ledger_head=head, ledger_head_check="verified")
    path = tmp_path / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "k.pem") as registry:
        publish_sample(registry, round=1, sites=["site-0"], dp_certificate=certificate)
    return path


def copy_site(site, tmp_path):
    root, head = site
    shutil.copytree(root, tmp_path / "sites")
    return tmp_path / "sites", head


def row_of(report):
    (row,) = report["sites"]
    return row


def test_the_charge_at_the_signed_head_counts_the_reservation_open_there(site, tmp_path):
    root, head = copy_site(site, tmp_path)
    report = auditor_report(registry_with(tmp_path, head), ledgers=[root / "site-0"])
    row = row_of(report)
    assert report["ok"], report["failures"]
    # at the head: the 50-step spend and the 30-step reservation (its 20-step spend and the later one came after)
    assert row["ledger_checked"] and row["pld_total_ledger"] == pytest.approx(pld_epsilon((projected(50), projected(30)), 1e-5))
    assert report["ledgers"][0]["charged_events"] == 3  # the whole ledger: 50, 20, and the open 10


def test_each_ledger_is_read_once(site, tmp_path, monkeypatch):
    """Was three reads: the audit, a full state for the head check and a temporary copy up to the head."""
    root, head = copy_site(site, tmp_path)
    registry = registry_with(tmp_path, head)
    reads = []
    original = HashChainLog._read_bytes  # every read of a log's file goes through it

    def counted(self, *args, **kwargs):
        reads.append(self.path)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HashChainLog, "_read_bytes", counted)
    auditor_report(registry, ledgers=[root / "site-0"])
    assert reads.count(root / "site-0" / "ledger.jsonl") == 1


def test_a_ledger_cut_below_the_signed_head_is_a_failure(site, tmp_path):
    root, head = copy_site(site, tmp_path)
    ledger = root / "site-0" / "ledger.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[: head["entries"] - 1]))
    row = row_of(auditor_report(registry_with(tmp_path, head), ledgers=[root / "site-0"]))
    assert row["status"] == "FAILURE" and row["ledger_checked"] is False
    assert any("fewer than the 3 of the head recorded in the registry (cut)" in p for p in row["problems"])


@pytest.mark.parametrize("line", [1, 5], ids=["before-the-head", "beyond-the-head"])
def test_an_edited_entry_anywhere_fails_the_whole_ledger(site, tmp_path, line):
    root, head = copy_site(site, tmp_path)
    ledger = root / "site-0" / "ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    assert head["entries"] < 5 <= len(lines)
    lines[line - 1] = lines[line - 1].replace('"steps":', '"steps":1', 1)
    assert '"steps":1' in lines[line - 1]
    ledger.write_text("".join(lines))
    row = row_of(auditor_report(registry_with(tmp_path, head), ledgers=[root / "site-0"]))
    assert row["status"] == "FAILURE" and row["ledger_checked"] is False and row["pld_total_ledger"] is None
    assert any(p.startswith("the site's ledger does not verify: ") and f"line {line}" in p for p in row["problems"])


def test_a_rewritten_ledger_is_a_failure(site, tmp_path):
    root, head = copy_site(site, tmp_path)
    forged = {**head, "hash": "0" * 64}
    row = row_of(auditor_report(registry_with(tmp_path, forged), ledgers=[root / "site-0"]))
    assert any("differs at entry 3 from the head recorded in the registry (rewritten)" in p for p in row["problems"])


def test_a_head_not_signed_by_the_pinned_identity_is_a_failure(site, tmp_path):
    root, head = copy_site(site, tmp_path)
    attacker = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    write_pinned_identities(tmp_path / "other.json", {"site-0": attacker})
    report = auditor_report(registry_with(tmp_path, head), ledgers=[root / "site-0"], identities=tmp_path / "other.json")
    assert any("not signed by the site's pinned identity" in p for p in row_of(report)["problems"])


def test_up_to_equals_a_fresh_read_of_the_first_entries(site, tmp_path):
    root, _ = site
    ledger = root / "site-0" / "ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    state = PrivacyLedger(ledger).state()
    for entries in range(len(lines) + 1):
        copy = tmp_path / f"first-{entries}.jsonl"
        copy.write_text("".join(lines[:entries]))
        fresh = PrivacyLedger(copy).state()
        at = state.up_to(entries)
        assert (at.head, at.hashes, at.final, at.open, at.closed) == (fresh.head, fresh.hashes, fresh.final, fresh.open, fresh.closed)
        assert at.charged() == fresh.charged()
    with pytest.raises(ValueError, match="holds 5 entries"):
        state.up_to(6)
