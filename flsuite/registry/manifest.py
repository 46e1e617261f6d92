"""The manifest of a model version: what it is, where it came from, what privacy it spent.

A manifest is a plain JSON dict, signed by the coordinator; `build_manifest` validates
every field (naming the one that is wrong) and `VersionInfo` is the read-side view of a
published version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flsuite import protocol
from flsuite.errors import ProtocolError, RegistryError

__all__ = ["MANIFEST_FORMAT", "MANIFEST_DOMAIN", "VersionInfo", "build_manifest",
           "validate_dp_certificate"]

MANIFEST_FORMAT = "flsuite.manifest/1"
MANIFEST_DOMAIN = "flsuite.registry.manifest/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VersionInfo:
    """A published version: its number, lineage, blob and signed manifest."""

    number: int
    parent: int | None
    run_id: str
    study_id: str
    round: int
    blob_sha256: str
    encrypted: bool
    manifest_hash: str
    manifest_sig: str
    seq: int
    created_at: str
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.manifest["metrics"])

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def dp_certificate(self) -> dict[str, Any] | None:
        return self.manifest["dp_certificate"]

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "parent": self.parent, "run_id": self.run_id,
                "study_id": self.study_id, "round": self.round, "blob_sha256": self.blob_sha256,
                "encrypted": self.encrypted, "manifest_hash": self.manifest_hash,
                "manifest_sig": self.manifest_sig, "audit_seq": self.seq,
                "created_at": self.created_at, "manifest": self.manifest}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], *, manifest_hash: str, manifest_sig: str,
                      seq: int) -> VersionInfo:
        return cls(number=manifest["version"], parent=manifest["parent"],
                   run_id=manifest["run_id"], study_id=manifest["study_id"],
                   round=manifest["round"], blob_sha256=manifest["blob"]["sha256"],
                   encrypted=manifest["blob"]["encryption"] is not None,
                   manifest_hash=manifest_hash, manifest_sig=manifest_sig, seq=seq,
                   created_at=manifest["created_at"], manifest=manifest)


def build_manifest(*, registry_id: str, version: int, parent: int | None, run_id: str,
                   study_id: str, round: int, config_hash: str, code_digest: str,
                   sites: Sequence[str], metrics: Mapping[str, float],
                   dp_certificate: Mapping[str, Any] | None, blob: dict[str, Any],
                   created_at: str) -> dict[str, Any]:
    """A validated manifest dict; RegistryError naming the first bad field."""
    for name, value in (("run_id", run_id), ("study_id", study_id)):
        if not isinstance(value, str) or not value.strip():
            raise RegistryError(f"publish: {name}={value!r} must be a non-empty string")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise RegistryError(f"publish: round={round!r} must be an integer >= 0")
    for name, value in (("config_hash", config_hash), ("code_digest", code_digest)):
        if not isinstance(value, str) or not _HEX64.match(value):
            raise RegistryError(f"publish: {name}={value!r} must be 64 lower-case hex digits; "
                                f"compute it with flsuite.registry.{name}()")
    if isinstance(sites, str) or not isinstance(sites, Sequence) or not all(
            isinstance(s, str) and s for s in sites):
        raise RegistryError(f"publish: sites={sites!r} must be a list of pseudonymous site ids")
    if len(set(sites)) != len(sites):
        raise RegistryError(f"publish: sites={list(sites)!r} lists a site twice")
    return {
        "format": MANIFEST_FORMAT, "registry_id": registry_id, "version": version,
        "parent": parent, "run_id": run_id, "study_id": study_id, "round": round,
        "config_hash": config_hash, "code_digest": code_digest, "sites": sorted(sites),
        "metrics": _metrics(metrics),
        "dp_certificate": None if dp_certificate is None else validate_dp_certificate(
            dp_certificate, sites=sites),
        "blob": blob, "created_at": created_at,
    }


def validate_dp_certificate(certificate: Mapping[str, Any], *, sites: Sequence[str] = ()) -> dict[str, Any]:
    """Check a DP certificate and return it as plain JSON.

    Shape: {"unit_of_privacy": str, "accountant": str, "sites": {site: {"epsilon": float,
    "delta": float, "phases": [{"q": float, "sigma": float, "steps": int, "clip": float}]}}};
    every contributing site must have an entry. ``epsilon`` is what this study's phases
    compose to (every DP event of the study at that site: training and releases, q = 1). A site's entry may also carry ``total_epsilon`` (everything the site's ledger
    recorded, this study included: never below ``epsilon``), its signed ``ledger_head``
    (site, dataset, entries, hash, signature; it must name the site) and
    ``ledger_head_check`` (how the coordinator checked the signature), which come together.
    """
    where = "publish: dp_certificate"
    if not isinstance(certificate, Mapping):
        raise RegistryError(f"{where} must be a dict or None")
    for name in ("unit_of_privacy", "accountant"):
        if not isinstance(certificate.get(name), str) or not certificate[name]:
            raise RegistryError(f"{where}[{name!r}]={certificate.get(name)!r} must be a non-empty string")
    per_site = certificate.get("sites")
    if not isinstance(per_site, Mapping) or not per_site:
        raise RegistryError(f"{where}['sites'] must map each site id to its epsilon, delta, phases")
    missing = sorted(set(sites) - set(per_site))
    if missing:
        raise RegistryError(f"{where}: no entry for contributing site(s) {missing}")
    out_sites = {}
    for site, claim in per_site.items():
        at = f"{where}['sites'][{site!r}]"
        if not isinstance(claim, Mapping):
            raise RegistryError(f"{at} must be a dict with epsilon, delta, phases")
        epsilon = _number(claim.get("epsilon"), f"{at}['epsilon']", low=0.0)
        delta = _number(claim.get("delta"), f"{at}['delta']", low=0.0, high=1.0, open_low=True)
        phases = claim.get("phases")
        if not isinstance(phases, Sequence) or isinstance(phases, str) or not phases:
            raise RegistryError(f"{at}['phases'] must be a non-empty list of {{q, sigma, steps, clip}}")
        out_phases = []
        for index, phase in enumerate(phases):
            pat = f"{at}['phases'][{index}]"
            if not isinstance(phase, Mapping) or set(phase) != {"q", "sigma", "steps", "clip"}:
                raise RegistryError(f"{pat} must have exactly the keys q, sigma, steps, clip")
            steps = phase["steps"]
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
                raise RegistryError(f"{pat}['steps']={steps!r} must be an integer >= 0")
            # q = 1 (every record in every step) is a valid, unamplified Gaussian mechanism.
            out_phases.append({"q": _number(phase["q"], f"{pat}['q']", low=0.0, high=1.0, open_low=True, open_high=False),
                               "sigma": _number(phase["sigma"], f"{pat}['sigma']", low=0.0, open_low=True),
                               "steps": steps,
                               "clip": _number(phase["clip"], f"{pat}['clip']", low=0.0, open_low=True)})
        out_sites[str(site)] = {"epsilon": epsilon, "delta": delta, "phases": out_phases, **_site_totals(claim, at, str(site), epsilon)}
    return {"unit_of_privacy": certificate["unit_of_privacy"],
            "accountant": certificate["accountant"], "sites": out_sites}


def _site_totals(claim: Mapping[str, Any], at: str, site: str, epsilon: float) -> dict[str, Any]:
    """The optional total epsilon and signed ledger head of one site's claim, checked."""
    unknown = sorted(set(claim) - {"epsilon", "delta", "phases", "total_epsilon", "ledger_head", "ledger_head_check"})
    if unknown:
        raise RegistryError(f"{at} has unknown keys {unknown}")
    out: dict[str, Any] = {}
    if "total_epsilon" in claim:
        total = _number(claim["total_epsilon"], f"{at}['total_epsilon']", low=0.0)
        if total < epsilon * (1 - 1e-9):
            raise RegistryError(f"{at}['total_epsilon']={total!r} is below this study's epsilon {epsilon!r}: "
                                "a site's total composes this study's events with every earlier one")
        out["total_epsilon"] = total
    if ("ledger_head" in claim) != ("ledger_head_check" in claim):
        raise RegistryError(f"{at}: 'ledger_head' and 'ledger_head_check' come together (the head, and how its signature was checked)")
    if "ledger_head" in claim:
        head = claim["ledger_head"]
        try:
            parsed = protocol.LedgerHead.from_record(head) if isinstance(head, Mapping) else None
        except ProtocolError as error:
            raise RegistryError(f"{at}['ledger_head'] is not a signed ledger head: {error}") from None
        if parsed is None:
            raise RegistryError(f"{at}['ledger_head'] must be a dict with site, dataset, entries, hash, signature")
        if parsed.site != site:
            raise RegistryError(f"{at}['ledger_head'] names site {parsed.site!r}, not {site!r}")
        if "total_epsilon" not in claim:
            raise RegistryError(f"{at}: a certificate with a ledger head states the site's total_epsilon at that head")
        check = claim["ledger_head_check"]
        if not isinstance(check, str) or not check:
            raise RegistryError(f"{at}['ledger_head_check']={check!r} must be a non-empty string")
        out["ledger_head"] = parsed.to_record()
        out["ledger_head_check"] = check
    return out


def _metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"publish: metrics={metrics!r} must be a dict of name -> number")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise RegistryError(f"publish: metric name {name!r} must be a non-empty string")
        out[name] = _number(value, f"publish: metrics[{name!r}]")
    return out


def _number(value: Any, where: str, *, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RegistryError(f"{where}={value!r} must be a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise RegistryError(f"{where}={value!r} must be a finite number")
    if low is not None and (number < low or (open_low and number == low)):
        raise RegistryError(f"{where}={value!r} must be {'>' if open_low else '>='} {low}")
    if high is not None and (number > high or (open_high and number == high)):
        raise RegistryError(f"{where}={value!r} must be {'<' if open_high else '<='} {high}")
    return number
