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
from flsuite.privacy.events import DpEvent, InvalidDpEvent, data_fingerprint, utc_now_iso
from flsuite.privacy.ledger import LedgerHead, LedgerPathError, PrivacyLedger
from flsuite.privacy.plan import PlanRow, SitePlanInput, StudyOverBudget, plan_study
from flsuite.privacy.schedule import PoissonSchedule, poisson_schedule

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
    "BudgetProjection",
    "DpEvent",
    "InvalidDpEvent",
    "LedgerHead",
    "LedgerPathError",
    "PlanRow",
    "PoissonSchedule",
    "PrivacyLedger",
    "SiteBudget",
    "SitePlanInput",
    "StudyOverBudget",
    "check_delta",
    "data_fingerprint",
    "epsilon",
    "noise_multiplier_for",
    "plan_study",
    "poisson_schedule",
    "utc_now_iso",
    "validate_accountant",
    *_TRAINING,
]


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        from flsuite.privacy import dp_training

        return getattr(dp_training, name)
    raise AttributeError(f"module 'flsuite.privacy' has no attribute {name!r}")
