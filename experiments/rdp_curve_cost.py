"""RDP per-step curves: dp_accounting's RdpAccountant (before) against flsuite's exact numpy
series (``flsuite.privacy.rdp_curves``, after), in one run, alternating.

For each (q, sigma): the cost of one curve at Opacus' 151 orders (best of 5), and the RDP epsilon
of ``steps`` steps from each curve next to Opacus' RDPAccountant. Then a cold sigma search with
``accountant="rdp"`` (the default study's site: q 1/6, 120 steps, target 3) on each curve.
Run: PYTHONPATH=. python -m experiments.rdp_curve_cost
"""

from __future__ import annotations

import functools
import logging
import timeit
from unittest import mock

from flsuite.privacy import accounting
from flsuite.privacy.accounting import RDP_ORDERS, step_event

CASES = [(1 / 6, 1.0, 120), (0.04, 1.5, 2250), (0.162109375, 0.6, 86), (0.162109375, 0.606, 86), (0.2, 0.8, 300), (0.5, 0.6, 20)]


def dp_accounting_curve(q: float, sigma: float, orders: tuple[float, ...] = RDP_ORDERS):
    """The curve as flsuite computed it before: dp_accounting's RdpAccountant, one step (integer
    orders alone, for the internal bounds, were already the numpy sum they are now)."""
    from dp_accounting import rdp

    from flsuite.privacy.rdp_curves import rdp_per_step

    if all(float(order).is_integer() for order in orders):
        return rdp_per_step(q, sigma, orders)
    accountant = rdp.RdpAccountant(list(orders))
    accountant.compose(step_event(q, sigma))
    return accountant._rdp


def opacus_epsilon(q: float, sigma: float, steps: int) -> float:
    from opacus.accountants import RDPAccountant

    theirs = RDPAccountant()
    theirs.history = [(sigma, q, steps)]
    return theirs.get_epsilon(1e-5)


def epsilon_with(curve, q: float, sigma: float, steps: int) -> float:
    from dp_accounting.rdp import rdp_privacy_accountant

    return float(rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, steps * curve(q, sigma, RDP_ORDERS), 1e-5)[0])


def cold_sigma_search(curve) -> tuple[float, float]:
    """Seconds for a cold ``noise_multiplier_for(accountant="rdp")`` with ``curve`` as the per-step RDP, and its sigma."""
    with mock.patch.object(accounting, "_rdp_per_step", functools.lru_cache(maxsize=2048)(curve)):
        accounting.clear_cache()
        start = timeit.default_timer()
        sigma = accounting.noise_multiplier_for(target_epsilon=3.0, delta=1e-5, sample_rate=1 / 6, steps=120, accountant="rdp")
        return timeit.default_timer() - start, sigma


def main() -> None:
    from flsuite.privacy.rdp_curves import rdp_per_step

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting warns per order it drops
    print("| q | sigma | steps | curve: dp_accounting | curve: flsuite | after / before | epsilon: dp_accounting | flsuite | Opacus |")
    print("|---|---|---|---|---|---|---|---|---|")
    for q, sigma, steps in CASES:
        times = {}
        for name, curve in (("before", dp_accounting_curve), ("after", rdp_per_step)):
            times[name] = min(timeit.repeat(functools.partial(curve, q, sigma, RDP_ORDERS), number=1, repeat=5))
        eps = [epsilon_with(curve, q, sigma, steps) for curve in (dp_accounting_curve, rdp_per_step)]
        print(
            f"| {q:.4g} | {sigma:g} | {steps} | {times['before'] * 1e3:.1f} ms | {times['after'] * 1e3:.2f} ms | "
            f"{times['after'] / times['before']:.3f} | {eps[0]:.4f} | {eps[1]:.4f} | {opacus_epsilon(q, sigma, steps):.4f} |"
        )
    for _ in range(2):  # alternating, twice
        for name, curve in (("before", dp_accounting_curve), ("after", rdp_per_step)):
            seconds, sigma = cold_sigma_search(curve)
            print(f"cold sigma search (rdp), {name}: {seconds:.3f} s, sigma {sigma:.4f}")
    accounting.clear_cache()


if __name__ == "__main__":
    main()
