"""Renyi DP of one Poisson-subsampled Gaussian step, at a list of orders, in numpy.

Mironov, Talwar and Zhang 2019 (arXiv:1908.10530, section 3.3) give the step's RDP at order
alpha as log(A_alpha) / (alpha - 1), where A_alpha is

- at integer alpha, the finite sum over i of C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2));
- at fractional alpha, two series, the integrals over (-inf, z0] and [z0, inf) expanded
  binomially. For i > alpha the binomial coefficients alternate in sign.

These are the exact values Opacus' ``compute_rdp`` returns. Here they are computed in one numpy
pass per order list instead of a Python loop per term. That is also how flsuite differs from
dp_accounting's ``RdpAccountant``:

- dp_accounting sums the fractional series' absolute values. That is a looser upper bound, by up
  to 3x here at large epsilon.
- dp_accounting stops after 1,000 terms, and skips an order whose series has not converged by
  then (small sigma, q near 0.1-0.5). Its bound then jumps with sigma: a 1% larger sigma gave a
  larger epsilon.

The exact curve falls with sigma at every order (adding noise is post-processing), so the
epsilon built from it does too. An order whose series has not converged after ``MAX_TERMS``
terms is left out (infinite RDP), which only loosens the bound; so is one that cannot be
computed at all (a sigma whose square underflows). Every log(A_alpha) carries a margin for the
series' truncation and float rounding (``LOG_A_MARGIN``), so no divergence is computed below its
value.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.special import gammaln, log_ndtr, logsumexp

__all__ = ["LOG_A_MARGIN", "MAX_TERMS", "rdp_per_step"]

_log = logging.getLogger(__name__)

#: The fractional series' terms per order before the order is left out. Beyond a few thousand only
#: near q = 0.5 with large sigma, where the terms fall polynomially (86,554 at q = 0.5, sigma = 1e4).
MAX_TERMS = 1 << 18
#: Terms are computed in chunks that double from the first (most orders stop within 30 terms).
_FIRST_CHUNK, _LAST_CHUNK = 32, 4096
#: Opacus' stopping rule: the first term at which both halves' terms are below exp(-30).
_NEGLIGIBLE_LOG_TERM = -30.0
#: Added to every log(A_alpha), so that no divergence is computed below its value:
#: - the series' tail that Opacus' stopping rule leaves out: each half's tail alternates in sign,
#:   so it is below its first omitted term, under exp(-30) = 9.4e-14 (a reviewing helper measured
#:   -9.3e-14 against mpmath);
#: - float rounding of sums near 1, 1e-16 to 1e-14, which at q <= 1e-4 with large sigma is the
#:   whole divergence (a negative order reads as epsilon 0 in dp_accounting's conversion).
#: Elsewhere it moves an epsilon by less than 1e-11.
LOG_A_MARGIN = 3e-13


def rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP at each of ``orders`` (all > 1) of one step; q = 1 is the Gaussian mechanism."""
    alpha = np.asarray(orders, dtype=np.float64)
    sigma = np.float64(sigma)  # numpy's float: a sigma^2 beyond the float range is inf, not OverflowError
    with np.errstate(all="ignore"):  # sigma so small that sigma^2 underflows: NaN, below
        if q == 1.0:
            curve = alpha / (2 * sigma**2)
        else:
            integer = alpha == np.floor(alpha)
            log_a = np.empty_like(alpha)
            log_a[integer] = _log_a_integer(q, sigma, alpha[integer])
            log_a[~integer] = _log_a_fractional(q, sigma, alpha[~integer])
            curve = (log_a + LOG_A_MARGIN) / (alpha - 1)
    return np.where(np.isnan(curve), np.inf, curve)  # a value that cannot be computed bounds nothing


