"""Publishing a study's global models into the registry, with lineage and a DP certificate.

The coordinator publishes after each round (or only the best and the final model, or
only the final one) and records the study's events in the registry's audit log (refusals,
rejected replies, sites that failed with their reason, sites planned late or left out,
aborted rounds, and how the study ended with every reason it did not complete). Each version's DP
certificate lists, per contributing site, the phases of every DP event of this study at
that site (its DP-SGD training and its private evaluation and drift releases, each release
a Gaussian phase at q = 1) and the epsilon they compose to; the site's total epsilon over
every event its ledger recorded (what it spent before this study, and this study's events);
and the signed ledger head of its latest accepted reply, with how the head was checked.

Events with the same (q, sigma, clip) are listed as one phase with their steps summed
(``compact_phases``; Opacus' accountants merge consecutive equal steps in their history so):
composition ignores order, and both accountants compose equal mechanisms in one
self-composition, so every epsilon is the same, while a certificate stays the size of the
study's distinct settings instead of growing by one phase per site and round (every version
of a long study repeated them all).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from flsuite import protocol
from flsuite.config.schema import UNIT_OF_PRIVACY, StudyConfig
from flsuite.coordinator.rounds import REJECTED_REPLY, RoundRecord, StudyResult
from flsuite.coordinator.verdict import SiteFailure, Verdict
from flsuite.models import decoded

SOURCE_FOLDERS = ("flsuite", "server", "clients")


def registry_paths(study: StudyConfig, output_dir: Path) -> tuple[Path, Path]:
    """(registry folder, coordinator signing key) — the private key lives outside the registry."""
    registry = Path(study.registry.path) if study.registry.path else output_dir / "registry"
    key = Path(study.registry.signing_key) if study.registry.signing_key else registry.parent / "coordinator-signing.key"
    return registry, key


def encryption_key(study: StudyConfig) -> bytes | None:
    from flsuite.registry import key_from_env, key_from_file

    if study.registry.encryption_key_file:
        return key_from_file(study.registry.encryption_key_file)
    if study.registry.encryption_key_env:
        return key_from_env(study.registry.encryption_key_env)
    return None


class RegistryPublisher:
    """Publishes global models and study events of one run into a registry."""

    def __init__(self, study: StudyConfig, output_dir: Path, *, run_id: str, resumed_after: int | None = None) -> None:
        from flsuite.registry import Registry, code_digest, config_hash

        self.study = study
        self.run_id = run_id
        self.path, key_path = registry_paths(study, output_dir)
        self.registry = Registry.open(self.path, signing_key_path=key_path, encryption_key=encryption_key(study))
        root = Path(__file__).resolve().parents[2]
        self.code_digest = code_digest([root / folder for folder in SOURCE_FOLDERS if (root / folder).exists()])
        self.config_hash = config_hash(study.model_dump(mode="json", exclude={"output_dir", "sites_dir", "resume"}))
        self.phases: dict[str, list[dict[str, Any]]] = defaultdict(list)  # per site, compacted (``compact_phases``)
        self.events: dict[str, list[protocol.DpEvent]] = defaultdict(list)  # this study's, per site
        self.known: dict[str, tuple[protocol.DpEvent, ...]] = {}  # per site, the events its latest status listed
        self.deltas: dict[str, float] = {}
        self.before: dict[str, frozenset[str]] = {}  # per site, its ledger's events (JSON) when it was planned
        self.admission: Any = None  # a DP study's DpAdmission: prior events, ledger heads and their checks
        self.best_accuracy = -1.0
        self.published: list[int] = []
        self.pending: tuple[RoundRecord, ArrayRecord] | None = None
        if resumed_after is None:
            self.registry.record("study.started", {"run_id": run_id, "study": study.name, "config_hash": self.config_hash})
        else:  # the same run goes on after its coordinator died: versions continue its numbering and lineage
            self.registry.record("study.resumed", {"run_id": run_id, "study": study.name, "config_hash": self.config_hash,
                                                   "after_round": resumed_after})

    def on_round(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        for site in record.sites:
            if site.dp_event is not None:
                event = site.dp_event
                self.phases[site.name] = compact_phases([*self.phases[site.name], _phase(event)])
                self.events[site.name].append(event)
                if site.name not in self.before:  # its first round here: the planning snapshot is still the first one
                    prior = self.admission.prior_events.get(site.name, ()) if self.admission is not None else ()
                    self.before[site.name] = frozenset(e.to_json() for e in prior)
                self.deltas[site.name] = event.delta
                if site.status is not None:
                    self.known[site.name] = site.status.prior_events
        policy = self.study.registry.publish
        accuracy = record.metrics.get("accuracy", -1.0)
        if policy == "every_round" or (policy == "best_and_final" and accuracy > self.best_accuracy):
            self._publish(record, arrays)
        else:
            self.pending = (record, arrays)
        self.best_accuracy = max(self.best_accuracy, accuracy)

    def finish(self, result: StudyResult, *, failures: Iterable[SiteFailure] = ()) -> None:
        """Record the study's events in the audit log, then publish the final model if the policy held it back.

        Events go first: when the disk fills up, what the study refused and why is already on record.
        """
        for refusal in result.refusals:
            kind = "reply.rejected" if refusal.kind == REJECTED_REPLY else "site.refused"
            self.registry.record(kind, {"run_id": self.run_id, "round": refusal.round, "site": refusal.name, "kind": refusal.kind,
                                        "reason": refusal.reason})
        for failure in failures:
            self.registry.record("site.failed", {"run_id": self.run_id, **failure.to_summary()})
        for event in result.planning:
            kind = "site.planned" if event["action"] == "planned" else "site.left_out"
            self.registry.record(kind, {"run_id": self.run_id, **event})
        for aborted in result.aborted_rounds:
            self.registry.record("round.aborted", {"run_id": self.run_id, **aborted})
        for pruned in result.pruned:
            self.registry.record("site.pruned", {"run_id": self.run_id, **pruned.to_summary()})
        for back in result.readmitted:
            self.registry.record("site.readmitted", {"run_id": self.run_id, **back})
        if self.pending is not None:  # the final model, when the policy did not publish it already
            self._publish(*self.pending)

    def close(self, verdict: Verdict | None) -> None:
        """Record how the study ended (with every reason it did not complete) and close the registry."""
        try:
            if verdict is not None:
                self.registry.record("study.finished", {"run_id": self.run_id, "status": verdict.status,
                                                        "reasons": list(verdict.reasons), "versions": self.published})
        finally:
            self.registry.close()

    def outputs(self) -> dict[str, Any]:
        """What the summary says about the registry: its folder and the versions this study published."""
        return {"registry": str(self.path.resolve()), "registry_versions": list(self.published),
                "final_version": self.published[-1] if self.published else None}

    def _publish(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        weights = decoded(arrays)
        sites = [site.name for site in record.sites]
        info = self.registry.publish(
            weights,
            run_id=self.run_id,
            study_id=self.study.name,
            round=record.round,
            config_hash=self.config_hash,
            code_digest=self.code_digest,
            sites=sites,
            metrics={k: float(v) for k, v in record.metrics.items()},
            dp_certificate=self._certificate(sites),
        )
        self.published.append(info.number)
        self.pending = None

    def _certificate(self, sites: list[str]) -> dict[str, Any] | None:
        if not self.study.privacy.enabled or not self.phases:
            return None
        from flsuite.privacy import epsilon

        accountant = self.study.privacy.accountant
        per_site = {}
        for name in self.phases:
            delta = self.deltas[name]
            phases = compact_phases([*self.phases[name], *(_phase(event) for event in self._other_study_events(name))])
            claim: dict[str, Any] = {
                "epsilon": epsilon([(p["q"], p["sigma"], p["steps"]) for p in phases], delta=delta, accountant=accountant),
                "total_epsilon": epsilon([e.phase for e in self._every_event(name)], delta=delta, accountant=accountant),
                "delta": delta,
                "phases": phases,
            }
            head = self.admission.heads.get(name) if self.admission is not None else None
            if head is not None:
                claim["ledger_head"] = head.to_record()
                claim["ledger_head_check"] = self.admission.head_check(name)
            per_site[name] = claim
        return {"unit_of_privacy": UNIT_OF_PRIVACY, "accountant": accountant, "sites": per_site}

    def _other_study_events(self, site: str) -> list[protocol.DpEvent]:
        """The site's events of this study that no accepted train reply carried, each once: its
        evaluation and drift releases, and training it recorded whose reply was not accepted.

        They come from the site's latest status (its ledger): events named for this study that
        its ledger did not hold when the site was planned (an earlier run of a study of the same
        name, and a resumed study's rounds before the resume, which the resumed version's
        certificate seeded, are not counted again; a round interrupted by the coordinator's
        death is in the site's total)."""
        accepted = {event.to_json() for event in self.events[site]}
        before = self.before.get(site, frozenset())
        found = {event.to_json(): event for event in self.known.get(site, ()) if event.study_id == self.study.name}
        return [event for key, event in found.items() if key not in accepted and key not in before]

    def _every_event(self, site: str) -> list[protocol.DpEvent]:
        """Every DP event the site's ledger recorded that the coordinator knows of, each once: the
        events its planning status listed, this study's, and those its latest reply's status listed."""
        prior = self.admission.prior_events.get(site, ()) if self.admission is not None else ()
        unique = {event.to_json(): event for event in (*prior, *self.events[site], *self.known.get(site, ()))}
        return list(unique.values())


def compact_phases(phases: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Phases with equal (q, sigma, clip) as one, their steps summed, in the order first seen.

    Every epsilon stays the same: composition ignores order, and flsuite's accountants and the
    auditor's PLD check merge equal (q, sigma) before composing. Idempotent, so a resumed study
    may seed it with a certificate's phases, compacted or (written before compaction) not.
    """
    merged: dict[tuple[float, float, float], dict[str, Any]] = {}
    for phase in phases:
        key = (phase["q"], phase["sigma"], phase["clip"])
        if key in merged:
            merged[key]["steps"] += phase["steps"]
        else:
            merged[key] = {"q": phase["q"], "sigma": phase["sigma"], "steps": phase["steps"], "clip": phase["clip"]}
    return list(merged.values())


def _phase(event: protocol.DpEvent) -> dict[str, Any]:
    """An event as the certificate lists it (a release: q = 1, clip = its L2 sensitivity)."""
    return {"q": event.sample_rate, "sigma": event.noise_multiplier, "steps": event.steps, "clip": event.max_grad_norm}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
