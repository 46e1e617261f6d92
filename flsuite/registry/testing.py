"""Helpers for tests of code that publishes into a registry: sample weights, certificates,
a fixed clock, and a one-call publish with valid defaults. Not imported by the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from flsuite.registry.manifest import VersionInfo
from flsuite.registry.registry import Registry

__all__ = ["sample_weights", "sample_certificate", "publish_sample", "StepClock"]


def sample_weights(value: float = 0.0, *, size: int = 16) -> dict[str, np.ndarray]:
    """A small two-tensor model whose entries all equal `value` (so content is checkable)."""
    return {"layer.weight": np.full((size, size), value, dtype=np.float32),
            "layer.bias": np.full((size,), value, dtype=np.float32)}


def sample_certificate(sites: dict[str, float], *, accountant: str = "rdp", delta: float = 1e-5,
                       q: float = 0.01, sigma: float = 1.0, steps: int = 100, clip: float = 1.0) -> dict[str, Any]:
    """A DP certificate claiming `sites[site]` as each site's epsilon for one phase."""
    return {"unit_of_privacy": "record", "accountant": accountant,
            "sites": {site: {"epsilon": eps, "delta": delta,
                             "phases": [{"q": q, "sigma": sigma, "steps": steps, "clip": clip}]}
                      for site, eps in sites.items()}}


def publish_sample(registry: Registry, *, round: int = 0, run_id: str = "run-1",
                   metrics: dict[str, float] | None = None, epsilon: float | None = 2.0,
                   weights: dict[str, np.ndarray] | None = None, **overrides: Any) -> VersionInfo:
    """Publish a valid small version; keyword arguments override any publish argument."""
    arguments: dict[str, Any] = dict(
        run_id=run_id, study_id="study-1", round=round, config_hash="c" * 64,
        code_digest="d" * 64, sites=["site-a", "site-b"],
        metrics={"accuracy": 0.9} if metrics is None else metrics,
        dp_certificate=None if epsilon is None else sample_certificate(
            {"site-a": epsilon, "site-b": epsilon}))
    arguments.update(overrides)
    return registry.publish(sample_weights(float(round)) if weights is None else weights, **arguments)


class StepClock:
    """A clock that starts at a fixed instant and moves one second per call."""

    def __init__(self, start: datetime | None = None) -> None:
        self._times: Iterator[datetime] = (
            (start or datetime(2025, 1, 1, tzinfo=UTC)) + timedelta(seconds=i)
            for i in range(10**9))

    def __call__(self) -> datetime:
        return next(self._times)
