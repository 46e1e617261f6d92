"""The one release rule at a site (``SitePrivacy.release``): reserve, work, cancel on failure, spend.

Attacks: a drift release whose work fails (by an interrupt, or with a cancel that fails too)
must neither leave a reservation standing for nothing nor hide the error; a release that
succeeds is spent exactly once; a failure while spending must not give the count back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.data.datasets import Dataset
from flsuite.errors import LedgerPathError
from flsuite.privacy import PrivacyLedger
from flsuite.site import drift as drift_module
from flsuite.site import prepare_simulated_sites, simulated_node_config, site_privacy
from flsuite.site.drift import DRIFT_FILE, drift_release
from tests.integration.test_site_budget_attacks import _projected


class Interrupted(BaseException):
    """Not an Exception: as KeyboardInterrupt or SystemExit reach the site's code."""


class WorkFailed(Exception):
    pass


@pytest.fixture
def site(tmp_path):
    """A simulated site's guard and setup for a drift release (labels only, 40 records)."""
    study = compose_study([f"sites_dir={tmp_path}", "experiment=smoke", "secagg=none", "privacy.accountant=rdp", "monitoring=private",
                           "monitoring.drift=true"])
    prepare_simulated_sites(tmp_path, study)
    labels = np.arange(40) % 2
    guard = site_privacy(simulated_node_config(tmp_path, 0, study=study), site="site-0", labels=labels, study=study)
    data = Dataset(name="site-0", features=np.zeros((40, 3), np.float32), labels=labels, num_classes=2)
    return guard, SimpleNamespace(name="site-0", study=study, data=data)


def entries(guard) -> list[str]:
    """The kinds of the ledger's entries, in order (reserve, spend, cancel, event)."""
    kinds = ("event", "reserve", "spend", "cancel")
    return [next(k for k in json.loads(line) if k in kinds) for line in guard.ledger.path.read_text().splitlines()]


def fail_work(monkeypatch, error: BaseException) -> None:
    def noisy(*args, **kwargs):
        raise error

    monkeypatch.setattr(drift_module, "release_histograms", noisy)


def test_an_interrupted_drift_release_leaves_no_reservation_standing_and_surfaces(site, monkeypatch):
    """The drift copy caught Exception only: an interrupt left its reservation counted as spent."""
    guard, setup = site
    fail_work(monkeypatch, Interrupted("stop"))
    with pytest.raises(Interrupted, match="stop"):
        drift_release(guard, setup, run_id="7", server_round=1)
    state = guard.verified()
    assert state.open == () and state.charged(guard.dataset) == ()
    assert entries(guard)[-2:] == ["reserve", "cancel"]


def test_a_failed_cancel_does_not_mask_the_drift_release_s_error(site, monkeypatch, caplog):
    """The drift copy did not guard its cancel: the cancel's error replaced the one that happened."""
    guard, setup = site
    fail_work(monkeypatch, WorkFailed("histograms failed"))

    def cancel(reservation, reason):
        raise LedgerPathError("cannot write the privacy ledger")

    monkeypatch.setattr(guard.ledger, "cancel", cancel)
    with caplog.at_level(logging.ERROR), pytest.raises(WorkFailed, match="histograms failed"):
        drift_release(guard, setup, run_id="7", server_round=1)
    assert "could not cancel reservation" in caplog.text
    assert len(guard.verified().open) == 1  # the cancel failed: the reservation stands and counts (fail closed)


def test_a_drift_release_that_succeeds_is_spent_exactly_once(site):
    guard, setup = site
    report, event = drift_release(guard, setup, run_id="7", server_round=1)
    state = guard.verified()
    assert state.open == () and state.charged(guard.dataset) == (event,)
    assert entries(guard).count("reserve") == 1 and entries(guard).count("spend") == 1 and "cancel" not in entries(guard)


def test_a_failure_while_spending_keeps_the_count(site, monkeypatch):
    """The work ran (noise was drawn): a spend that fails must not cancel the reservation."""
    guard, _ = site

    def spend(reservation, event):
        raise LedgerPathError("cannot write the privacy ledger")

    monkeypatch.setattr(guard.ledger, "spend", spend)
    with pytest.raises(LedgerPathError):
        guard.release(_projected(steps=10), lambda: "released", final=lambda _: _projected(steps=10), what="test release")
    assert len(guard.verified().open) == 1 and "cancel" not in entries(guard)
    assert len(PrivacyLedger(guard.ledger.path).charged(guard.dataset)) == 1


def test_a_release_that_does_not_fit_runs_no_work_and_writes_nothing(site):
    from flsuite.errors import BudgetExhausted

    guard, _ = site
    before = guard.ledger.path.read_bytes() if guard.ledger.path.exists() else b""
    ran = []
    with pytest.raises(BudgetExhausted):
        guard.release(_projected(steps=10**6), lambda: ran.append(1), final=lambda _: _projected(), what="test release")
    assert ran == [] and (guard.ledger.path.read_bytes() if guard.ledger.path.exists() else b"") == before


