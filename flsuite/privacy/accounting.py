"""Privacy accounting as pure functions of DP events: epsilon, the sigma for a target, delta checks.

A phase is (q, sigma, steps): ``steps`` compositions of the Poisson-subsampled Gaussian
mechanism with rate q and noise multiplier sigma. Phases with different q or sigma compose.
q = 1 is the plain Gaussian mechanism (a site's private evaluation release: ``GAUSSIAN``
events), accounted as dp_accounting's GaussianDpEvent with no sampling.

Accountants (both report an upper bound on the true epsilon, never an estimate below it):

- ``"prv"`` (default): Gopi et al.'s numerical composition of privacy loss random variables,
  built from Microsoft's ``prv_accountant`` package (its mechanism, discretisation and composers;
  flsuite composes in float64 on an FFT-friendly domain: ``_PrvAccountant``, equal to its
  ``PRVAccountant`` to 1e-8), with Opacus' error settings (eps_error 0.01,
  delta_error delta/1000); flsuite reports the upper end of its error interval, as Opacus does,
  when that interval certifies it: upper <= REPORT_TOLERANCE x lower <= 1.05 x the true epsilon.
  Where PRV fails numerically (small sigma), where its interval is too wide for that (tiny
  epsilon: eps_error is absolute), or where it is skipped for cost (RDP bound above
  ``PRV_EPSILON_CEILING``: PRV then needs minutes and gigabytes), flsuite reports dp_accounting's
  PLD accountant instead, with a pessimistic (connect-the-dots) discretisation fine enough for
  that epsilon: within 0.3% of a 100x finer PLD, never below it. Never the looser RDP bound,
  except where PLD itself is more than 1.05x above it (then 1.05 x RDP, still an upper bound).
- ``"rdp"``: Renyi DP at Opacus' order list, each step's curve exact (``rdp_curves``: the series
  Opacus sums, in numpy), converted to epsilon by dp_accounting's ``compute_epsilon``. So it
  equals Opacus' RDPAccountant, and falls as sigma grows. Per-step curves are cached per
  (q, sigma): composing is a sum.

``screening_bound`` is a cheap certified upper bound on what ``epsilon`` reports (budget checks
use it to pass requests far from a cap without running the exact accountant). The sigma search
brackets with integer-order RDP (numpy) and runs the exact accountant only for its last steps.

GDP is refused: its central-limit approximation under-reports epsilon (by up to 63% here).
No torch, no opacus: auditors recompute epsilon from the ledger with this module alone.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Union

from flsuite.errors import ConfigError, PlanError
from flsuite.privacy.events import ACCOUNTANTS, DpEvent

__all__ = [
    "ACCOUNTANTS",
    "PRV_EPSILON_CEILING",
    "RDP_ORDERS",
    "REPORT_TOLERANCE",
    "Phase",
    "check_delta",
    "epsilon",
    "noise_multiplier_for",
    "normalize_phases",
    "rdp_epsilon",
    "screening_bound",
    "step_event",
    "validate_accountant",
    "validate_delta",
]

Phase = tuple[float, float, int]
PhaseLike = Union[DpEvent, Sequence[float]]

#: Opacus' RDPAccountant.DEFAULT_ALPHAS: the same orders give the same epsilon as Opacus.
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

#: Integer orders only, for internal bounds that need not equal Opacus' (PRV's domain size, the
#: start of the sigma search): each is a finite sum (fractional orders need a series, several
#: times the cost); fewer orders only loosen an RDP bound, never tighten it.
_COARSE_ORDERS: tuple[float, ...] = tuple(float(order) for order in (*range(2, 64), 80, 128, 256))

#: Opacus' integer orders: RDP minimised over fewer orders is never below RDP over all of them,
#: so it screens budget checks as soundly, from numpy alone (no dp_accounting import, no
#: fractional-order series). The margin covers float rounding against the reported sums.
_SCREEN_ORDERS: tuple[float, ...] = tuple(order for order in RDP_ORDERS if float(order).is_integer())
_SCREEN_MARGIN = 1.0 + 1e-9

#: Above this RDP epsilon the PRV accountant is not run (it would take minutes); the PLD
#: accountant is reported. Any sane cap is far below it.
PRV_EPSILON_CEILING = 64.0

#: A reported epsilon is at most this factor above the true epsilon: PRV's upper end is
#: reported only when it is within this factor of PRV's lower end.
REPORT_TOLERANCE = 1.05

#: The coarsest PLD discretisation (at epsilon >= 1); finer at smaller epsilon, down to the finest.
_PLD_INTERVAL = 1e-3
_PLD_FINEST_INTERVAL = 1e-6

_PRV_EPS_ERROR = 0.01
_SIGMA_MAX = 1.0e4
_log = logging.getLogger(__name__)


def validate_accountant(accountant: str) -> str:
    """Return ``accountant`` if flsuite reports it; refuse GDP and unknown names with the reason."""
    if accountant == "gdp":
        raise ConfigError(
            "privacy accountant 'gdp' is refused: the Gaussian DP (central limit) approximation "
            "under-reports epsilon, by up to 63% for the settings used here, so it cannot back a "
            "guarantee. Use accountant='prv' (tight, default) or 'rdp' (looser, Opacus' classic)."
        )
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"privacy accountant {accountant!r} is unknown: use one of {list(ACCOUNTANTS)}")
    return accountant


def validate_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise ConfigError(f"privacy delta must be a number in (0, 1), got {delta!r}; 1e-5 is usual")
    return float(delta)


def _phase(item: PhaseLike) -> Phase:
    if isinstance(item, DpEvent):
        return item.phase
    try:
        q, sigma, steps = item
    except (TypeError, ValueError):
        raise ConfigError(f"a privacy phase is (sample_rate, noise_multiplier, steps), got {item!r}") from None
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
        raise ConfigError(f"sample rate q must be in (0, 1], got {q!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0.0 or math.isinf(sigma):
        raise ConfigError(f"noise multiplier sigma must be a finite number > 0, got {sigma!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    return (float(q), float(sigma), steps)


def normalize_phases(phases: Iterable[PhaseLike]) -> tuple[Phase, ...]:
    """Validate, drop zero-step phases and merge equal (q, sigma): composition ignores order."""
    merged: dict[tuple[float, float], int] = {}
    for item in phases:
        q, sigma, steps = _phase(item)
        if steps:
            merged[(q, sigma)] = merged.get((q, sigma), 0) + steps
    return tuple(sorted((q, sigma, steps) for (q, sigma), steps in merged.items()))


def epsilon(phases: Iterable[PhaseLike], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon at ``delta`` after composing every phase (tuples (q, sigma, steps) or DpEvents)."""
    validate_accountant(accountant)
    delta = validate_delta(delta)
    normalized = normalize_phases(phases)
    if not normalized:
        return 0.0
    return _epsilon_cached(normalized, delta, accountant)


