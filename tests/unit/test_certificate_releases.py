"""A DP certificate's per-study epsilon composes every event of the study at a site: its DP-SGD
training and its private evaluation releases (monitoring), as the auditor recomputes it.

Played as the attack: a study with monitoring on publishes a version whose certificate must
claim at least dp_accounting's PLD composition of all the study's events at each site."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.coordinator.publishing import RegistryPublisher, compact_phases
from flsuite.coordinator.rounds import RoundRecord, SiteReport
from flsuite.privacy import DP_SGD, GAUSSIAN, DpEvent, epsilon, pld_epsilon
from flsuite.registry import Registry, auditor_report

SITES = ("site-0", "site-1")
DELTA = 1e-5
#: The certificate's phase of one round's training and of one evaluation release (``event`` below), without steps.
TRAINING = {"q": 0.05, "sigma": 1.1, "clip": 1.0}
RELEASE = {"q": 1.0, "sigma": 5.0, "clip": 2**0.5}


def event(site: str, server_round: int, *, mechanism: str = DP_SGD, study: str = "default", run: str = "7") -> DpEvent:
    release = mechanism == GAUSSIAN
    return DpEvent(study_id=study, run_id=run, round=server_round, site=site, dataset="records",
                   sample_rate=1.0 if release else 0.05, noise_multiplier=5.0 if release else 1.1,
                   steps=1 if release else 40, max_grad_norm=2**0.5 if release else 1.0, delta=DELTA, accountant="prv",
                   rng="test", recorded_at=f"2026-01-01T00:00:{server_round:02d}.000000+00:00", mechanism=mechanism)


def report(site: str, train: DpEvent, ledger: list[DpEvent]) -> SiteReport:
    """A round's report as the monitor leaves it: the status after the release lists every ledger event."""
    status = protocol.SiteStatus(name=site, records=100, max_epsilon=50.0, delta=DELTA, spent_epsilon=1.0,
                                 prior_events=tuple(ledger))
    return SiteReport(node_id=SITES.index(site) + 1, name=site, metrics={}, status=status, dp_event=train)


def arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(3, np.float32))})


def run_study(tmp_path, *, resumed_after=None, seeded=None, rounds=(1, 2), ledgers=None):
    """Rounds of a DP study with monitoring on, as the publisher sees them; the certificate of its last version."""
    study = compose_study(["monitoring.every=1"])  # the PRV accountant: tight, as the PLD check
    publisher = RegistryPublisher(study, tmp_path, run_id="run1", resumed_after=resumed_after)
    if ledgers is None:  # spent before this study: another study, and an earlier run of this one (same name)
        ledgers = {site: [event(site, 9, study="earlier-study", run="3"), event(site, 1, run="1"),
                          event(site, 1, mechanism=GAUSSIAN, run="1")] for site in SITES}
    publisher.admission = SimpleNamespace(prior_events={site: tuple(ledger) for site, ledger in ledgers.items()}, heads={})
    for site, phases in (seeded or {}).items():
        publisher.phases[site] = list(phases)
        publisher.deltas[site] = DELTA
    for r in rounds:
        sites = []
        for site in SITES:
            train = event(site, r)
            ledgers[site] += [train, event(site, r, mechanism=GAUSSIAN)]  # trained, then released its evaluation
            sites.append(report(site, train, ledgers[site]))
        publisher.on_round(RoundRecord(round=r, metrics={"accuracy": 0.5}, sites=sites, failures=0, wall_s=1.0), arrays())
    publisher.close(None)
    with Registry.open(publisher.path) as registry:
        certificate = registry.version(publisher.published[-1]).dp_certificate
    return certificate, ledgers, publisher.path


def study_events(ledger: list[DpEvent], *, after: int = 0) -> list[DpEvent]:
    """This run's events: the study's name and the Flower run id "7" (the earlier run of the same name was "1")."""
    return [e for e in ledger if e.study_id == "default" and e.run_id == "7" and e.round > after]


