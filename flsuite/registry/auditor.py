"""What the auditor's HTML report shows, gathered as plain JSON: no rendering here.

`auditor_report(registry, ledgers=[...])` verifies the registry offline (signatures, hash
chain, blobs, catalogue, pinned key: `verify_registry`), lists every version with its
lineage, metrics and DP certificate, and, per site and per study (run), sets the claimed
epsilon beside the epsilon recomputed with dp_accounting's PLD accountant (an accountant
flsuite did not write) from the recorded DP-SGD phases:

- per study: the certificate's phases of the run's latest version: every DP event of the
  study at that site, its DP-SGD training and its evaluation and drift releases (a Gaussian
  release is a phase at q = 1), as the coordinator composes the claim and `privacy plan` plans it;
- total (registry): every run's phases in this registry up to that run (a lower bound:
  a site may have spent elsewhere);
- total (ledger), with ``--ledger SITE_DIR``: every charged event the site's own ledger
  holds up to the signed ledger head the registry recorded for that site, after checking
  that the head is signed by the site's pinned identity and that the ledger holds exactly
  what was signed (`audit_ledger` checks the ledger against its own anchor as well).

A site's row is a FAILURE when a claim is below what was recomputed (beyond CLAIM_RTOL),
when the recomputed total passes the site's cap (from the site folder's ``site.json``), or
when its ledger does not check; the report is ok only when the registry verifies and no
row or ledger failed. Everything from the registry and the ledgers is untrusted: it is
reported, never executed, and the renderer escapes it. Pure: no torch, no flwr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flsuite.errors import ConfigError, RegistryError
from flsuite.privacy import LedgerAudit, anchor_path, audit_ledger, pld_epsilon, pld_epsilon_of_phases, verify_head
from flsuite.protocol import LedgerHead
from flsuite.registry.manifest import VersionInfo, validate_dp_certificate
from flsuite.registry.report import CLAIM_RTOL, claim_covers
from flsuite.registry.verify import VerifyReport, verify_registry
from flsuite.secagg import load_pinned_identities

__all__ = ["CHECKS", "auditor_findings", "auditor_report"]

LEDGER_FILE = "ledger.jsonl"
SITE_FILE = "site.json"
IDENTITIES_FILE = "identities.json"
#: The verification's checks as an auditor names them, and the problem kinds under each.
CHECKS = {
    "signatures": ("signature", "keys", "manifest", "head"),
    "hash chain": ("chain", "hash", "genesis", "sequence", "truncation", "checkpoint", "format", "lineage", "alias", "layout"),
    "blobs": ("blob",),
    "catalogue": ("catalogue",),
    "pinned key": ("pin", "since"),
}


def auditor_report(registry: str | Path, *, ledgers: Sequence[str | Path] = (), identities: str | Path | None = None,
                   expected_key: str | None = None, encryption_key: bytes | None = None) -> dict[str, Any]:
    """Everything the HTML report shows; ConfigError for a ledger folder that is not one (before any work)."""
    return auditor_findings(registry, ledgers=ledgers, identities=identities, expected_key=expected_key,
                            encryption_key=encryption_key)[0]


def auditor_findings(registry: str | Path, *, ledgers: Sequence[str | Path] = (), identities: str | Path | None = None,
                     expected_key: str | None = None,
                     encryption_key: bytes | None = None) -> tuple[dict[str, Any], VerifyReport]:
    """``auditor_report``'s report and the registry's verification it rests on (blobs checked), so a
    caller that needs the verification too (``audit report``'s privacy table) does not verify again."""
    folders = [_ledger_folder(Path(folder)) for folder in ledgers]
    pinned = _pinned(folders, identities)
    verification = verify_registry(registry, encryption_key=encryption_key, expected_key=expected_key)
    versions = _versions(verification.published)
    audits = [_audit(folder, pinned) for folder in folders]  # each ledger read and verified once, here
    ledger_rows = [row for row, _ in audits]
    by_site = {row["site"]: (row, found) for row, found in audits if row["site"]}
    sites = _site_rows(versions, by_site, pinned)
    failures = [f"site {row['site']} (run {row['run_id']}): {p}" for row in sites for p in row["problems"]]
    failures += [f"ledger {row['folder']}: {p}" for row in ledger_rows for p in row["problems"]]
    failures += [f"version {v['number']}: malformed DP certificate ({v['certificate_error']})" for v in versions
                 if v["certificate_error"]]
    return {
        "registry": str(Path(registry).absolute()),
        "verification": _verification(verification),
        "versions": versions,
        "sites": sites,
        "ledgers": ledger_rows,
        "failures": failures,
        "ok": verification.ok and not failures,
        "claim_rtol": CLAIM_RTOL,
        "accountant": "dp_accounting PLDAccountant (pessimistic estimate)",
    }, verification


def _ledger_folder(folder: Path) -> Path:
    ledger = folder / LEDGER_FILE if folder.is_dir() else folder
    if not ledger.is_file():
        raise ConfigError(f"--ledger {folder}: no privacy ledger at {ledger}; give a site's folder (holding {LEDGER_FILE})")
    return ledger.parent


def _pinned(folders: list[Path], identities: str | Path | None) -> dict[str, bytes]:
    """The sites' pinned public keys: the given identities file, else each site folder's parent's."""
    if identities is not None:
        return load_pinned_identities(identities)
    pinned: dict[str, bytes] = {}
    for parent in sorted({folder.parent for folder in folders}):
        if (parent / IDENTITIES_FILE).is_file():
            pinned.update(load_pinned_identities(parent / IDENTITIES_FILE))
    return pinned


def _verification(report: Any) -> dict[str, Any]:
    checks = {}
    for name, kinds in CHECKS.items():
        found = [str(p) for p in report.problems if p.check in kinds]
        checks[name] = {"ok": not found, "problems": found}
    if report.pinned_key is None and checks["pinned key"]["ok"]:
        checks["pinned key"]["note"] = "no key pinned: pass --expect-key KEY_ID to require the coordinator's key"
    listed = {str(p) for found in checks.values() for p in found["problems"]}
    return {"ok": report.ok, "verdict": report.verdict(), "checks": checks,
            "other_problems": [str(p) for p in report.problems if str(p) not in listed],
            "notes": list(report.notes), "key_ids": list(report.key_ids), "pinned_key": report.pinned_key,
            "entries": report.entries, "versions": report.versions, "blobs_checked": report.blobs_checked,
            "head_seq": report.head_seq, "head_hash": report.head_hash}


def _versions(published: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for _, logged in sorted(published.items()):
        try:
            info = VersionInfo.from_manifest(logged["manifest"], manifest_hash=logged["manifest_hash"],
                                             manifest_sig=logged["manifest_sig"], seq=logged["seq"])
        except (KeyError, TypeError, AttributeError):
            continue  # a malformed manifest: verification names it
        certificate, error = info.dp_certificate, None
        if certificate is not None:
            try:
                certificate = validate_dp_certificate(certificate, sites=info.sites)
            except RegistryError as exc:
                certificate, error = None, str(exc)
        out.append({"number": info.number, "parent": info.parent, "run_id": info.run_id, "study_id": info.study_id,
                    "round": info.round, "created_at": info.created_at, "blob_sha256": info.blob_sha256,
                    "encrypted": info.encrypted, "sites": info.sites, "metrics": _plain(info.manifest.get("metrics")),
                    "dp_certificate": certificate, "certificate_error": error})
    return out


def _plain(metrics: Any) -> dict[str, Any]:
    return dict(metrics) if isinstance(metrics, dict) else {}


def _claim(value: float | None, recomputed: float | None) -> bool:
    """True when a claim covers what was recomputed (within CLAIM_RTOL)."""
    return value is None or recomputed is None or claim_covers(value, recomputed)


def _phases(claim: dict[str, Any]) -> list[tuple[float, float, int]]:
    return [(p["q"], p["sigma"], p["steps"]) for p in claim["phases"]]


def _site_rows(versions: list[dict[str, Any]], ledgers: dict[str, tuple[dict[str, Any], LedgerAudit]],
               pinned: dict[str, bytes]) -> list[dict[str, Any]]:
    """Per run (its latest certified version) and per site: claims beside PLD recomputations."""
    latest: dict[str, dict[str, Any]] = {}
    for version in versions:
        if version["dp_certificate"]:
            latest[version["run_id"]] = version
    runs = sorted(latest.values(), key=lambda v: v["number"])
    rows, earlier = [], {}  # earlier: site -> phases of earlier runs in this registry
    for version in runs:
        for site, claim in sorted(version["dp_certificate"]["sites"].items()):
            delta = claim["delta"]
            phases = _phases(claim)
            registry_total = pld_epsilon_of_phases([*earlier.get(site, []), *phases], delta)
            earlier.setdefault(site, []).extend(phases)
            row = {"site": site, "run_id": version["run_id"], "version": version["number"], "delta": delta,
                   "claimed_epsilon": claim["epsilon"], "pld_epsilon": pld_epsilon_of_phases(phases, delta),
                   "claimed_total": claim.get("total_epsilon"), "pld_total_registry": registry_total,
                   "pld_total_ledger": None, "cap": None, "ledger_head": claim.get("ledger_head"),
                   "ledger_head_check": claim.get("ledger_head_check"), "ledger_checked": None, "problems": []}
            if not _claim(row["claimed_epsilon"], row["pld_epsilon"]):
                row["problems"].append(f"claims epsilon {row['claimed_epsilon']:.4f} for this study; its phases compose "
                                       f"to {row['pld_epsilon']:.4f} (PLD)")
            if site in ledgers:
                _check_against_ledger(row, *ledgers[site], pinned.get(site))
            claimed_total = row["claimed_total"] if row["claimed_total"] is not None else row["claimed_epsilon"]
            for label, recomputed in (("in this registry", registry_total), ("in its ledger", row["pld_total_ledger"])):
                if not _claim(claimed_total, recomputed):
                    row["problems"].append(f"claims a total epsilon of {claimed_total:.4f}; the events recorded {label} "
                                           f"compose to {recomputed:.4f} (PLD)")
            total = max(x for x in (registry_total, row["pld_total_ledger"]) if x is not None)
            if row["cap"] is not None and total > row["cap"] + 1e-9:
                row["problems"].append(f"recomputed total epsilon {total:.4f} is over the site's cap {row['cap']:g}")
            row["status"] = "FAILURE" if row["problems"] else "ok"
            rows.append(row)
    return rows


def _check_against_ledger(row: dict[str, Any], ledger: dict[str, Any], found: LedgerAudit,
                          public_key: bytes | None) -> None:
    """The site's own ledger (as read once by ``_audit``) against the signed head this registry recorded for it."""
    row["cap"] = ledger["cap"]
    record = row["ledger_head"]
    if record is None:
        row["problems"].append("the certificate records no signed ledger head to check the site's ledger against")
        return
    head = LedgerHead.from_record(record)
    if public_key is None:
        row["problems"].append("no pinned identity for this site: the recorded ledger head's signature cannot be checked "
                               "(pass --identities FILE)")
    elif not verify_head(head, public_key):
        row["problems"].append("the ledger head recorded in the registry is not signed by the site's pinned identity")
    prefix = _charged_up_to(found, head.entries, head.hash)
    if isinstance(prefix, str):
        row["problems"].append(prefix)
        row["ledger_checked"] = False
        return
    row["ledger_checked"] = True
    row["pld_total_ledger"] = pld_epsilon(prefix, row["delta"])


def _charged_up_to(found: LedgerAudit, entries: int, expected_hash: str) -> tuple[Any, ...] | str:
    """The events charged in the ledger's first ``entries`` entries, or why they cannot be trusted.

    The whole ledger verified (every entry, beyond the head too) or nothing is trusted; the charge
    is then the verified read's own state at that depth (``LedgerState.up_to``).
    """
    state = found.state
    if state is None:
        return f"the site's ledger does not verify: {'; '.join(found.problems)}"
    if state.head.entries < entries:
        return (f"the site's ledger holds {state.head.entries} entries, fewer than the {entries} of the head recorded "
                "in the registry (cut)")
    if state.hash_at(entries) != expected_hash:
        return f"the site's ledger differs at entry {entries} from the head recorded in the registry (rewritten)"
    return state.up_to(entries).charged()


def _audit(folder: Path, pinned: dict[str, bytes]) -> tuple[dict[str, Any], LedgerAudit]:
    """A ledger folder's row (``audit_ledger``'s findings and the site's cap) and the audit itself."""
    ledger = folder / LEDGER_FILE
    site = _anchored_site(ledger)
    found = audit_ledger(ledger, public_key=pinned.get(site) if site else None)
    problems = list(found.problems)
    if site and site not in pinned:
        problems.append(f"no pinned identity for site {site!r}: its signed head cannot be checked (pass --identities FILE)")
    cap = _cap(folder / SITE_FILE)
    total = found.epsilon_pld
    if cap is not None and total is not None and total > cap + 1e-9:
        problems.append(f"the ledger's total epsilon {total:.4f} (PLD) is over the site's cap {cap:g}")
    row = {"folder": str(folder), "ledger": str(ledger), "site": site, "entries": found.entries,
           "signature": found.signature, "charged_events": len(found.charged), "delta": found.delta,
           "epsilon_pld": total, "cap": cap, "problems": problems, "ok": not problems}
    return row, found


def _anchored_site(ledger: Path) -> str | None:
    try:
        site = json.loads(anchor_path(ledger).read_text())["site"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return site if isinstance(site, str) else None


def _cap(path: Path) -> float | None:
    try:
        cap = float(json.loads(path.read_text())["max_epsilon"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cap if math.isfinite(cap) else None

