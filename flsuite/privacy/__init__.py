"""Site-level differential privacy: DP events, accounting, the site's ledger and budget, planning,
and local DP-SGD with Opacus.

Unit of privacy: one record at one site. Everything here but ``dp_training`` is free of torch
and Opacus; the training names below are imported from it on first use.
"""

from __future__ import annotations

from typing import Any

from flsuite.privacy.accounting import (
    ACCOUNTANTS,
    check_delta,
    epsilon,
    noise_multiplier_for,
    validate_accountant,
)
from flsuite.privacy.budget import BudgetProjection, SiteBudget
from flsuite.privacy.events import DP_SGD, GAUSSIAN, DpEvent, InvalidDpEvent, utc_now_iso, valid_dataset_name
from flsuite.privacy.ledger import LedgerHead, LedgerPathError, LedgerState, PrivacyLedger, Reservation
from flsuite.privacy.plan import PlanRow, SitePlanInput, StudyOverBudget, plan_study
from flsuite.privacy.release import (
    EVALUATION_SENSITIVITY,
    DriftResult,
    NoisyAccuracy,
    drift_between,
    drift_sensitivity,
    evaluation_phases,
    evaluation_rounds,
    histograms,
    noisy_accuracy,
    release_counts,
    release_histograms,
)
from flsuite.privacy.schedule import PoissonSchedule, poisson_schedule

# The anchor signs the contract's LedgerHead; flsuite.protocol imports this package, so the
# anchor's names load on first use.
_ANCHOR = ("RESET_HINT", "LedgerAnchor", "anchor_path", "sign_head", "verify_head")
_LEDGER_AUDIT = ("LedgerAudit", "audit_ledger", "pld_epsilon", "pld_epsilon_of_phases")
_TRAINING = (
    "DpTrainingResult",
    "check_dp_compatible",
    "require_secure_rng",
    "rng_description",
    "secure_rng_available",
    "train_dp",
)

__all__ = [
    "ACCOUNTANTS",
    "EVALUATION_SENSITIVITY",
    "BudgetProjection",
    "DP_SGD",
    "DpEvent",
    "DriftResult",
    "GAUSSIAN",
    "InvalidDpEvent",
    "LedgerHead",
    "LedgerPathError",
    "LedgerState",
    "NoisyAccuracy",
    "PlanRow",
    "PoissonSchedule",
    "PrivacyLedger",
    "Reservation",
    "SiteBudget",
    "SitePlanInput",
    "StudyOverBudget",
    "check_delta",
    "drift_between",
    "drift_sensitivity",
    "epsilon",
    "evaluation_phases",
    "evaluation_rounds",
    "histograms",
    "noise_multiplier_for",
    "noisy_accuracy",
    "plan_study",
    "poisson_schedule",
    "release_counts",
    "release_histograms",
    "utc_now_iso",
    "valid_dataset_name",
    "validate_accountant",
    *_ANCHOR,
    *_LEDGER_AUDIT,
    *_TRAINING,
]


def __getattr__(name: str) -> Any:
    if name in _ANCHOR:
        from flsuite.privacy import anchor

        return getattr(anchor, name)
    if name in _LEDGER_AUDIT:
        from flsuite.privacy import ledger_audit

        return getattr(ledger_audit, name)
    if name in _TRAINING:
        from flsuite.privacy import dp_training

        return getattr(dp_training, name)
    raise AttributeError(f"module 'flsuite.privacy' has no attribute {name!r}")