def test_the_per_study_epsilon_covers_the_evaluation_releases(tmp_path):
    certificate, ledgers, _ = run_study(tmp_path)
    for site in SITES:
        claim = certificate["sites"][site]
        events = study_events(ledgers[site])
        assert claim["epsilon"] * (1 + 1e-3) >= pld_epsilon(tuple(events), DELTA), site
        assert len(events) == 4 and sum(e.mechanism == GAUSSIAN for e in events) == 2
        # each event once (two rounds' training, two releases), and not the earlier run's of the same study name
        assert claim["phases"] == [TRAINING | {"steps": 80}, RELEASE | {"steps": 2}]
        assert claim["total_epsilon"] > claim["epsilon"]


def test_the_auditor_recomputes_the_claim_with_the_releases_and_finds_it_covered(tmp_path):
    certificate, ledgers, path = run_study(tmp_path)
    report_ = auditor_report(path)
    rows = {row["site"]: row for row in report_["sites"]}
    for site in SITES:
        assert rows[site]["status"] == "ok", rows[site]["problems"]
        assert rows[site]["pld_epsilon"] == pytest.approx(pld_epsilon(tuple(study_events(ledgers[site])), DELTA), rel=1e-9)


def test_a_resumed_study_counts_each_earlier_release_once(tmp_path):
    """The resumed version's certificate seeds rounds <= 1 (training and release); the ledger lists them again."""
    first, ledgers, _ = run_study(tmp_path / "first", rounds=(1,), ledgers={site: [] for site in SITES})
    seeded = {site: first["sites"][site]["phases"] for site in SITES}
    certificate, ledgers, _ = run_study(tmp_path / "again", resumed_after=1, seeded=seeded, rounds=(2,), ledgers=ledgers)
    for site in SITES:
        claim = certificate["sites"][site]
        # round 1 (seeded: training and release) and round 2's two events, each once
        assert claim["phases"] == [TRAINING | {"steps": 80}, RELEASE | {"steps": 2}]
        assert claim["epsilon"] * (1 + 1e-3) >= pld_epsilon(tuple(study_events(ledgers[site])), DELTA), site


def test_a_long_study_s_certificate_does_not_grow_with_its_rounds(tmp_path):
    """Played as an auditor of a long study: each version repeated one phase per site and round, so
    the audit log grew as the square of the rounds (21 kB a version after 83 rounds of the default
    study). Equal (q, sigma, clip) are one phase now, and the claimed epsilon is what per-event
    phases compose to."""
    certificate, ledgers, path = run_study(tmp_path, rounds=range(1, 31), ledgers={site: [] for site in SITES})
    for site in SITES:
        claim = certificate["sites"][site]
        assert claim["phases"] == [TRAINING | {"steps": 30 * 40}, RELEASE | {"steps": 30}]
        events = study_events(ledgers[site])
        assert len(events) == 60
        assert claim["epsilon"] == epsilon([e.phase for e in events], delta=DELTA, accountant="prv")  # bit for bit
    rows = {row["site"]: row for row in auditor_report(path)["sites"]}
    assert all(rows[site]["status"] == "ok" for site in SITES), rows


def test_compacting_phases_is_idempotent_and_keeps_distinct_settings_apart():
    """A resumed study seeds the publisher with its last certificate's phases: compacted again, or
    written by a flsuite before compaction, one per event; neither may change the steps."""
    per_event = [TRAINING | {"steps": 40}, RELEASE | {"steps": 1}, TRAINING | {"steps": 40}, TRAINING | {"steps": 7, "clip": 2.0}]
    once = compact_phases(per_event)
    assert once == [TRAINING | {"steps": 80}, RELEASE | {"steps": 1}, TRAINING | {"steps": 7, "clip": 2.0}]
    assert compact_phases(once) == once and compact_phases([*once, *compact_phases([])]) == once
    assert per_event[0]["steps"] == 40  # the caller's phases are not changed in place
