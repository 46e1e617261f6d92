"""The privacy report an auditor reads: each version's DP certificate, each site's epsilon
recomputed from the recorded DP phases and compared with what was claimed.

Recomputation uses `flsuite.privacy.accounting.epsilon(phases, *, delta, accountant)`,
imported lazily so the registry itself needs no accounting libraries. A claim passes when
recomputed <= claimed * (1 + 1e-3) (+1e-6); a lower claim is marked "under-claimed".

The certificates are read from the audit log after `verify_registry` has checked it
(without blob hashes), under the auditor's pin when one is given; a registry that does
not verify gives a report that is not ok and names the first problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flsuite.audit import check_pin
from flsuite.errors import FlsuiteError, RegistryError
from flsuite.registry.layout import Layout
from flsuite.registry.manifest import VersionInfo
from flsuite.registry.verify import VerifyReport, verify_registry

__all__ = ["CLAIM_RTOL", "claim_covers", "privacy_report"]

CLAIM_RTOL = 1e-3


def claim_covers(claimed: float, recomputed: float) -> bool:
    """Whether a claimed epsilon covers the one recomputed from its phases (within CLAIM_RTOL and rounding)."""
    return recomputed <= claimed * (1 + CLAIM_RTOL) + 1e-6
EpsilonFn = Callable[..., float]


def privacy_report(path: str | Path, *, versions: list[int] | None = None,
                   epsilon_fn: EpsilonFn | None = None, expected_key: str | None = None,
                   verification: VerifyReport | None = None) -> dict[str, Any]:
    """Per version and per site: claimed vs recomputed epsilon. Reads only; needs no key.

    `epsilon_fn` replaces the accountant (tests); by default flsuite.privacy's is used when
    importable, otherwise epsilons are reported as not recomputed. `expected_key` pins the
    coordinator's key as for `verify_registry`; "ok" needs the registry to verify.
    `verification`: this registry's `verify_registry` report when the caller already made it
    (under the same pin), used instead of verifying again.
    """
    layout = Layout(Path(path).absolute())
    if not layout.is_registry():
        raise RegistryError(f"{layout.root} is not an flsuite registry; point --registry (or the "
                            "REGISTRY argument) at a registry folder")
    if verification is None:
        verification = verify_registry(layout.root, expected_key=expected_key, check_blobs=False)
    elif verification.registry != str(layout.root):
        raise ValueError(f"the verification given is of {verification.registry}, not of {layout.root}")
    elif (None if expected_key is None else check_pin(expected_key)) != verification.pin:
        raise ValueError("the verification given was not made under this pin: verify with the same expected_key")
    accounting, epsilon_fn = _accountant(epsilon_fn)
    infos = []
    for _, logged in sorted(verification.published.items()):
        try:
            infos.append(VersionInfo.from_manifest(logged["manifest"], manifest_hash=logged["manifest_hash"],
                                                   manifest_sig=logged["manifest_sig"], seq=logged["seq"]))
        except (KeyError, TypeError, AttributeError):
            continue  # a malformed manifest: verification names it
    cache: dict[str, tuple[float | None, str]] = {}
    out_versions, per_site = [], {}
    for info in infos:
        if versions is not None and info.number not in versions:
            continue
        certificate = info.dp_certificate
        row: dict[str, Any] = {"version": info.number, "run_id": info.run_id, "round": info.round,
                               "sites": info.sites, "certificate": certificate is not None}
        if certificate is not None:
            row.update(unit_of_privacy=certificate["unit_of_privacy"],
                       accountant=certificate["accountant"], claims=[])
            for site, claim in sorted(certificate["sites"].items()):
                recomputed, status = _recompute(claim, certificate["accountant"], epsilon_fn, cache)
                entry = {"site": site, "claimed_epsilon": claim["epsilon"], "delta": claim["delta"],
                         "phases": claim["phases"], "recomputed_epsilon": recomputed, "status": status}
                row["claims"].append(entry)
                per_site[site] = {"latest_version": info.number, **entry}
        out_versions.append(row)
    under = sorted({c["site"] for v in out_versions for c in v.get("claims", [])
                    if c["status"] == "under-claimed"})
    return {"registry": str(layout.root), "verified": verification.ok,
            "verdict": verification.verdict(), "pinned_key": verification.pinned_key,
            "accounting": accounting, "versions": out_versions,
            "sites": dict(sorted(per_site.items())), "under_claimed_sites": under,
            "ok": verification.ok and not under}


def _accountant(epsilon_fn: EpsilonFn | None) -> tuple[str, EpsilonFn | None]:
    if epsilon_fn is not None:
        return "given", epsilon_fn
    try:
        from flsuite.privacy.accounting import epsilon
    except ImportError as exc:
        return f"unavailable: flsuite.privacy.accounting cannot be imported ({exc})", None
    return "flsuite.privacy.accounting.epsilon", epsilon


def _recompute(claim: dict[str, Any], accountant: str, epsilon_fn: EpsilonFn | None,
               cache: dict[str, tuple[float | None, str]]) -> tuple[float | None, str]:
    if epsilon_fn is None:
        return None, "not recomputed"
    phases = [(p["q"], p["sigma"], p["steps"]) for p in claim["phases"]]
    key = json.dumps([phases, claim["delta"], accountant])
    if key not in cache:
        try:
            cache[key] = (float(epsilon_fn(phases, delta=claim["delta"], accountant=accountant)), "")
        except FlsuiteError as exc:
            cache[key] = (None, f"not recomputed: {exc}")
    value, failure = cache[key]
    if value is None:
        return None, failure
    return value, "ok" if claim_covers(claim["epsilon"], value) else "under-claimed"
