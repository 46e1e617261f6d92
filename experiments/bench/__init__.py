"""flsuite's benchmark harness: every performance claim as a ratio measured side by side.

``python -m experiments.bench [--quick]`` runs the measurements below in order and writes
``experiments/results/bench.json``, ``experiments/results/utility.png`` and the tables in
``experiments/README.md``. Each measurement module has ``run(scale) -> dict`` and
``table(result) -> str`` (markdown).
"""

from experiments.bench.harness import Scale, machine_info, paired_ratio, stats

#: Measurement name -> module under experiments.bench, in the order a full run takes them.
MEASUREMENTS = {
    "accounting": "experiments.bench.accounting",
    "registry": "experiments.bench.registry",
    "dp_cost": "experiments.bench.dp_cost",
    "secagg": "experiments.bench.secagg_cost",
    "csv": "experiments.bench.csv_load",
    "engines": "experiments.bench.engine_cost",
    "parallel": "experiments.bench.parallel",
    "history": "experiments.bench.site_history",
    "utility": "experiments.bench.utility",
}

__all__ = ["MEASUREMENTS", "Scale", "machine_info", "paired_ratio", "stats"]