def clear_cache() -> None:
    """Forget the epsilons and RDP curves computed so far in this process (benchmarks time cold accounting)."""
    _epsilon_cached.cache_clear()
    _rdp_per_step.cache_clear()
    _prv_accountant.cache_clear()


def rdp_epsilon(phases: Iterable[PhaseLike], *, delta: float) -> float:
    """The RDP epsilon (``accountant="rdp"``), from cached per-step curves: cheap to repeat."""
    delta = validate_delta(delta)
    normalized = normalize_phases(phases)
    return _rdp_epsilon(normalized, delta) if normalized else 0.0


def screening_bound(phases: Iterable[PhaseLike], *, delta: float, accountant: str = "prv") -> float:
    """A cheap number never below ``epsilon(phases, delta=delta, accountant=accountant)``.

    It is RDP minimised over Opacus' integer orders only (never below RDP over all its orders,
    which is what "rdp" reports), a hair wider for rounding. For "prv": the true epsilon is at
    most the RDP bound and the reported one at most REPORT_TOLERANCE x the true one (and clamped
    to REPORT_TOLERANCE x RDP), so REPORT_TOLERANCE x that bound bounds the report without
    running PRV or PLD.
    """
    validate_accountant(accountant)
    delta = validate_delta(delta)
    normalized = normalize_phases(phases)
    if not normalized:
        return 0.0
    bound = _rdp_epsilon(normalized, delta, _SCREEN_ORDERS) * _SCREEN_MARGIN
    return bound if accountant == "rdp" else REPORT_TOLERANCE * bound


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(phases: tuple[Phase, ...], delta: float, accountant: str) -> float:
    if accountant == "rdp":
        return _rdp_epsilon(phases, delta)
    coarse_bound = _rdp_epsilon(phases, delta, _COARSE_ORDERS)  # >= the full RDP bound
    if coarse_bound > PRV_EPSILON_CEILING and (rdp_bound := _rdp_epsilon(phases, delta)) > PRV_EPSILON_CEILING:
        reason = f"PRV skipped: RDP bound {rdp_bound:.4g} > {PRV_EPSILON_CEILING:g} would cost minutes"
    else:
        try:
            lower, upper = _prv_bounds(phases, delta)
        except (ArithmeticError, RuntimeError, ValueError, MemoryError) as error:
            reason = f"PRV accountant failed ({error})"
        else:
            if upper <= REPORT_TOLERANCE * lower:
                return upper
            reason = f"PRV interval [{lower:.4g}, {upper:.4g}] is wider than {REPORT_TOLERANCE}x"
    rdp_bound = _rdp_epsilon(phases, delta)
    try:
        pld_epsilon, interval = _pld_epsilon(phases, delta)
    except (ArithmeticError, ValueError, MemoryError) as error:  # a sigma so small that PLD's grid overflows
        _log.info("%s for %s; PLD failed too (%s): reporting the RDP bound %.6g", reason, phases, error, rdp_bound)
        return rdp_bound
    if pld_epsilon > REPORT_TOLERANCE * rdp_bound:  # PLD's discretisation is loose here
        _log.info("%s for %s; PLD %.6g is above %gx RDP: reporting that", reason, phases, pld_epsilon, REPORT_TOLERANCE)
        return REPORT_TOLERANCE * rdp_bound
    _log.info("%s for %s; reporting dp_accounting's PLD %.6g (interval %g)", reason, phases, pld_epsilon, interval)
    return pld_epsilon


