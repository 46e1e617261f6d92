"""Fixed-point encoding of weighted updates into unsigned 32-bit integers, and back.

A site's vector is [w*u_1, ..., w*u_d, w] with every |u_k| <= R (the clip range) and
w in [0, 1]. Update coordinates map [-R, R] onto the integers [0, L]; the weight maps
[0, 1] onto [0, L]. With L = floor((2**32 - 1) / cohort_size) the plain sum of a full
cohort is below 2**32, so summing modulo 2**32 (which is what cancels the masks) gives
the exact integer sum. Rounding to nearest: each site is off by at most half a step.

``sum_problem`` checks an unmasked integer sum against what honest sites can produce: its
weight coordinate equals the sum of the survivors' quantised weights exactly, and every
update coordinate lies in the band sum_i [L(1 - w_i)/2, L(1 + w_i)/2] that updates within
the clip range fill. A garbage or shifted masked vector leaves one or both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RangeCheck", "check_range", "dequantise_sum", "quantise_vector", "average_error_bound", "site_weight", "sum_problem",
           "weight_level"]


@dataclass(frozen=True)
class RangeCheck:
    """The update after the range check: values, how many were clipped, the largest |value| seen."""

    values: np.ndarray
    clipped: int
    largest: float


def check_range(update: np.ndarray, *, clip_range: float) -> RangeCheck:
    """Count values beyond [-clip_range, clip_range] and return a clipped copy."""
    update = np.asarray(update, dtype=np.float64)
    magnitude = np.abs(update)
    largest = float(np.max(magnitude)) if update.size else 0.0
    outside = int(np.count_nonzero(magnitude > clip_range)) if largest > clip_range or math.isnan(largest) else 0
    values = np.clip(update, -clip_range, clip_range) if outside else update
    return RangeCheck(values=values, clipped=outside, largest=largest)


def quantise_vector(update: np.ndarray, weight: float, *, clip_range: float, levels: int) -> np.ndarray:
    """Encode [weight * update, weight] as uint32 in [0, levels]; update must be within range."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight {weight} must lie in [0, 1]")
    # (u*w + R) * L/(2R), rounded and held to [0, L]; in place on one float64 buffer
    scaled = np.multiply(np.asarray(update, dtype=np.float64), weight)
    scaled += clip_range
    scaled *= levels / (2.0 * clip_range)
    np.rint(scaled, out=scaled)
    np.maximum(scaled, 0, out=scaled)
    np.minimum(scaled, levels, out=scaled)
    out = np.empty(scaled.size + 1, dtype=np.uint32)
    out[:-1] = scaled
    out[-1] = np.uint32(weight_level(weight, levels))
    return out


def site_weight(num_examples: int, weight_cap: int) -> float:
    """A site's weight in [0, 1]: min(num_examples, weight_cap) / weight_cap."""
    return min(int(num_examples), weight_cap) / weight_cap


def weight_level(weight: float, levels: int) -> int:
    """The quantised weight a site adds to the sum's last coordinate."""
    return min(levels, round(weight * levels))


def sum_problem(total: np.ndarray, *, weights: Sequence[float | None], levels: int) -> str | None:
    """Why ``total`` (the unmasked uint32 sum) is not the sum of honest vectors of sites with ``weights``, or None.

    A weight of None is unknown: the total weight is then not checked, and that site's band is the widest (w = 1).
    """
    total = np.asarray(total, dtype=np.uint32)
    if total.size == 0 or not all(isinstance(w, (int, float)) and math.isfinite(w) and 0 <= w <= 1 for w in weights if w is not None):
        return "the unmasked sum or the declared weights are malformed"
    expected = sum(weight_level(w, levels) for w in weights if w is not None)
    got = int(total[-1])
    if None not in weights and got != expected:
        return (f"the unmasked total weight is {got / levels:.6g}, the survivors' declared weights add up to {expected / levels:.6g}: "
                "a site sent a weight other than its declared one, or a garbage or shifted masked vector")
    # one level of slack per site for rounding at the ends of the band
    known = [1.0 if w is None else float(w) for w in weights]
    low = sum(math.floor(levels * (1.0 - w) / 2.0) - 1 for w in known)
    high = sum(math.ceil(levels * (1.0 + w) / 2.0) + 1 for w in known)
    coordinates = total[:-1].astype(np.int64)
    outside = int(np.count_nonzero((coordinates < low) | (coordinates > high)))
    if outside:
        return (f"{outside} of {coordinates.size} coordinates of the unmasked sum lie outside the range updates within the clip "
                f"range give ([{low}, {high}]): a site sent a garbage or shifted masked vector")
    return None


def dequantise_sum(total: np.ndarray, *, sites: int, clip_range: float, levels: int) -> tuple[np.ndarray, float]:
    """Decode the exact integer sum of ``sites`` vectors: (sum of weight*update, sum of weights)."""
    total = np.asarray(total, dtype=np.uint32).astype(np.float64)
    numerator = total[:-1] * (2.0 * clip_range / levels) - sites * clip_range
    weight = float(total[-1]) / levels
    return numerator, weight


def average_error_bound(*, sites: int, total_weight: float, clip_range: float, levels: int) -> float:
    """Largest error of one coordinate of sum(w*u)/sum(w) caused by quantisation.

    Numerator error e_N <= sites * R / L (half a step 2R/L per site); weight error
    e_W <= sites / (2L). For a = N/W and the decoded N', W': |N'/W' - a| <= (e_N + |a| e_W) / W'
    and |a| <= R, so the bound is 1.5 * sites * R / (L * W'). A relative 1e-9 covers float64.
    """
    if total_weight <= 0:
        return float("inf")
    bound = 1.5 * sites * clip_range / (levels * total_weight)
    return bound * (1 + 1e-9) + 1e-12 * clip_range
