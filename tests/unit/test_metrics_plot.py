"""metrics.png shows accuracy and AUC on a fixed 0-1 axis, loss from 0, and each site's epsilon against its cap."""

from __future__ import annotations

import matplotlib.pyplot as plt

from flsuite.coordinator.metrics_plot import metrics_figure, metrics_png

ROWS = [{"round": r, "accuracy": 0.91 + 0.002 * r, "auc": 0.97 + 0.001 * r, "loss": 0.3 - 0.01 * r} for r in (1, 2, 3)]
PRIVACY = [{"round": r, "site": s, "epsilon": e * r, "max_epsilon": 10.0} for r in (1, 2, 3) for s, e in (("site-0", 1.0), ("site-1", 0.9))]


def test_accuracy_and_auc_share_a_fixed_zero_to_one_axis_and_loss_starts_at_zero():
    figure = metrics_figure(ROWS, PRIVACY, "study")
    try:
        quality, loss, epsilon = figure.axes[:3]
        assert quality.get_ylim() == (0.0, 1.02)  # a 0.006 swing is not stretched over the whole panel
        assert [line.get_label() for line in quality.lines] == ["accuracy", "AUC"]
        assert list(quality.lines[1].get_ydata()) == [row["auc"] for row in ROWS]
        assert loss.get_ylim()[0] == 0.0
        labels = [line.get_label() for line in epsilon.lines]
        assert labels == ["site-0", "site-1", "cap"]
        assert list(epsilon.lines[0].get_ydata()) == [1.0, 2.0, 3.0]
        assert epsilon.get_ylim()[0] == 0.0 and epsilon.get_ylim()[1] >= 10.0  # the cap is in view
    finally:
        plt.close(figure)


def test_a_study_without_dp_or_central_evaluation_still_plots():
    figure = metrics_figure([{"round": 1, "accuracy": None, "auc": None, "loss": None}], [], "no eval")
    try:
        assert len(figure.axes) == 2 and figure.axes[0].get_ylim() == (0.0, 1.02)
    finally:
        plt.close(figure)
    assert metrics_png(ROWS, PRIVACY, "study")[:4] == b"\x89PNG"
