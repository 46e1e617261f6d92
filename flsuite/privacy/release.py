"""Private per-site evaluation counts: the Gaussian mechanism, its sensitivity and its schedule.

A site evaluates the global model on its held-out records and releases, per class c,
(correct_c, total_c) with Gaussian noise of standard deviation sigma x SENSITIVITY.

Sensitivity: the unit of privacy is one record at one site, added or removed (the same
neighbouring relation as Opacus' Poisson DP-SGD). One record of class c changes total_c by 1
and correct_c by 0 or 1, and no other count: the L2 sensitivity of the whole count vector is
sqrt(1^2 + 1^2) = sqrt(2). Each release is one Gaussian mechanism with noise multiplier sigma
(relative to that sensitivity), accounted as the phase (q=1, sigma, 1) and composed with the
site's DP-SGD training in its ledger. Noise comes from fresh OS entropy for every release.
Pure: numpy and the standard library.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flsuite.errors import ConfigError

__all__ = [
    "EVALUATION_SENSITIVITY",
    "NoisyAccuracy",
    "evaluation_phases",
    "evaluation_rounds",
    "noisy_accuracy",
    "release_counts",
]

#: L2 sensitivity of the per-class (correct, total) vector under add/remove of one record.
EVALUATION_SENSITIVITY = math.sqrt(2.0)


def evaluation_rounds(rounds: int, every: int) -> tuple[int, ...]:
    """The rounds after which sites release evaluation counts: every ``every`` rounds and the
    final round; ``every=0``: the final round only."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"monitoring.every must be an integer >= 0 (0: the final round only), got {every!r}")
    chosen = set(range(every, rounds + 1, every)) if every else set()
    chosen.add(rounds)
    return tuple(sorted(chosen))


def evaluation_phases(rounds: int, every: int, noise_multiplier: float) -> tuple[tuple[float, float, int], ...]:
    """The accountant's phases of a study's evaluation releases at one site: (1, sigma, releases)."""
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) or not (
        noise_multiplier > 0 and math.isfinite(noise_multiplier)
    ):
        raise ConfigError(f"monitoring.noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    return ((1.0, float(noise_multiplier), len(evaluation_rounds(rounds, every))),)


def release_counts(correct: Sequence[int], total: Sequence[int], *, noise_multiplier: float) -> tuple[list[float], list[float]]:
    """The per-class counts plus Gaussian noise (std sigma x sqrt(2)), from a generator seeded
    by 128 bits of fresh OS entropy for this release alone."""
    correct_array = np.asarray(correct, dtype=np.float64)
    total_array = np.asarray(total, dtype=np.float64)
    if correct_array.shape != total_array.shape or correct_array.ndim != 1:
        raise ValueError("correct and total must be per-class lists of the same length")
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    scale = float(noise_multiplier) * EVALUATION_SENSITIVITY
    noise = rng.normal(0.0, scale, size=(2, correct_array.size))
    return (correct_array + noise[0]).tolist(), (total_array + noise[1]).tolist()


@dataclass(frozen=True)
class NoisyAccuracy:
    """A site's accuracy from its noisy counts and the standard deviation the noise gives it."""

    accuracy: float
    noise_std: float
    total: float


def noisy_accuracy(correct: Sequence[float], total: Sequence[float], *, noise_multiplier: float) -> NoisyAccuracy:
    """sum(correct) / sum(total), clipped to [0, 1] (post-processing: free of privacy cost).

    ``noise_std`` is the delta-method standard deviation of that ratio: with K classes the sums
    carry noise of std s x sqrt(K) each (s = sigma x sqrt(2)), so std ~ s sqrt(K) sqrt(1 + a^2) / T.
    """
    released_total = max(float(sum(total)), 1.0)
    accuracy = min(1.0, max(0.0, float(sum(correct)) / released_total))
    scale = float(noise_multiplier) * EVALUATION_SENSITIVITY * math.sqrt(len(total))
    return NoisyAccuracy(accuracy=accuracy, noise_std=scale * math.sqrt(1.0 + accuracy**2) / released_total, total=released_total)
