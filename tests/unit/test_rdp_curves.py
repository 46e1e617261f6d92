"""The per-step RDP curve: exact against high-precision integration, equal to Opacus, never above
dp_accounting's looser sum, and falling with sigma where dp_accounting's curve does not."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from flsuite.privacy import epsilon, rdp_curves
from flsuite.privacy.accounting import RDP_ORDERS
from flsuite.privacy.rdp_curves import rdp_per_step

# log(A_alpha) / (alpha - 1) by mpmath's quadrature of E_{z ~ N(0, sigma^2)}[(1 - q + q exp((2z - 1) / (2 sigma^2)))^alpha]
# at 40 digits (mpmath 1.3.0): the step's true RDP, independent of any series.
EXACT = {
    (0.162109375, 0.6, 1.7): 0.207500033288328,
    (0.162109375, 0.606, 1.7): 0.198982314320016,
    (0.3, 0.9, 1.5): 0.123881237718457,
    (0.04, 1.5, 3.9): 0.00183320219958386,
    (0.5, 0.6, 10.9): 14.375726841607,
    (0.01, 1.0, 7.8): 0.000847566138562662,
    (0.25, 0.5, 1.1): 0.283828038138011,
    (0.2, 3.0, 2.0): 0.00468974866736476,
}


@pytest.mark.parametrize(("q", "sigma", "order"), sorted(EXACT))
def test_each_order_is_the_true_renyi_divergence(q, sigma, order):
    assert rdp_per_step(q, sigma, (order,))[0] == pytest.approx(EXACT[(q, sigma, order)], rel=1e-10)


CURVES = [(0.04, 1.5), (0.162109375, 0.606), (0.3, 0.9), (0.5, 0.6), (0.005, 8.0), (0.9, 1.0), (0.2, 30.0)]


@pytest.mark.parametrize(("q", "sigma"), CURVES)
def test_the_curve_equals_opacus_compute_rdp(q, sigma):
    from opacus.accountants.analysis.rdp import compute_rdp

    theirs = compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(RDP_ORDERS))
    assert np.allclose(rdp_per_step(q, sigma, RDP_ORDERS), theirs, rtol=1e-8, atol=5e-12)  # float sums near 1, our margin


@pytest.mark.parametrize(("q", "sigma"), CURVES)
def test_the_curve_is_never_above_dp_accounting_s(q, sigma):
    """dp_accounting sums the fractional series' absolute values and drops orders after 1,000
    terms: an upper bound on the same divergence, so ours may only be lower (or equal)."""
    from dp_accounting import rdp

    from flsuite.privacy.accounting import step_event

    theirs = rdp.RdpAccountant(list(RDP_ORDERS))
    logging.getLogger("absl").setLevel(logging.ERROR)
    theirs.compose(step_event(q, sigma))
    ours = rdp_per_step(q, sigma, RDP_ORDERS)
    assert np.all(ours <= theirs._rdp * (1 + 1e-10) + 5e-12)  # integer orders: the same sum, plus our margin (LOG_A_MARGIN)
    assert np.all(np.isfinite(ours))


def test_where_dp_accounting_drops_an_order_epsilon_still_falls_with_sigma():
    """Hypothesis found it: dp_accounting's series for order 1.7 converges at sigma 0.6 and not
    at 0.606, so its RDP epsilon rose (33.0649 -> 33.0682) when the noise grew by 1%."""
    phases = [(0.162109375, 0.6, 86)]
    more_noise = [(0.162109375, 0.606, 86)]
    assert epsilon(more_noise, delta=1e-5, accountant="rdp") < epsilon(phases, delta=1e-5, accountant="rdp")
    assert epsilon(phases, delta=1e-5, accountant="rdp") == pytest.approx(32.6467, abs=1e-4)  # Opacus' RDPAccountant


def test_an_order_that_does_not_converge_is_left_out_not_underestimated(monkeypatch, caplog):
    """q = 0.5 with large sigma: the fractional terms fall polynomially. A series cut short would
    under-report; the order is dropped (infinite RDP) and the rest of the curve stands."""
    full = rdp_per_step(0.5, 300.0, RDP_ORDERS)
    monkeypatch.setattr(rdp_curves, "MAX_TERMS", 64)
    with caplog.at_level(logging.INFO, logger="flsuite.privacy.rdp_curves"):
        cut = rdp_per_step(0.5, 300.0, RDP_ORDERS)
    dropped = ~np.isfinite(cut)
    assert dropped.any() and not dropped.all()
    assert np.array_equal(cut[~dropped], full[~dropped])
    assert all(not float(order).is_integer() for order in np.asarray(RDP_ORDERS)[dropped])
    assert "did not converge" in caplog.text


def test_the_plain_gaussian_is_alpha_over_two_sigma_squared():
    assert np.array_equal(rdp_per_step(1.0, 2.0, (1.5, 4.0)), np.array([1.5 / 8, 4.0 / 8]))


@pytest.mark.parametrize("q", [1e-4, 1e-6, 1e-9])
@pytest.mark.parametrize("sigma", [0.5, 100.0, 1e4])
def test_a_tiny_divergence_is_never_computed_below_zero(q, sigma):
    """Found in review: at q <= 1e-4 with large sigma the float rounding of a sum near 1 is the whole
    divergence, some orders came out negative, and dp_accounting's conversion reads a negative order
    as epsilon 0. The curve must stay at or above the truth, so at or above zero."""
    assert np.all(rdp_per_step(q, sigma, RDP_ORDERS) > 0)


def test_where_rounding_made_epsilon_zero_it_is_opacus_value_again():
    from opacus.accountants import RDPAccountant

    phase = (1e-4, 1e4, 1000)
    theirs = RDPAccountant()
    theirs.history = [(phase[1], phase[0], phase[2])]
    assert epsilon([phase], delta=1e-10, accountant="rdp") == pytest.approx(theirs.get_epsilon(1e-10), rel=1e-6)
    assert epsilon([phase], delta=1e-10) > 0  # PLD (1.08e-5), no longer capped at 1.05 x an RDP bound of 0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_sigma_whose_square_underflows_has_no_finite_epsilon(accountant):
    """sigma 1e-170 (a tampered ledger): sigma^2 is 0, the curve was NaN and the RDP epsilon came out 0."""
    assert epsilon([(0.3, 1e-170, 10)], delta=1e-5, accountant=accountant) == float("inf")


def test_a_sigma_beyond_the_float_range_squared_is_no_crash():
    """Found in review: Python's sigma**2 raised OverflowError for sigma > 1.3e154 (a tampered ledger)."""
    assert epsilon([(0.3, 1e200, 10)], delta=1e-5, accountant="rdp") == 0.0  # a divergence of 1e-400: (0, delta)-DP
    assert epsilon([(0.3, 1e200, 10)], delta=1e-5) == 0.0
