"""The auditor's report's plots, as inline PNG data: epsilon per site over rounds, and
accuracy, loss and AUC per round, from the versions an `auditor_report` lists.

Each plot is returned as base64 PNG text (for ``<img src="data:image/png;base64,...">``), so
the report needs no file and no network; the PNG carries no software metadata. Pure: no
torch, no flwr (matplotlib with its non-interactive Agg canvas).
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from typing import Any

__all__ = ["PERFORMANCE_METRICS", "epsilon_plot", "metrics_plot"]

PERFORMANCE_METRICS = ("accuracy", "loss", "auc")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epsilon_plot(versions: list[dict[str, Any]]) -> str | None:
    """Each site's certified epsilon of its study after each round (one line per site and run); None without DP."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    runs = {v["run_id"] for v in versions if v.get("dp_certificate")}
    for version in versions:
        certificate = version.get("dp_certificate")
        if not certificate:
            continue
        for site, claim in certificate["sites"].items():
            value = _finite(claim.get("epsilon"))
            if value is not None:
                label = site if len(runs) == 1 else f"{site} ({version['run_id']})"
                series[label].append((int(version["round"]), value))
    if not series:
        return None
    figure, axes = _figure(1)
    for label, points in sorted(series.items()):
        points.sort()
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
    axes[0].set(xlabel="round", ylabel="epsilon (this study, certified)", title="Epsilon per site over rounds")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=7, ncol=2)
    return _png(figure)


def metrics_plot(versions: list[dict[str, Any]]) -> str | None:
    """Accuracy, loss and AUC of each published global model per round; None when no version has them."""
    present = [name for name in PERFORMANCE_METRICS
               if any(_finite(v.get("metrics", {}).get(name)) is not None for v in versions)]
    if not present:
        return None
    figure, axes = _figure(len(present))
    runs = sorted({v["run_id"] for v in versions})
    for axis, name in zip(axes, present, strict=True):
        for run in runs:
            points = sorted((int(v["round"]), _finite(v["metrics"].get(name))) for v in versions
                            if v["run_id"] == run and _finite(v.get("metrics", {}).get(name)) is not None)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                      label=run if len(runs) > 1 else None)
        axis.set(xlabel="round", title=name)
        if name != "loss":
            axis.set_ylim(0, 1.02)  # a probability: the whole scale, so noise is not exaggerated
        else:
            axis.set_ylim(bottom=0)
        if len(runs) > 1:
            axis.legend(fontsize=7)
    return _png(figure)


def _figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * panels if panels > 1 else 7.5, 3.4), dpi=96, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for axis in axes:
        axis.grid(alpha=0.3)
    return figure, list(axes)


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")
