"""Utility: test accuracy against epsilon, federated over 5 sites and centralised, as a Hydra sweep.

Each point is a whole study composed from ``configs/`` with the sweep expanded by
``flsuite.config.expand_sweep`` (what ``flsuite run -m`` does): epsilon 1, 3, 8 per study
(site-level DP-SGD, delta 1e-5, the default PRV accountant; digits through
``experiment=digits_dp``) and ``privacy=none`` (``experiment=digits``), over seeds.
Federated = the default study (5 Dirichlet sites, secure aggregation on). Centralised = the
same study with one site holding every training record (``federation.num_sites=1
federation.min_sites=1 secagg=none``): same DP settings, rounds, epochs, batch and learning
rate. Accuracy is the final round's, on the coordinator's held-out split (fixed by data.seed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from experiments.bench.harness import Scale, progress, run_study, stats

TASKS = {
    "breast_cancer_logreg": {"label": "breast cancer, logistic regression", "dp": [], "none": []},
    "digits_mlp": {"label": "digits, MLP", "dp": ["experiment=digits_dp"], "none": ["experiment=digits"]},
}
SETTINGS = {"federated (5 sites)": [], "centralised": ["federation.num_sites=1", "federation.min_sites=1", "secagg=none"]}
#: Measured centrally on this machine (privacy notes): epsilon 1 / 3 / 8 / non-private.
ANCHORS = {"breast_cancer_logreg": {"1": 0.942, "3": 0.965, "8": 0.977, "none": 0.977},
           "digits_mlp": {"1": 0.781, "3": 0.868, "8": 0.912, "none": 0.969}}


def sweeps(scale: Scale, seeds: int, task: dict[str, Any]) -> list[list[str]]:
    """The Hydra sweep lines (``flsuite run -m`` syntax) of one task: DP over epsilons, then non-private."""
    seed_axis = "seed=" + ",".join(str(s) for s in range(seeds))
    epsilons = scale.pick("1,3,8", "3")
    quick = ["federation.rounds=1", "privacy.accountant=rdp"] if scale.quick else []
    return [[*task["dp"], f"privacy.target_epsilon={epsilons}", seed_axis, *quick],
            [*task["none"], "privacy=none", seed_axis, *quick]]


def run(scale: Scale, seeds: int | None = None) -> dict[str, Any]:
    from flsuite.config import expand_sweep

    seeds = seeds or scale.pick(3, 1)
    points: list[dict[str, Any]] = []
    commands = []
    with tempfile.TemporaryDirectory(prefix="bench-utility-") as tmp:
        for task, spec in TASKS.items():
            for setting, extra in SETTINGS.items():
                for sweep in sweeps(scale, seeds, spec):
                    line = [*extra, "registry.enabled=false", *sweep]
                    commands.append("flsuite run -m " + " ".join(line))
                    for overrides in expand_sweep(line):
                        epsilon = next((o.split("=", 1)[1] for o in overrides if o.startswith("privacy.target_epsilon=")), "none")
                        seed = next(o.split("=", 1)[1] for o in overrides if o.startswith("seed="))
                        progress(f"utility {task}, {setting}, epsilon {epsilon}, seed {seed}")
                        summary, _ = run_study(overrides, Path(tmp))
                        points.append({"task": task, "setting": setting, "epsilon": _key(epsilon), "seed": int(seed),
                                       "accuracy": summary["final_accuracy"], "status": summary["status"],
                                       "wall_s": summary["wall_s"]})
    table_rows = {}
    for point in points:
        table_rows.setdefault((point["task"], point["setting"], point["epsilon"]), []).append(point["accuracy"])
    summary_rows = [{"task": t, "setting": s, "epsilon": e, "accuracy": stats(v, 4)} for (t, s, e), v in table_rows.items()]
    return {"seeds": seeds, "sweeps": commands, "points": points, "rows": summary_rows, "anchors": ANCHORS}


def _key(epsilon: str) -> str:
    return "none" if epsilon == "none" else f"{float(epsilon):g}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["1", "3", "8", "none"]
    figure, axes = plt.subplots(1, len(TASKS), figsize=(10, 3.8))
    for axis, (task, spec) in zip(axes, TASKS.items()):
        for setting, style in zip(SETTINGS, ("o-", "s--")):
            rows = {r["epsilon"]: r["accuracy"] for r in result["rows"] if r["task"] == task and r["setting"] == setting}
            xs = [i for i, e in enumerate(order) if e in rows]
            med = [rows[order[i]]["median"] for i in xs]
            err = [[rows[order[i]]["median"] - rows[order[i]]["min"] for i in xs],
                   [rows[order[i]]["max"] - rows[order[i]]["median"] for i in xs]]
            axis.errorbar(xs, med, yerr=err, fmt=style, capsize=3, label=setting)
        anchors = result["anchors"][task]
        axis.plot(range(len(order)), [anchors[e] for e in order], "kx", label="anchor (centralised, notes)")
        axis.set(title=spec["label"], xlabel="epsilon per study (delta 1e-5)", ylabel="test accuracy",
                 xticks=range(len(order)), xticklabels=["1", "3", "8", "non-private"])
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(result: dict[str, Any]) -> str:
    order = ["1", "3", "8", "none"]
    lines = [f"Final-round test accuracy, median (min-max) over {result['seeds']} seed(s); anchor = centralised, privacy notes.", "",
             "| task | setting | eps 1 | eps 3 | eps 8 | non-private |", "|---|---|---|---|---|---|"]
    for task, spec in TASKS.items():
        for setting in SETTINGS:
            rows = {r["epsilon"]: r["accuracy"] for r in result["rows"] if r["task"] == task and r["setting"] == setting}
            cells = [f"{rows[e]['median']:.3f} ({rows[e]['min']:.3f}-{rows[e]['max']:.3f})" if e in rows else "-" for e in order]
            lines.append(f"| {spec['label']} | {setting} | " + " | ".join(cells) + " |")
        anchors = result["anchors"][task]
        lines.append(f"| {spec['label']} | anchor | " + " | ".join(f"{anchors[e]:.3f}" for e in order) + " |")
    return "\n".join(lines)