@functools.lru_cache(maxsize=2048)
def _rdp_per_step(q: float, sigma: float, orders: tuple[float, ...] = RDP_ORDERS):
    """RDP at ``orders`` of one step of the Poisson-subsampled Gaussian (q = 1: the Gaussian; read-only array)."""
    from flsuite.privacy.rdp_curves import rdp_per_step  # numpy and scipy: imported when first needed

    curve = rdp_per_step(q, sigma, orders)
    curve.setflags(write=False)
    return curve


def step_event(q: float, sigma: float):
    """One step as dp_accounting's event: the Gaussian mechanism, Poisson-subsampled unless q = 1
    (the one rule: the accountants here and the auditor's PLD, ``ledger_audit``, compose this)."""
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(sigma)
    return gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def _rdp_epsilon(phases: tuple[Phase, ...], delta: float, orders: tuple[float, ...] = RDP_ORDERS) -> float:
    """RDP composes by adding curves, in the order the phases come (as Opacus' RDPAccountant does)."""
    import numpy as np

    total = np.zeros(len(orders), dtype=np.float64)
    for q, sigma, steps in phases:
        total += steps * _rdp_per_step(q, sigma, orders)
    if orders == RDP_ORDERS:  # the reported RDP epsilon: dp_accounting's own conversion
        from dp_accounting.rdp import rdp_privacy_accountant

        return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])
    return _rdp_to_epsilon(orders, total, delta)


def _rdp_to_epsilon(orders: Sequence[float], curve: Sequence[float], delta: float) -> float:
    """dp_accounting's ``rdp.compute_epsilon`` (Canonne, Kamath and Steinke 2020, proposition 12),
    line for line, for the internal integer-order bounds: they then need no dp_accounting import
    (3.5 s of a loaded machine's study, for scipy.stats and its PLD modules)."""
    best = math.inf
    for order, value in zip(orders, curve):
        if value < 0:
            bound = 0.0
        elif delta**2 + math.expm1(-value) > 0:
            bound = 0.0
        elif order > 1.01:
            bound = value + math.log1p(-1 / order) - math.log(delta * order) / (order - 1)
        else:
            bound = math.inf
        best = min(best, bound)
    return max(0.0, float(best))


def _pld_epsilon(phases: tuple[Phase, ...], delta: float) -> tuple[float, float]:
    """dp_accounting's PLD epsilon (pessimistic, connect-the-dots) and the interval it used.

    At 1e-3 it is within 0.05% of a 100x finer PLD for epsilon >= 0.4; its error is about
    additive, so below epsilon 1 the interval shrinks with epsilon (1e-3 x epsilon's decade).
    Pessimistic grids that divide each other only grow coarser upwards: never below a finer one.
    """
    interval = _PLD_INTERVAL
    value = _pld_at(phases, delta, interval)
    if value < 1.0:
        decade = 10.0 ** math.floor(math.log10(value)) if value > 0 else 0.0
        finer = max(_PLD_FINEST_INTERVAL, interval * decade)
        if finer < interval:
            interval = finer
            value = _pld_at(phases, delta, interval)
    return value, interval


