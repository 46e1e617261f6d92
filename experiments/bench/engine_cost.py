"""Engine cost: the same 10-site study on the inline engine and on Flower's Ray Simulation Engine.

Each repeat runs the study once per engine, each in a fresh process whose whole process tree
(Ray's GCS, raylet and workers included) is sampled for memory; the two alternate. Reported
as Ray / inline ratios: wall time (first round, total), peak memory, and the start-up time of
each (process launch until round 1 begins: interpreter, imports, engine, privacy planning).

Coordinator overhead on the inline engine, per round, from the sites' own ``train-seconds``:
``(round wall - slowest site's training) / slowest site's training`` (the issue's definition,
which assumes sites train in parallel) and, because the inline engine runs its sites one
after another in one process, also ``(round wall - sum of training) / sum of training``.
Variants with DP and secure aggregation switched off show what dominates the overhead.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.bench.harness import (
    REPO, Scale, fmt_ratio, paired_ratio, progress, round_walls, run_study, site_train_seconds, stats,
)
from experiments.bench.process_tree import run_measured

#: The study both engines run: digits MLP at 10 sites, DP-SGD (fixed sigma, so no planning
#: search) with secure aggregation and the registry, as in the default study.
STUDY = ["experiment=digits_dp", "federation.num_sites=10", "federation.min_sites=5", "privacy.target_epsilon=null",
         "privacy.noise_multiplier=1.0"]

OVERHEAD_VARIANTS = {
    "plain (no DP, no secure aggregation)": ["privacy=none", "secagg=none"],
    "secure aggregation only": ["privacy=none"],
    "DP only": ["secagg=none"],
    "DP + secure aggregation (default)": [],
}


def _engine_run(engine: str, rounds: int, root: Path) -> dict[str, Any]:
    output = Path(tempfile.mkdtemp(prefix=f"engine-{engine}-", dir=root))
    env = {**os.environ, "FLSUITE_BENCH_LAUNCHED": repr(time.time()), "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "experiments.bench.study_child", str(output), *STUDY,
               f"federation.rounds={rounds}", f"engine={engine}"]
    measured = run_measured(command, env=env, cwd=REPO)
    line = next((l for l in measured.stdout.splitlines() if l.startswith("BENCH ")), None)
    if measured.returncode != 0 or line is None:
        raise RuntimeError(f"engine={engine} study failed (exit {measured.returncode}):\n{measured.stderr[-3000:]}")
    timeline = json.loads(line[len("BENCH "):])
    return {**timeline, "process_wall_s": measured.wall_s, "peak_rss_mib": measured.peak_rss_bytes / 2**20,
            "peak_pss_mib": measured.peak_pss_bytes / 2**20, "peak_processes": measured.peak_processes}


def _overheads(output: Path) -> dict[str, list[float]]:
    walls = round_walls(output)
    trains = site_train_seconds(output)
    slowest = [(w - max(trains[r + 1])) / max(trains[r + 1]) for r, w in enumerate(walls)]
    serial = [(w - sum(trains[r + 1])) / sum(trains[r + 1]) for r, w in enumerate(walls)]
    return {"slowest": slowest, "serial": serial, "walls": walls,
            "slowest_train": [max(trains[r + 1]) for r in range(len(walls))],
            "sum_train": [sum(trains[r + 1]) for r in range(len(walls))]}


def measure_engines(scale: Scale) -> dict[str, Any]:
    rounds, repeats = scale.pick(3, 2), scale.pick(2, 1)
    runs: dict[str, list[dict[str, Any]]] = {"inline": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        for repeat in range(repeats):
            for engine in ("inline", "ray") if repeat % 2 == 0 else ("ray", "inline"):
                progress(f"engine {engine}, repeat {repeat + 1}/{repeats}")
                runs[engine].append(_engine_run(engine, rounds, Path(tmp)))
    inline, ray = runs["inline"], runs["ray"]

    def series(engine_runs, key):
        return [run[key] for run in engine_runs]

    first = {e: [run["round_walls_s"][0] for run in runs[e]] for e in runs}
    steady = {e: [statistics.median(run["round_walls_s"][1:]) for run in runs[e]] for e in runs}
    return {
        "study": STUDY + [f"federation.rounds={rounds}"],
        "repeats": repeats,
        "runs": runs,
        "per_engine": {e: {"startup_s": stats(series(runs[e], "startup_s")),
                           "first_round_s": stats(first[e]), "steady_round_s": stats(steady[e]),
                           "total_s": stats(series(runs[e], "process_wall_s")),
                           "peak_rss_mib": stats(series(runs[e], "peak_rss_mib"), 1),
                           "peak_pss_mib": stats(series(runs[e], "peak_pss_mib"), 1),
                           "peak_processes": max(series(runs[e], "peak_processes"))} for e in runs},
        "ray_over_inline": {
            "startup": paired_ratio(series(ray, "startup_s"), series(inline, "startup_s")),
            "first_round": paired_ratio(first["ray"], first["inline"]),
            "steady_round": paired_ratio(steady["ray"], steady["inline"]),
            "total": paired_ratio(series(ray, "process_wall_s"), series(inline, "process_wall_s")),
            "peak_rss": paired_ratio(series(ray, "peak_rss_mib"), series(inline, "peak_rss_mib")),
            "peak_pss": paired_ratio(series(ray, "peak_pss_mib"), series(inline, "peak_pss_mib")),
        },
    }


def measure_overhead(scale: Scale) -> dict[str, Any]:
    """Coordinator overhead on the inline engine, per variant (rounds after the first)."""
    rounds, repeats = scale.pick(4, 2), scale.pick(2, 1)
    collected: dict[str, dict[str, list[float]]] = {name: {"slowest": [], "serial": [], "first_slowest": [], "walls": [],
                                                            "slowest_train": [], "sum_train": []}
                                                     for name in OVERHEAD_VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for repeat in range(repeats):
            for name, extra in OVERHEAD_VARIANTS.items():
                progress(f"coordinator overhead: {name}, repeat {repeat + 1}/{repeats}")
                _, output = run_study([*STUDY, f"federation.rounds={rounds}", *extra], Path(tmp))
                o = _overheads(output)
                entry = collected[name]
                entry["first_slowest"].append(o["slowest"][0])
                for key in ("slowest", "serial", "walls", "slowest_train", "sum_train"):
                    entry[key].extend(o[key][1:])
    return {name: {"overhead_vs_slowest_site": stats(v["slowest"], 3), "overhead_vs_sum_of_sites": stats(v["serial"], 3),
                   "first_round_overhead_vs_slowest_site": stats(v["first_slowest"], 3),
                   "round_wall_s": stats(v["walls"]), "slowest_site_train_s": stats(v["slowest_train"]),
                   "sum_site_train_s": stats(v["sum_train"])}
            for name, v in collected.items()}


def run(scale: Scale) -> dict[str, Any]:
    return {"engines": measure_engines(scale), "inline_coordinator_overhead": measure_overhead(scale),
            "target_overhead": 0.10}


def table(result: dict[str, Any]) -> str:
    engines = result["engines"]
    per, ratio = engines["per_engine"], engines["ray_over_inline"]
    med = lambda e, k, d=1: f"{per[e][k]['median']:.{d}f} ({per[e][k]['min']:.{d}f}-{per[e][k]['max']:.{d}f})"  # noqa: E731
    lines = [f"Study: `{' '.join(engines['study'])}` ({engines['repeats']} paired repeats, fresh process each).", "",
             "| | inline | Ray | Ray / inline |", "|---|---|---|---|"]
    for label, key, rkey in (("start-up to round 1 (s)", "startup_s", "startup"), ("first round (s)", "first_round_s", "first_round"),
                             ("later rounds, median (s)", "steady_round_s", "steady_round"), ("total wall (s)", "total_s", "total"),
                             ("peak RSS of process tree (MiB)", "peak_rss_mib", "peak_rss"),
                             ("peak PSS of process tree (MiB)", "peak_pss_mib", "peak_pss")):
        lines.append(f"| {label} | {med('inline', key)} | {med('ray', key)} | {fmt_ratio(ratio[rkey])} |")
    lines.append(f"| processes (max) | {per['inline']['peak_processes']} | {per['ray']['peak_processes']} | |")
    lines += ["", "Coordinator overhead on the inline engine (rounds after the first; target <= 0.10 vs the slowest site):", "",
              "| variant | round wall (s) | slowest site trains (s) | all sites train (s) | overhead vs slowest site | overhead vs sum of sites |",
              "|---|---|---|---|---|---|"]
    for name, v in result["inline_coordinator_overhead"].items():
        lines.append(f"| {name} | {v['round_wall_s']['median']:.3f} | {v['slowest_site_train_s']['median']:.3f} | "
                     f"{v['sum_site_train_s']['median']:.3f} | {fmt_ratio(v['overhead_vs_slowest_site'], 1)} | "
                     f"{fmt_ratio(v['overhead_vs_sum_of_sites'], 1)} |")
    return "\n".join(lines)
