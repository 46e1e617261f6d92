"""Site-side budget enforcement: check a training request against the site's own cap, then spend.

The site projects epsilon over everything its ledger charges to the dataset it declared
(every final event and every open reservation) plus the requested phase, and refuses
(BudgetExhausted, carrying what is left) before any training when the projection passes
``max_epsilon``. ``admit`` is the check the ledger runs under its exclusive lock before it
appends a reservation (``PrivacyLedger.reserve``): check and reservation are one operation.

Checking is cheap: a request whose certified screening bound (RDP from cached per-step curves,
times the report tolerance for PRV) is within the cap is allowed without the exact accountant,
which runs only near the cap. The decision is the one the exact accountant would make; the
projection's epsilons are the exact ones, computed when first read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from flsuite.errors import BudgetExhausted, ConfigError
from flsuite.privacy.accounting import (
    PhaseLike,
    epsilon,
    normalize_phases,
    screening_bound,
    validate_accountant,
    validate_delta,
)
from flsuite.privacy.events import DpEvent
from flsuite.privacy.ledger import PrivacyLedger

__all__ = ["BudgetProjection", "SiteBudget"]


class BudgetProjection:
    """What the site has spent, what it would have spent after the request, what is left now.

    ``allowed`` is decided when the projection is made; ``spent`` and ``projected`` (exact
    epsilons) are computed on first read and kept, so an allowed request far from the cap
    costs no exact accounting unless someone reads them.
    """

    def __init__(
        self,
        *,
        spent: float | Callable[[], float],
        projected: float | Callable[[], float],
        max_epsilon: float,
        allowed: bool,
    ) -> None:
        self._spent, self._projected = spent, projected
        self.max_epsilon = max_epsilon
        self.allowed = allowed

    @property
    def spent(self) -> float:
        if callable(self._spent):
            self._spent = float(self._spent())
        return self._spent

    @property
    def projected(self) -> float:
        if callable(self._projected):
            self._projected = float(self._projected())
        return self._projected

    @property
    def remaining(self) -> float:
        """The cap minus the exact spend so far (never below 0)."""
        return max(0.0, self.max_epsilon - self.spent)

    def __repr__(self) -> str:
        return (
            f"BudgetProjection(spent={self.spent}, projected={self.projected}, remaining={self.remaining}, "
            f"max_epsilon={self.max_epsilon}, allowed={self.allowed})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BudgetProjection):
            return NotImplemented
        mine = (self.spent, self.projected, self.max_epsilon, self.allowed)
        return mine == (other.spent, other.projected, other.max_epsilon, other.allowed)

    __hash__ = None  # mutable cache inside; equal projections need not hash alike


class SiteBudget:
    """A site's privacy cap: (max_epsilon, delta) under one accountant."""

    def __init__(self, *, max_epsilon: float, delta: float, accountant: str = "prv") -> None:
        if isinstance(max_epsilon, bool) or not isinstance(max_epsilon, (int, float)) or not (
            max_epsilon > 0 and math.isfinite(max_epsilon)
        ):
            raise ConfigError(f"site privacy cap max_epsilon must be a finite number > 0, got {max_epsilon!r}")
        self.max_epsilon = float(max_epsilon)
        self.delta = validate_delta(delta)
        self.accountant = validate_accountant(accountant)

    def __repr__(self) -> str:
        return f"SiteBudget(max_epsilon={self.max_epsilon}, delta={self.delta}, accountant={self.accountant!r})"

    def project_phases(self, prior: Iterable[PhaseLike], proposed: PhaseLike | Sequence[PhaseLike]) -> BudgetProjection:
        """The projection from phases already spent and the proposed phase(s); pure.

        Allowed without the exact accountant when the screening bound is within the cap; the
        exact projected epsilon decides only when it is not.
        """
        prior = normalize_phases(prior)
        proposed_phases = normalize_phases([proposed] if _is_one_phase(proposed) else proposed)
        after = prior + proposed_phases

        def spent() -> float:
            return epsilon(prior, delta=self.delta, accountant=self.accountant)

        def projected() -> float:
            return epsilon(after, delta=self.delta, accountant=self.accountant)

        projection: float | Callable[[], float] = projected
        if screening_bound(after, delta=self.delta, accountant=self.accountant) <= self.max_epsilon:
            allowed = True
        else:
            projection = projected()
            allowed = projection <= self.max_epsilon
        return BudgetProjection(spent=spent, projected=projection, max_epsilon=self.max_epsilon, allowed=allowed)

    def project(self, ledger: PrivacyLedger, dataset: str, proposed: PhaseLike) -> BudgetProjection:
        """Project everything the ledger charges to ``dataset`` plus ``proposed`` (q, sigma, steps)."""
        return self.project_phases(ledger.charged(dataset), proposed)

    def check_cap(self, ledger: PrivacyLedger, dataset: str) -> float:
        """At site start: refuse (ConfigError) a cap below what the ledger already charged to
        this dataset; returns the epsilon spent so far."""
        spent = epsilon(ledger.charged(dataset), delta=self.delta, accountant=self.accountant)
        if spent > self.max_epsilon:
            raise ConfigError(
                f"site privacy cap max_epsilon={self.max_epsilon:g} is below what this site already spent "
                f"on dataset {dataset!r}: epsilon {spent:.4f} (delta {self.delta:g}, {self.accountant}, ledger "
                f"{ledger.path}). A cap cannot undo past releases; set max_epsilon >= {spent:.4f} "
                "to train further, or keep it and the site will refuse every training request."
            )
        return spent

    def require(self, ledger: PrivacyLedger, dataset: str, proposed: PhaseLike) -> BudgetProjection:
        """Like ``project``, but raise BudgetExhausted when the request would pass the cap."""
        return self.admit(ledger.charged(dataset), proposed)

    def admit(self, prior: Iterable[PhaseLike], proposed: PhaseLike) -> BudgetProjection:
        """The projection of ``prior`` plus ``proposed``; BudgetExhausted when it passes the cap."""
        projection = self.project_phases(prior, proposed)
        if not projection.allowed:
            raise BudgetExhausted(
                f"privacy budget exhausted: this request would bring epsilon to "
                f"{projection.projected:.4f} (delta {self.delta:g}, {self.accountant}), above the "
                f"site's cap {self.max_epsilon:g}; spent so far {projection.spent:.4f}, "
                f"{projection.remaining:.4f} left. Nothing was trained.",
                remaining_epsilon=projection.remaining,
            )
        return projection


def _is_one_phase(value: object) -> bool:
    if isinstance(value, DpEvent):
        return True
    return isinstance(value, (tuple, list)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
