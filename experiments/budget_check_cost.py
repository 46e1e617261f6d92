"""Cost of one site budget check (issue 15.1): the exact accountant every round (before)
against the RDP screen with cached per-step curves (after). Both in one run, with timeit.

A site that spent 20 rounds of (q 0.02, sigma 1.2, 50 steps) asks for round 21 under cap 8.
Each round's composition is new, so the epsilon cache is cleared before every check; the
"after" variant keeps its per-(q, sigma) RDP curves, as a running site does.
Run: PYTHONPATH=. python -m experiments.budget_check_cost
"""

from __future__ import annotations

import timeit

from flsuite.privacy import SiteBudget, accounting

PRIOR = [(0.02, 1.2, 50)] * 20
REQUEST = (0.02, 1.2, 50)
BUDGET = SiteBudget(max_epsilon=8.0, delta=1e-5, accountant="prv")


def before() -> bool:
    """The check as it was: exact epsilon of what was spent and of the projection."""
    accounting.clear_cache()
    accounting.epsilon(PRIOR, delta=BUDGET.delta)
    return accounting.epsilon(PRIOR + [REQUEST], delta=BUDGET.delta) <= BUDGET.max_epsilon


def after() -> bool:
    accounting._epsilon_cached.cache_clear()  # a new composition, warm RDP curves
    return BUDGET.project_phases(PRIOR, REQUEST).allowed


def main() -> None:
    assert before() == after() is True
    for name, check, number in (("before (exact accountant)", before, 3), ("after (RDP screen)", after, 200)):
        best = min(timeit.repeat(check, number=number, repeat=3)) / number
        print(f"{name}: {best * 1e3:.2f} ms per check")


if __name__ == "__main__":
    main()
