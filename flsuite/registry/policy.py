"""Promotion policies: the rules a version must meet before an alias may point at it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flsuite.errors import RegistryError

__all__ = ["PromotionPolicy"]


@dataclass(frozen=True)
class PromotionPolicy:
    """Unset rules are not checked; the version must always verify (checked by the registry).

    max_epsilon: every site's claimed epsilon must be at most this (needs a DP certificate).
    min_metrics: each named metric must be recorded and at least this value.
    """

    max_epsilon: float | None = None
    min_metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and (not math.isfinite(self.max_epsilon) or self.max_epsilon < 0):
            raise RegistryError(f"promotion policy: max_epsilon={self.max_epsilon!r} must be a "
                                "finite number >= 0")
        for name, value in self.min_metrics.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RegistryError(f"promotion policy: minimum for metric {name!r}={value!r} "
                                    "must be a finite number")
        object.__setattr__(self, "min_metrics", dict(self.min_metrics))

    @classmethod
    def with_min_accuracy(cls, min_accuracy: float, *, max_epsilon: float | None = None) -> PromotionPolicy:
        return cls(max_epsilon=max_epsilon, min_metrics={"accuracy": min_accuracy})

    def unmet(self, manifest: Mapping[str, Any]) -> list[str]:
        """One readable reason per rule the manifest does not meet (empty: it passes)."""
        reasons = []
        if self.max_epsilon is not None:
            certificate = manifest.get("dp_certificate")
            if not certificate:
                reasons.append(f"max epsilon {self.max_epsilon} is required but the version "
                               "has no DP certificate")
            else:
                for site, claim in sorted(certificate["sites"].items()):
                    if claim["epsilon"] > self.max_epsilon:
                        reasons.append(f"site {site}: epsilon {claim['epsilon']:.4g} > max "
                                       f"{self.max_epsilon}")
        metrics = manifest.get("metrics", {})
        for name, minimum in sorted(self.min_metrics.items()):
            if name not in metrics:
                reasons.append(f"metric {name!r} is not recorded (minimum {minimum})")
            elif metrics[name] < minimum:
                reasons.append(f"metric {name!r} = {metrics[name]:.4g} < minimum {minimum}")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {"max_epsilon": self.max_epsilon, "min_metrics": dict(self.min_metrics)}
