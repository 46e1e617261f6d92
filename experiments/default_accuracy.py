"""The default study's final accuracy over repeated runs with fresh DP noise (issue 11's acceptance).

Each run is the default study (plus the overrides of its candidate) on fresh simulated sites,
with the registry off (it does not change the model); DP noise and Poisson sampling are drawn
from fresh OS entropy in every run, so the accuracy varies from run to run and only its
distribution says anything. Candidates run in turn, run by run, so that machine load hits each
alike. Writes every run's final accuracy, AUC, CPU seconds and the largest per-site epsilon.

Run: PYTHONPATH=. python -m experiments.default_accuracy OUT.json RUNS [CANDIDATE ...]
A candidate is one string of overrides ("" is the default study), e.g.
    python -m experiments.default_accuracy results/default_accuracy.json 8 "" "training.local_epochs=1"
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    from flsuite.config.compose import compose_study
    from flsuite.simulation import run_local_study

    logging.disable(logging.WARNING)
    out, runs, candidates = Path(argv[0]), int(argv[1]), [c.split() for c in (argv[2:] or [""])]
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(runs):
        for overrides in candidates:
            with tempfile.TemporaryDirectory() as tmp:
                study = compose_study([*overrides, f"sites_dir={tmp}/sites", "registry.enabled=false"])
                start = time.process_time()
                summary = run_local_study(study, Path(tmp) / "out")
                results.setdefault(" ".join(overrides) or "default", []).append({
                    "accuracy": summary["final_accuracy"],
                    "auc": summary["final_auc"],
                    "cpu_s": time.process_time() - start,
                    "max_site_epsilon": max(site["epsilon_spent"] for site in summary["privacy"]["sites"].values()),
                })
            out.write_text(json.dumps(results, indent=1))
    for name, rows in results.items():
        accuracy = [row["accuracy"] for row in rows]
        print(f"{name}: n={len(accuracy)} median {statistics.median(accuracy):.4f} (min {min(accuracy):.4f}, "
              f"max {max(accuracy):.4f}), largest site epsilon {max(row['max_site_epsilon'] for row in rows):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
