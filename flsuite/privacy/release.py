"""Private per-site evaluation counts: the Gaussian mechanism, its sensitivity and its schedule.

A site evaluates the global model on its held-out records and releases, per class c,
(correct_c, total_c) with Gaussian noise of standard deviation sigma x SENSITIVITY.

Sensitivity: the unit of privacy is one record at one site, added or removed (the same
neighbouring relation as Opacus' Poisson DP-SGD). One record of class c changes total_c by 1
and correct_c by 0 or 1, and no other count: the L2 sensitivity of the whole count vector is
sqrt(1^2 + 1^2) = sqrt(2). Each release is one Gaussian mechanism with noise multiplier sigma
(relative to that sensitivity), accounted as the phase (q=1, sigma, 1) and composed with the
site's DP-SGD training in its ledger. Noise comes from fresh OS entropy for every release.

Drift: once per study a site may release its label histogram and binned feature histograms
(sensitivity sqrt(1 + F): one record is one count in each of the 1 + F blocks) and compare them
with its previous study's release by total-variation distance beyond the noise.
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
    "DriftResult",
    "NoisyAccuracy",
    "drift_between",
    "drift_sensitivity",
    "evaluation_phases",
    "evaluation_rounds",
    "histograms",
    "noisy_accuracy",
    "release_counts",
    "release_histograms",
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


# -- drift: a DP histogram of labels and binned features, once per study ---------------------------


def drift_sensitivity(features: int) -> float:
    """One record adds 1 to one bin of the label histogram and of each feature's: sqrt(1 + F)."""
    return math.sqrt(1.0 + features)


def histograms(labels: np.ndarray, features: np.ndarray, *, num_classes: int, columns: Sequence[int], bins: int) -> list[list[int]]:
    """The label histogram, then one histogram per column over ``bins`` equal bins of [-1, 1]
    (values beyond fall in the end bins, so every record counts once per block)."""
    blocks = [np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)]
    edges = np.linspace(-1.0, 1.0, bins + 1)[1:-1]
    for column in columns:
        blocks.append(np.bincount(np.searchsorted(edges, features[:, column], side="right"), minlength=bins))
    return [[int(v) for v in block] for block in blocks]


def release_histograms(blocks: Sequence[Sequence[int]], *, noise_multiplier: float) -> list[list[float]]:
    """Every bin plus Gaussian noise of std sigma x sqrt(1 + F), fresh OS entropy per release."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    scale = float(noise_multiplier) * drift_sensitivity(len(blocks) - 1)
    return [(np.asarray(block, dtype=np.float64) + rng.normal(0.0, scale, size=len(block))).tolist() for block in blocks]


@dataclass(frozen=True)
class DriftResult:
    """The largest total-variation distance over the blocks, the noise margin it must beat, the verdict."""

    distance: float
    margin: float
    excess: float
    flagged: bool


def drift_between(previous: Sequence[Sequence[float]], current: Sequence[Sequence[float]], *, noise_multiplier: float,
                  threshold: float) -> DriftResult:
    """Post-processing of two noisy releases: per block, TV = 1/2 sum |p - q| of the histograms
    (clipped at 0, normalised), minus a noise margin: twice the TV that the noise of two releases
    gives on average (B bins, std s each: B s / (sqrt(pi) N)). Flagged when the excess passes ``threshold``."""
    if len(previous) != len(current) or any(len(a) != len(b) for a, b in zip(previous, current)):
        raise ValueError("the two histograms have different blocks (labels, features or bins changed)")
    scale = float(noise_multiplier) * drift_sensitivity(len(current) - 1)
    best = DriftResult(distance=0.0, margin=0.0, excess=-math.inf, flagged=False)
    for old, new in zip(previous, current):
        p, q = np.clip(np.asarray(old, dtype=np.float64), 0, None), np.clip(np.asarray(new, dtype=np.float64), 0, None)
        n = max(1.0, min(p.sum(), q.sum()))
        distance = 0.5 * float(np.abs(p / max(p.sum(), 1.0) - q / max(q.sum(), 1.0)).sum())
        margin = 2.0 * len(p) * scale / (math.sqrt(math.pi) * n)
        if distance - margin > best.excess:
            best = DriftResult(distance=distance, margin=float(margin), excess=distance - margin,
                               flagged=bool(distance - margin > threshold))
    return best