def _log_a_integer(q: float, sigma: float, alpha: np.ndarray) -> np.ndarray:
    if alpha.size == 0:
        return alpha
    i = np.arange(int(alpha.max()) + 1, dtype=np.float64)[None, :]
    a = alpha[:, None]
    terms = (
        gammaln(a + 1) - gammaln(i + 1) - gammaln(np.maximum(a - i, 0) + 1)
        + i * math.log(q) + (a - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    )
    return logsumexp(np.where(i <= a, terms, -np.inf), axis=1)


def _log_a_fractional(q: float, sigma: float, alpha: np.ndarray) -> np.ndarray:
    """log(A_alpha) by Opacus' series and stopping rule, a chunk of terms at a time for every order still running."""
    log_a = np.full(alpha.shape, np.inf)
    running = np.arange(alpha.size)
    sums = np.full((alpha.size, 2), -np.inf)  # the two halves' signed sums, in log space
    signs = np.ones((alpha.size, 2))
    start, size = 0, _FIRST_CHUNK
    while running.size and start < MAX_TERMS:
        a = alpha[running][:, None]
        log_s0, log_s1, sign = _fractional_terms(q, sigma, a, np.arange(start, start + size, dtype=np.float64))
        negligible = np.maximum(log_s0, log_s1) < _NEGLIGIBLE_LOG_TERM
        stopped = negligible.any(axis=1)
        last = np.where(stopped, negligible.argmax(axis=1), size - 1)
        kept = np.arange(size)[None, :] <= last[:, None]  # the stopping term is summed, as in Opacus
        for half, log_s in enumerate((log_s0, log_s1)):
            values = np.concatenate([sums[running, half, None], np.where(kept, log_s, -np.inf)], axis=1)
            weights = np.concatenate([signs[running, half, None], np.where(kept, sign, 0.0)], axis=1)
            sums[running, half], signs[running, half] = logsumexp(values, b=weights, axis=1, return_sign=True)
        done = running[stopped]
        log_a[done] = _positive_log_sum(sums[done], signs[done], q, sigma, alpha[done])
        running = running[~stopped]
        start, size = start + size, min(2 * size, _LAST_CHUNK)
    if running.size:
        _log.info("RDP of q=%g, sigma=%g: orders %s did not converge in %d terms; left out", q, sigma, alpha[running], MAX_TERMS)
    return log_a


def _fractional_terms(q: float, sigma: float, a: np.ndarray, i: np.ndarray):
    """The i-th terms of both halves (log of their magnitudes) and the binomial coefficient's sign."""
    i = i[None, :]
    j = a - i
    log_coef = gammaln(a + 1) - gammaln(i + 1) - gammaln(j + 1)  # log |C(a, i)|: gammaln is log |Gamma|
    sign = np.where((i > a) & (np.floor(i - a) % 2 == 1), -1.0, 1.0)  # floor(i - a) = i - ceil(a) factors < 0
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq, log_half = math.log(q), math.log1p(-q), math.log(0.5)
    scale = math.sqrt(2) * sigma
    log_s0 = log_coef + i * log_q + j * log_1mq + (i * i - i) / (2 * sigma**2) + log_half + _log_erfc((i - z0) / scale)
    log_s1 = log_coef + j * log_q + i * log_1mq + (j * j - j) / (2 * sigma**2) + log_half + _log_erfc((z0 - j) / scale)
    return log_s0, log_s1, sign


def _log_erfc(x: np.ndarray) -> np.ndarray:
    return math.log(2) + log_ndtr(-x * math.sqrt(2))


def _positive_log_sum(sums: np.ndarray, signs: np.ndarray, q: float, sigma: float, alpha: np.ndarray) -> np.ndarray:
    """log(A0 + A1); a half that came out negative is float cancellation, which Opacus refuses: so is the order here."""
    bad = (signs < 0).any(axis=1)
    if bad.any():
        _log.info("RDP of q=%g, sigma=%g: orders %s cancel below float precision; left out", q, sigma, alpha[bad])
    return np.where(bad, np.inf, np.logaddexp(sums[:, 0], sums[:, 1]))
