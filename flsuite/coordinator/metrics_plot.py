"""metrics.png: a study's test accuracy and AUC, test loss, and each site's epsilon over rounds.

Axes are chosen not to exaggerate noise: accuracy and AUC share a fixed 0-1 axis (a swing
of 0.01 looks like one), the loss axis starts at 0, and each site's cumulative epsilon is
drawn against its cap on an axis from 0 to above the cap, so "how close to the cap" reads
at a glance. A study without DP has no epsilon panel.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["round"], float(row[key])) for row in rows if isinstance(row.get(key), (int, float))]
    return [r for r, _ in points], [v for _, v in points]


def metrics_figure(rows: Sequence[dict[str, Any]], privacy_rows: Sequence[dict[str, Any]], title: str) -> Any:
    """The figure (matplotlib, Agg backend): one panel per quantity; the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if privacy_rows else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    quality, loss = axes[0], axes[1]
    for key, label, marker in (("accuracy", "accuracy", "o"), ("auc", "AUC", "s")):
        rounds, values = _series(rows, key)
        if values:
            quality.plot(rounds, values, marker=marker, label=label)
    quality.set(title="Test accuracy and AUC", xlabel="round", ylim=(0.0, 1.02))
    if quality.lines:
        quality.legend(loc="lower right")
    rounds, values = _series(rows, "loss")
    loss.plot(rounds, values, marker="o", color="tab:red")
    loss.set(title="Test loss", xlabel="round", ylabel="cross-entropy", ylim=(0.0, max([*values, 0.1]) * 1.1))
    if privacy_rows:
        _epsilon_panel(axes[2], privacy_rows)
    for axis in axes:
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _epsilon_panel(axis: Any, privacy_rows: Sequence[dict[str, Any]]) -> None:
    sites = sorted({row["site"] for row in privacy_rows})
    caps = {row["site"]: row.get("max_epsilon") for row in privacy_rows if row.get("max_epsilon") is not None}
    highest = 0.0
    for site in sites:
        rounds, values = _series([row for row in privacy_rows if row["site"] == site], "epsilon")
        line = axis.plot(rounds, values, marker=".", label=site)[0]
        highest = max([highest, *values])
        if site in caps and len(set(caps.values())) > 1:  # caps differ: each site's in its colour
            axis.axhline(caps[site], color=line.get_color(), linestyle="--", linewidth=1)
    if caps and len(set(caps.values())) == 1:
        axis.axhline(next(iter(caps.values())), color="black", linestyle="--", linewidth=1, label="cap")
    top = max([highest, *caps.values()]) if caps else highest
    axis.set(title="Epsilon spent per site (all studies)", xlabel="round", ylabel="epsilon", ylim=(0.0, max(top, 0.1) * 1.08))
    axis.legend(fontsize="small", loc="best")


def metrics_png(rows: Sequence[dict[str, Any]], privacy_rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """metrics.png's bytes."""
    import matplotlib.pyplot as plt

    figure = metrics_figure(rows, privacy_rows, title)
    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()
    finally:
        plt.close(figure)