def test_a_drift_release_reads_its_drift_file_once(site, monkeypatch):
    """It read drift.jsonl twice in one release: once for the previous release, once to rewrite it."""
    guard, setup = site
    first, _ = drift_release(guard, setup, run_id="7", server_round=1)
    reads = []
    for method in ("read_text", "read_bytes"):
        original = getattr(Path, method)

        def counted(path, *args, _original=original, **kwargs):
            if path.name == DRIFT_FILE:
                reads.append(path)
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(Path, method, counted)
    second, _ = drift_release(guard, setup, run_id="8", server_round=1)
    assert len(reads) == 1
    assert first[protocol.DRIFT_PREVIOUS] == "" and second[protocol.DRIFT_PREVIOUS] == "7"  # still found the previous release
    assert len((guard.ledger.path.parent / DRIFT_FILE).read_text().splitlines()) == 2


def test_two_studies_releasing_drift_at_one_site_at_once_keep_both_lines(site, tmp_path, monkeypatch):
    """The file was read and rewritten outside the ledger's lock: a second study's release in that
    window wrote its line, and the first study's rewrite (from its earlier read) dropped it."""
    import threading

    guard, setup = site
    other = site_privacy(simulated_node_config(tmp_path, 0, study=setup.study), site="site-0", labels=setup.data.labels,
                         study=setup.study)
    original, second = drift_module.previous_release, []

    def meanwhile(text, **kwargs):
        if not second:  # the first release, between its read and its rewrite: another study releases
            second.append(threading.Thread(target=drift_release, args=(other, setup), kwargs={"run_id": "8", "server_round": 1}))
            second[0].start()
            second[0].join(timeout=1.0)  # done by now unless the first release holds the lock
        return original(text, **kwargs)

    monkeypatch.setattr(drift_module, "previous_release", meanwhile)
    drift_release(guard, setup, run_id="7", server_round=1)
    second[0].join(timeout=30)
    runs = [json.loads(line)["run_id"] for line in (guard.ledger.path.parent / DRIFT_FILE).read_text().splitlines()]
    assert sorted(runs) == ["7", "8"]


@pytest.mark.parametrize("costlier", [{"steps": 41}, {"sample_rate": 0.2}, {"noise_multiplier": 0.9}, {"dataset": "other"},
                                      {"delta": 1e-4}])
def test_a_final_event_that_charges_more_than_its_reservation_never_leaves_and_is_never_spent(site, costlier):
    """The cap admitted the reservation; a final event that costs more (or charges another
    dataset's budget) was spent as it came, past the check: now the release fails closed."""
    import dataclasses

    from flsuite.errors import IntegrityError

    guard, _ = site
    reserved = _projected(dataset=guard.dataset, steps=40)
    with pytest.raises(IntegrityError, match="more than it reserved"):
        guard.release(reserved, lambda: "update", final=lambda _: dataclasses.replace(reserved, rng="os", **costlier), what="test")
    state = guard.verified()
    assert state.open == () and state.charged(guard.dataset) == () and state.charged("other") == ()
    assert entries(guard)[-2:] == ["reserve", "cancel"]
    # the ledger refuses it too, whoever calls it
    reservation = guard.ledger.reserve(reserved)
    with pytest.raises(IntegrityError, match="cannot be spent by this event"):
        guard.ledger.spend(reservation, dataclasses.replace(reserved, rng="os", **costlier))
    assert [r.id for r in guard.ledger.state().open] == [reservation.id]


def test_a_final_event_that_charges_less_than_its_reservation_is_spent(site):
    import dataclasses

    guard, _ = site
    reserved = _projected(dataset=guard.dataset, steps=40)
    cheaper = dataclasses.replace(reserved, rng="os", steps=39, noise_multiplier=1.5, sample_rate=0.05)
    result, event = guard.release(reserved, lambda: "update", final=lambda _: cheaper, what="test")
    assert result == "update" and guard.verified().charged(guard.dataset) == (cheaper,)


def test_the_ledger_checks_a_spend_against_its_own_record_not_the_callers_copy_of_the_reservation(site):
    """A caller passing a forged Reservation (a real open id, a bigger event) spent the bigger event."""
    import dataclasses

    from flsuite.errors import IntegrityError
    from flsuite.privacy.ledger import Reservation

    guard, _ = site
    reserved = _projected(dataset=guard.dataset, steps=40)
    real = guard.ledger.reserve(reserved)
    bigger = dataclasses.replace(reserved, rng="os", steps=4000)
    with pytest.raises(IntegrityError, match="cannot be spent by this event"):
        guard.ledger.spend(Reservation(real.id, dataclasses.replace(reserved, steps=4000), real.entry), bigger)
    assert [r.id for r in guard.ledger.state().open] == [real.id] and guard.ledger.state().charged(guard.dataset) == (reserved,)