def _pld_at(phases: tuple[Phase, ...], delta: float, interval: float) -> float:
    import dp_accounting
    from dp_accounting import pld

    event = dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(step_event(q, sigma), steps) for q, sigma, steps in phases])
    accountant = pld.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(event)
    value = float(accountant.get_epsilon(delta))
    if not math.isfinite(value):
        raise ArithmeticError(f"PLD epsilon is {value} for {phases}")
    return value


def _prv_bounds(phases: tuple[Phase, ...], delta: float) -> tuple[float, float]:
    """PRV's (lower, upper) bounds on the true epsilon.

    The PRV accountant is built for each phase's step count rounded up to a power of two and
    kept (``_prv_accountant``): a study's rounds ask for epsilon at 1, 2, ... K rounds' steps,
    and one built accountant answers every count up to its maximum with a cheap composition.
    Its grid is chosen for the maximum (a finer mesh than the count needs), so Gopi et al.'s
    error bounds hold for every smaller count: the upper end stays an upper bound. The value
    is a pure function of (phases, delta): the same wherever and in whatever order it is asked.
    """
    import numpy as np

    steps = [s for _, _, s in phases]
    accountant = _prv_accountant(tuple((q, sigma) for q, sigma, _ in phases), tuple(_pow2_at_least(s) for s in steps), delta)
    with np.errstate(all="ignore"):
        lower, _, upper = accountant.compute_epsilon(delta, steps)
    if not (math.isfinite(upper) and math.isfinite(lower)):
        raise ArithmeticError(f"PRV epsilon bounds are [{lower}, {upper}]")
    return float(lower), float(upper)


def _pow2_at_least(steps: int) -> int:
    return 1 << max(0, steps - 1).bit_length()


class _PrvAccountant:
    """prv_accountant's PRVAccountant (same domain, mesh, discretisation and error bounds) at
    a fraction of its cost:

    - the discretised PRVs are composed in float64 instead of long double (numpy's long double
      FFT is scalar code, 20x slower; float64 rounding adds about 1e-12 to a tail mass against a
      delta error of delta/1000), and each cell's mass is the difference of the CDF at shared
      cell edges (one CDF evaluation per edge instead of two);
    - every mechanism's spectrum is computed once, and a composition of several mechanisms is
      one inverse FFT of the product of their powers: Gopi et al.'s circular convolution on the
      domain sized for the whole composition. prv_accountant's ``Heterogeneous`` composes each
      mechanism so, then convolves the results linearly and keeps the domain's window: the two
      differ only in what becomes of mass beyond the domain (dropped there, wrapped around
      here, as the Fourier composer already wraps each mechanism's own), which the domain's
      size keeps within the delta error;
    - epsilon is read off the composed PRV in float64 (``_epsilon_bounds``) rather than on a
      long double grid: the same formula, about 1e-10 apart on delta against delta/1000.
    """

    def __init__(self, mechanisms: tuple[tuple[float, float], ...], max_steps: tuple[int, ...], delta: float) -> None:
        import numpy as np
        from prv_accountant.domain import Domain
        from scipy.fft import rfft

        self.max_steps = max_steps
        self.eps_error, self.delta_error = _PRV_EPS_ERROR, delta / 1000
        # Theorem 5.5 of Gopi et al. (arXiv 2106.02848), as PRVAccountant sets it.
        mesh = float(self.eps_error / np.sqrt(sum(max_steps) / 2 * np.log(12 / self.delta_error)))
        self.domain = Domain.create_aligned(*_fft_friendly(_prv_domain(mechanisms, max_steps, self.delta_error), mesh), mesh)
        if len(self.domain) % 2:
            raise ValueError("the PRV domain must have an even number of cells")
        discrete = [_discretise(_mechanism(q, sigma), self.domain) for q, sigma in mechanisms]
        self._spectra = [rfft(prv.pmf) for prv in discrete]
        self._shifts = [prv.domain.shifts() - self.domain.shifts() for prv in discrete]
        self._log_pmc_inf = [prv.log_pmc_inf for prv in discrete]

    def compute_epsilon(self, delta: float, steps: Sequence[int]) -> tuple[float, float, float]:
        """(lower, estimate, upper) for ``steps`` compositions of each mechanism (each <= its max)."""
        if len(steps) != len(self.max_steps) or any(n > cap for n, cap in zip(steps, self.max_steps)):
            raise ValueError(f"{list(steps)} compositions exceed this accountant's maximum {list(self.max_steps)}")
        return _epsilon_bounds(*self._composition(steps), delta, self.delta_error, self.eps_error)

    def _composition(self, steps: Sequence[int]):
        """(pmf, t_min, dt, log of the finite mass) of the composition, on this accountant's grid.

        prv_accountant's Fourier composer, for every mechanism at once: the n-fold circular
        convolution of pmfs whose origin sits at index N/2 - 1 lands n - 1 cells (plus N/2 when n
        is even) to the left of that origin, so it is rolled back; each composition also adds its
        mechanism's mean-correcting shift once per step.
        """
        import numpy as np
        from scipy.fft import irfft

        total = sum(steps)
        spectrum = None
        for factor, n in zip(self._spectra, steps):
            if n:
                power = _power(factor, n)
                spectrum = power if spectrum is None else np.multiply(spectrum, power, out=spectrum)
        if spectrum is None:
            raise ValueError("a composition of no steps has no PRV")
        size = len(self.domain)
        pmf = np.roll(irfft(spectrum, size), total - 1 + (size // 2 if total % 2 == 0 else 0))
        shift = sum(s * n for s, n in zip(self._shifts, steps))
        log_finite = sum(log * n for log, n in zip(self._log_pmc_inf, steps))
        return pmf, float(self.domain.t_min()) + shift, float(self.domain.dt()), log_finite


def _power(spectrum, n: int):
    """``spectrum ** n`` by repeated squaring, in place on one copy: numpy's ``**`` does so for
    integer powers below 100 only and calls libm's complex ``cpow`` on every cell above, 6x
    slower on a study's step counts. The two agree to about 1e-13 on a spectrum (|z| <= 1)."""
    import numpy as np

    if n < 1:
        raise ValueError(f"a composition's power must be at least 1, got {n}")
    base, result = spectrum.copy(), None
    while True:
        if n & 1:
            result = base.copy() if result is None else np.multiply(result, base, out=result)
        n >>= 1
        if not n:
            return result
        np.multiply(base, base, out=base)


def _epsilon_bounds(pmf, t_min: float, dt: float, log_finite: float, delta: float, delta_error: float,
                    eps_error: float) -> tuple[float, float, float]:
    """prv_accountant's ``DiscretePrivacyRandomVariable.compute_epsilon`` on a float64 grid:
    delta(eps) = sum over t > eps of p(t) (1 - e^(eps - t)) from two reverse cumulative sums,
    then the smallest grid point where it falls to the target; (lower, estimate, upper) with
    the delta and epsilon errors of Gopi et al. The cumulative sums' float64 rounding (about
    1e-16 per cell, 1e-10 over a million cells) is far inside delta_error = delta / 1000."""
    import numpy as np

    delta_inf = -math.expm1(log_finite)
    delta_fin = (delta - delta_inf) / (1 - delta_inf)
    if delta_fin <= 0:
        return math.inf, math.inf, math.inf
    if np.finfo(np.float64).eps * len(pmf) > delta_fin - delta_error:
        raise ValueError("floating point errors would dominate for so small a delta on this grid")
    growth = np.exp(t_min + dt * np.arange(len(pmf), dtype=np.float64))  # e^t (one exp: e^-t is its reciprocal)
    d1 = np.cumsum(pmf[::-1])[::-1]
    d2 = np.cumsum((pmf / growth)[::-1])[::-1]
    ndelta = growth * d2 - d1

    def find_epsilon(target: float) -> float:
        i = int(np.searchsorted(ndelta, -target, side="left"))
        if i <= 0 or i >= len(pmf):
            raise RuntimeError("cannot compute epsilon on this grid")
        return float(np.log((d1[i] - target) / d2[i]))

    return (find_epsilon(delta_fin + delta_error) - eps_error, find_epsilon(delta_fin),
            find_epsilon(delta_fin - delta_error) + eps_error)


def _mechanism(q: float, sigma: float):
    """prv_accountant's PoissonSubsampledGaussianMechanism with a faster CDF, equal bit for bit:
    the library evaluates its long double log term twice (both branches of a where are the same)
    and over the whole grid, where below log(1 - q) it is NaN, which the x87 unit computes with
    slow microcode before the where throws it away. This one evaluates it once, and as log(1)
    below log(1 - q); every value it keeps is the same expression on the same numbers."""
    import numpy as np
    from prv_accountant.privacy_random_variables import poisson_subsampled_gaussian_mechanism as psgm

    class Mechanism(psgm.PoissonSubsampledGaussianMechanism):
        def cdf(self, t):
            sigma, p, root2 = self.sigma, self.p, psgm.M_SQRT2
            if np.ndim(t) == 0:  # quad's scalar calls (the truncated mean): no where()s, same numbers
                return self._scalar_cdf(t)
            kept = t > psgm.log(1 - p)
            z = psgm.log(np.where(kept, (p - 1) / p + psgm.exp(t) / p, 1))
            return np.where(kept, (
                (1.0 / 2.0) * p * (-psgm.erfc(np.double((1.0 / 4.0) * root2 * (2 * psgm.pow(sigma, 2) * z - 1) / sigma))) -
                1.0 / 2.0 * (p - 1) * (-psgm.erfc(np.double((1.0 / 4.0) * root2 * (2 * psgm.pow(sigma, 2) * z + 1) / sigma))) + 1
            ), 0.0)

        def _scalar_cdf(self, t):
            sigma, p, root2 = self.sigma, self.p, psgm.M_SQRT2
            if "_log_1_minus_p" not in self.__dict__:
                self._log_1_minus_p = psgm.log(1 - p)
            if not t > self._log_1_minus_p:
                return np.longdouble(0.0)
            inner = (p - 1) / p + psgm.exp(t) / p
            z = np.log(inner) if inner > 0 else (-np.inf if inner == 0 else np.nan)
            return (
                (1.0 / 2.0) * p * (-psgm.erfc(np.double((1.0 / 4.0) * root2 * (2 * psgm.pow(sigma, 2) * z - 1) / sigma))) -
                1.0 / 2.0 * (p - 1) * (-psgm.erfc(np.double((1.0 / 4.0) * root2 * (2 * psgm.pow(sigma, 2) * z + 1) / sigma))) + 1
            )

    return Mechanism(sampling_probability=q, noise_multiplier=sigma)


def _fft_friendly(half_width: float, mesh: float) -> tuple[float, float]:
    """The domain [-L', L'] with L' >= ``half_width`` whose grid (2k + 2 points aligned on the
    origin, k = ceil(L'/mesh), as Domain.create_aligned makes it) has a length the FFT handles
    fast (no large prime factor: a 93284-point grid, 4 x the prime 23321, took 20x longer). A
    wider domain only adds cells of negligible mass: PRV's error bound needs L' >= the safe size."""
    from scipy.fft import next_fast_len

    cells = math.ceil(half_width / mesh)
    while (size := next_fast_len(2 * cells + 2, real=True)) % 2:
        cells = (size - 1) // 2
    cells = (size - 2) // 2
    wider = (cells - 0.5) * mesh  # create_aligned rounds up to a multiple of the mesh: k cells
    return -wider, wider


def _discretise(prv, domain):
    """prv_accountant's CellCentred discretisation of ``prv`` truncated to ``domain``, in float64."""
    import numpy as np
    from prv_accountant.discrete_privacy_random_variable import DiscretePrivacyRandomVariable
    from prv_accountant.privacy_random_variables import PrivacyRandomVariableTruncated

    truncated = PrivacyRandomVariableTruncated(prv, domain.t_min(), domain.t_max())
    centres, width = domain.ts(), domain.dt()
    edges = np.clip(np.append(centres - width / 2.0, centres[-1] + width / 2.0), truncated.t_min, truncated.t_max)
    mass = np.diff(prv.cdf(edges)) / truncated.remaining_mass
    shift = truncated.mean() - np.dot(centres, mass)
    if not abs(shift) < width / 2:
        raise RuntimeError("Discrete mean differs from continuous mean significantly.")
    return DiscretePrivacyRandomVariable(
        np.asarray(mass, dtype=np.float64), domain.shift_right(float(shift)), log_pmc_inf=float(np.log(1 - prv.pm_inf))
    )


@functools.lru_cache(maxsize=64)
def _prv_accountant(mechanisms: tuple[tuple[float, float], ...], max_steps: tuple[int, ...], delta: float) -> _PrvAccountant:
    """A PRV accountant for these (q, sigma) mechanisms, valid up to ``max_steps`` compositions each."""
    import numpy as np

    with np.errstate(all="ignore"):
        return _PrvAccountant(mechanisms, max_steps, delta)


def _prv_domain(mechanisms: tuple[tuple[float, float], ...], max_steps: tuple[int, ...], delta_error: float) -> float:
    """Half the width of PRV's privacy-loss domain, by prv_accountant's own rule (Gopi et al.,
    remark 5.6: the RDP epsilon of the whole composition at delta_error/4 and of each single
    step at delta_error/(8 x total), plus 3), with the RDP bound from dp_accounting's cached
    integer-order curves instead of prv_accountant's pure-Python RDP, which took half of each
    accountant's construction. Integer orders only loosen the bound: the domain is never smaller.
    """
    total = sum(max_steps)
    phases = tuple((q, sigma, n) for (q, sigma), n in zip(mechanisms, max_steps))
    domain = _rdp_epsilon(phases, delta_error / 4, _COARSE_ORDERS)
    for q, sigma in mechanisms:
        domain = max(domain, _rdp_epsilon(((q, sigma, 1),), delta_error / 8 / total, _COARSE_ORDERS))
    return max(domain, _PRV_EPS_ERROR) + 3


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_phases: Iterable[PhaseLike] = (),
    accountant: str = "prv",
    tolerance: float = 0.01,
) -> float:
    """The smallest sigma (within ``tolerance`` of the target, relative) such that
    epsilon(prior + (sample_rate, sigma, steps)) <= target_epsilon.

    Raises PlanError when the prior phases alone already reach the target, or when even
    sigma = 1e4 cannot fit.
    """
    validate_accountant(accountant)
    delta = validate_delta(delta)
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) or not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be a number > 0, got {target_epsilon!r}")
    if not 0.0 < tolerance < 0.5:
        raise ConfigError(f"tolerance must be in (0, 0.5), got {tolerance!r}")
    prior = normalize_phases(prior_phases)
    _phase((sample_rate, 1.0, steps))  # validates q and steps
    if steps == 0:
        raise ConfigError("steps must be >= 1 to choose a noise multiplier")
    spent = epsilon(prior, delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise PlanError(
            f"epsilon already spent ({spent:.4f}) reaches the target {target_epsilon}: "
            "no noise multiplier can fit; raise the target or use other data"
        )

    def spend(sigma: float, which: str) -> float:
        return epsilon(prior + ((sample_rate, sigma, steps),), delta=delta, accountant=which)

    # Bracket with RDP (cheap, and in practice never below PRV), then refine with PRV.
    def coarse_rdp_spend(sigma: float) -> float:  # an upper bound on RDP's spend, cheap at a new sigma
        return _rdp_epsilon(normalize_phases(prior + ((sample_rate, sigma, steps),)), delta, _COARSE_ORDERS)

    rdp_spend = functools.partial(spend, which="rdp") if accountant == "rdp" else coarse_rdp_spend
    prv_spend = functools.partial(spend, which="prv")
    prv_lo = False  # whether PRV itself has put lo above the target
    if accountant == "rdp" or rdp_spend(_SIGMA_MAX) <= target_epsilon:
        # RDP's own answer needs a tight bracket; as a start for PRV a 5% bracket does (each
        # RDP evaluation at a new sigma costs a per-step curve, the PRV refinement corrects it).
        lo, hi = _bracket(rdp_spend, target_epsilon, relative_width=1e-3 if accountant == "rdp" else 0.05)
        if accountant == "rdp":
            return hi
        lo, hi, prv_lo = _model_step(prv_spend, rdp_spend, lo, hi, target_epsilon, tolerance)
        if prv_lo is None:
            return hi
    else:  # RDP is too loose for the prior phases: search with PRV alone.
        lo, hi = 1e-2, _SIGMA_MAX
    while prv_spend(hi) > target_epsilon:
        if hi >= _SIGMA_MAX:
            raise PlanError(f"even noise multiplier {_SIGMA_MAX:g} cannot keep epsilon <= {target_epsilon}")
        lo, hi, prv_lo = hi, min(hi * 1.5, _SIGMA_MAX), True
    if not prv_lo:
        lo = min(lo, hi * 0.85)
    while prv_spend(lo) <= target_epsilon:
        if lo < 1e-3:
            return lo
        hi, lo = lo, lo * 0.7
    return _refine(prv_spend, lo, hi, target_epsilon, tolerance)


def _model_step(prv_spend, rdp_spend, lo: float, hi: float, target: float, tolerance: float):
    """One PRV evaluation at RDP's sigma (``hi``), then one where RDP, scaled by the PRV/RDP
    ratio seen there (it varies slowly with sigma), puts PRV just inside the tolerance: most
    searches end after these two exact evaluations. Returns (lo, hi, prv_lo): prv_lo None when
    ``hi`` is the answer (PRV at hi within the tolerance, at or below the target), True when
    PRV puts ``lo`` above the target, False when ``lo`` is still RDP's guess."""
    spent_hi = prv_spend(hi)
    if spent_hi > target:  # PRV above RDP: the generic search takes over
        return lo, hi, False
    if spent_hi >= (1 - tolerance) * target:
        return lo, hi, None
    if spent_hi <= 0:  # no ratio to scale by
        return lo, hi, False
    aim = target * (1 - tolerance / 2) * rdp_spend(hi) / spent_hi  # RDP's value where PRV would be at the aim
    guess_lo = hi
    while rdp_spend(guess_lo) <= aim:
        guess_lo *= 0.8
        if guess_lo < 1e-3:
            return lo, hi, False
    guess = _refine(rdp_spend, guess_lo, hi, aim, tolerance / 10)
    spent = prv_spend(guess)
    if spent > target:
        return guess, hi, True
    if spent >= (1 - tolerance) * target:
        return lo, guess, None
    return lo, guess, False


def _bracket(spend, target: float, *, relative_width: float) -> tuple[float, float]:
    """Geometric bisection to sigma in [lo, hi] with spend(lo) > target >= spend(hi), hi - lo <= width x hi."""
    lo, hi = 1e-2, 1.0
    while spend(hi) > target:
        lo, hi = hi, min(hi * 4, _SIGMA_MAX)
        if lo >= _SIGMA_MAX:
            raise PlanError(f"even noise multiplier {_SIGMA_MAX:g} cannot keep epsilon <= {target}")
    while hi - lo > relative_width * hi:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if spend(mid) <= target else (mid, hi)
    return lo, hi


def _refine(spend, lo: float, hi: float, target: float, tolerance: float) -> float:
    """Illinois false position on sigma: keeps ``hi`` feasible (spend(hi) <= target) and
    stops when spend(hi) is within tolerance of the target or the bracket is tiny."""
    f_lo, f_hi = spend(lo) - target, spend(hi) - target
    w_lo, w_hi = f_lo, f_hi  # Illinois weights: halved when one end is kept twice in a row
    side = 0
    for _ in range(40):
        if -f_hi <= tolerance * target or hi - lo <= 1e-4 * hi:
            break
        mid = hi - w_hi * (hi - lo) / (w_hi - w_lo)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        f_mid = spend(mid) - target
        if f_mid <= 0:
            hi, f_hi, w_hi = mid, f_mid, f_mid
            if side == -1:
                w_lo /= 2
            side = -1
        else:
            lo, f_lo, w_lo = mid, f_mid, f_mid
            if side == 1:
                w_hi /= 2
            side = 1
    return hi


def check_delta(delta: float, records: int, *, site: str | None = None) -> float:
    """Enforce delta <= 1/N: a larger delta lets a mechanism publish one record outright
    with probability delta and still claim (epsilon, delta)-DP."""
    delta = validate_delta(delta)
    if isinstance(records, bool) or not isinstance(records, int) or records < 1:
        raise ConfigError(f"record count must be an integer >= 1, got {records!r}")
    if delta > 1.0 / records:
        where = f"site {site!r} has" if site else "the data has"
        raise ConfigError(
            f"privacy delta {delta:g} is above 1/N = {1.0 / records:.3g} ({where} {records} records): "
            "a delta that large allows leaking a whole record with probability delta. "
            f"Set privacy.delta <= {1.0 / records:.3g} (1e-5 is usual)."
        )
    return delta
