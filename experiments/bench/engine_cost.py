"""Engine cost: the same 10-site study on the inline engine and on Flower's Ray Simulation Engine.

Each repeat runs the study once per engine, each in a fresh process whose whole process tree
(Ray's GCS, raylet and workers included) is sampled for memory; the two alternate. Reported
as Ray / inline ratios: wall time (first round, total), peak memory, and the start-up time of
each (process launch until round 1 begins: interpreter, imports, engine, privacy planning).

Coordinator overhead on the inline engine, per round, from the sites' training time (timed in process):
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
    REPO,
    Scale,
    fmt_ratio,
    paired_ratio,
    progress,
    round_walls,
    run_study,
    site_training_times,
    stats,
)
from experiments.bench.process_tree import run_measured

#: The study both engines run: digits MLP at 10 sites, DP-SGD (fixed sigma, so no planning
#: search) with secure aggregation and the registry, as in the default study.
STUDY = ["experiment=digits_dp", "federation.num_sites=10", "federation.min_sites=5", "privacy.target_epsilon=null",
         "privacy.noise_multiplier=2.0"]

#: --quick: the same study, smaller (4 sites), and only the first and the default variant below.
QUICK = ["federation.num_sites=4", "federation.min_sites=3"]
QUICK_VARIANTS = ("plain (no DP, no secure aggregation)", "DP + secure aggregation (default)")

OVERHEAD_VARIANTS = {
    "plain (no DP, no secure aggregation)": ["privacy=none", "secagg=none"],
    "secure aggregation only": ["privacy=none"],
    "DP only": ["secagg=none"],
    "DP + secure aggregation (default)": [],
    "plain, heavier training (99k-param MLP, 5 local epochs)": ["privacy=none", "secagg=none", "model.hidden_units=280",
                                                              "training.local_epochs=5"],
}


def _engine_run(engine: str, rounds: int, root: Path, study: list[str]) -> dict[str, Any]:
    output = Path(tempfile.mkdtemp(prefix=f"engine-{engine}-", dir=root))
    env = {**os.environ, "FLSUITE_BENCH_LAUNCHED": repr(time.time()), "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "experiments.bench.study_child", str(output), *study,
               f"federation.rounds={rounds}", f"engine={engine}"]
    measured = run_measured(command, env=env, cwd=REPO)
    line = next((text for text in measured.stdout.splitlines() if text.startswith("BENCH ")), None)
    if measured.returncode != 0 or line is None:
        raise RuntimeError(f"engine={engine} study failed (exit {measured.returncode}):\n{measured.stderr[-3000:]}")
    timeline = json.loads(line[len("BENCH "):])
    return {**timeline, "process_wall_s": measured.wall_s, "peak_rss_mib": measured.peak_rss_bytes / 2**20,
            "peak_pss_mib": measured.peak_pss_bytes / 2**20, "peak_processes": measured.peak_processes}


def _study(scale: Scale) -> list[str]:
    return [*STUDY, *QUICK] if scale.quick else list(STUDY)


def _overheads(output: Path, trains: dict[int, list[float]]) -> dict[str, Any]:
    """Per-round and pooled overheads of rounds 2.. (round 1 is reported on its own)."""
    walls = round_walls(output)
    slowest = [max(trains[r + 1]) for r in range(len(walls))]
    total = [sum(trains[r + 1]) for r in range(len(walls))]
    later = range(1, len(walls))
    return {
        "per_round_slowest": [(walls[r] - slowest[r]) / slowest[r] for r in later],
        "per_round_serial": [(walls[r] - total[r]) / total[r] for r in later],
        "pooled_slowest": (sum(walls[r] for r in later) - sum(slowest[r] for r in later)) / sum(slowest[r] for r in later),
        "pooled_serial": (sum(walls[r] for r in later) - sum(total[r] for r in later)) / sum(total[r] for r in later),
        "first_slowest": (walls[0] - slowest[0]) / slowest[0],
        "walls": [walls[r] for r in later], "slowest_train": [slowest[r] for r in later], "sum_train": [total[r] for r in later],
    }


def measure_engines(scale: Scale) -> dict[str, Any]:
    rounds, repeats = scale.pick(3, 2), scale.pick(2, 1)
    runs: dict[str, list[dict[str, Any]]] = {"inline": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        for repeat in range(repeats):
            for engine in ("inline", "ray") if repeat % 2 == 0 else ("ray", "inline"):
                progress(f"engine {engine}, repeat {repeat + 1}/{repeats}")
                runs[engine].append(_engine_run(engine, rounds, Path(tmp), _study(scale)))
    inline, ray = runs["inline"], runs["ray"]

    def series(engine_runs, key):
        return [run[key] for run in engine_runs]

    first = {e: [run["round_walls_s"][0] for run in runs[e]] for e in runs}
    steady = {e: [statistics.median(run["round_walls_s"][1:]) for run in runs[e]] for e in runs}
    return {
        "study": _study(scale) + [f"federation.rounds={rounds}"],
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
    """Coordinator overhead on the inline engine, per variant, over the rounds after the first.

    "pooled" divides the summed rounds, so that rare slow rounds (privacy accounting of a new
    step count) weigh what they cost; "per round" gives the typical round.
    """
    rounds, repeats = scale.pick(4, 2), scale.pick(2, 1)
    keys = ("per_round_slowest", "per_round_serial", "pooled_slowest", "pooled_serial", "first_slowest",
            "walls", "slowest_train", "sum_train")
    variants = {k: v for k, v in OVERHEAD_VARIANTS.items() if not scale.quick or k in QUICK_VARIANTS}
    collected = {name: {key: [] for key in keys} for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for repeat in range(repeats):
            for name, extra in variants.items():
                progress(f"coordinator overhead: {name}, repeat {repeat + 1}/{repeats}")
                with site_training_times() as trains:
                    _, output = run_study([*_study(scale), f"federation.rounds={rounds}", *extra], Path(tmp))
                for key, value in _overheads(output, trains).items():
                    collected[name][key].extend(value if isinstance(value, list) else [value])
    return {name: {"overhead_vs_slowest_site": stats(v["pooled_slowest"], 3), "overhead_vs_sum_of_sites": stats(v["pooled_serial"], 3),
                   "per_round_overhead_vs_slowest_site": stats(v["per_round_slowest"], 3),
                   "per_round_overhead_vs_sum_of_sites": stats(v["per_round_serial"], 3),
                   "first_round_overhead_vs_slowest_site": stats(v["first_slowest"], 3),
                   "round_wall_s": stats(v["walls"]), "slowest_site_train_s": stats(v["slowest_train"]),
                   "sum_site_train_s": stats(v["sum_train"])}
            for name, v in collected.items()}


#: (file suffix, function) whose cumulative time makes each bucket of a round on the inline engine.
BUCKETS = {
    "local training at the sites (DP-SGD / SGD)": [("flsuite/privacy/dp_training.py", "train_dp"),
                                                   ("flsuite/training/local.py", "train_plain")],
    "privacy accounting and ledger (sites' reserve, spend, status)": [
        ("flsuite/site/privacy_guard.py", name) for name in ("reserve", "spend", "status")
    ],
    "secure aggregation protocol (sites + coordinator)": [
        ("flsuite/secagg/site.py", name) for name in ("setup", "share_keys", "begin_train", "mask_update", "unmask")
    ] + [("flsuite/secagg/coordinator.py", name) for name in
         ("setup_requests", "receive_keys", "receive_shares", "receive_masked", "receive_unmask")],
    "central evaluation": [("flsuite/training/local.py", "evaluate")],
    "model <-> ArrayRecord": [("flsuite/models/weights.py", "load_arrays"), ("flsuite/models/weights.py", "model_to_arrays")],
    "registry publishing": [("flsuite/coordinator/publishing.py", "on_round")],
}


def profile_rounds(overrides: list[str]) -> dict[str, Any]:
    """Where the time of rounds 2.. goes on the inline engine (cProfile, cumulative seconds per bucket).

    The in-process Grid delivers each message in a thread of its own, so every thread started
    after round 1 gets a profiler of its own as it starts (``threading.setprofile``), and their
    statistics are added to the coordinator thread's.
    """
    import cProfile
    import pstats
    import sys
    import threading

    from flsuite.coordinator import progress as study_progress

    profiler = cProfile.Profile()
    in_threads: list[cProfile.Profile] = []
    walls: list[float] = []

    def profile_thread(*_: Any) -> None:
        sys.setprofile(None)
        thread_profiler = cProfile.Profile()
        in_threads.append(thread_profiler)  # list.append is atomic
        thread_profiler.enable()

    def on_round(record: Any) -> None:
        walls.append(record.wall_s)
        if record.round == 1:
            profiler.enable()  # rounds after the first only: planning and warm-up stay out
            threading.setprofile(profile_thread)

    study_progress.subscribe(on_round)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
            run_study(overrides, Path(tmp))
    finally:
        profiler.disable()
        threading.setprofile(None)
        study_progress.unsubscribe(on_round)
    for thread_profiler in in_threads:
        thread_profiler.disable()  # a finished thread's profiler holds its statistics
    table = pstats.Stats(profiler, *in_threads).stats  # (file, line, function) -> (cc, nc, tottime, cumtime, callers)

    def cumulative(pairs) -> float:
        return sum(ct for (file, _, fn), (_, _, _, ct, _) in table.items()
                   if any(file.endswith(suffix) and fn == name for suffix, name in pairs))

    rounds_s = sum(walls[1:])
    buckets = {name: cumulative(pairs) for name, pairs in BUCKETS.items()}
    delivered = cumulative([("flsuite/flower/grid.py", "_deliver")])
    client_apps = cumulative([("flwr/clientapp/client_app.py", "__call__")])
    buckets["inline engine message copies"] = max(0.0, delivered - client_apps)
    buckets["everything else"] = rounds_s - sum(buckets.values())
    return {"overrides": overrides, "rounds_profiled": len(walls) - 1, "rounds_wall_s": round(rounds_s, 3),
            "seconds": {k: round(v, 3) for k, v in buckets.items()},
            "share": {k: round(v / rounds_s, 3) for k, v in buckets.items()} if rounds_s else {}}


def run(scale: Scale) -> dict[str, Any]:
    progress("coordinator overhead: profile of the default variant")
    profile = profile_rounds([*_study(scale), f"federation.rounds={scale.pick(4, 2)}"])
    return {"engines": measure_engines(scale), "inline_coordinator_overhead": measure_overhead(scale),
            "round_profile": profile, "target_overhead": 0.10}


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
    lines += ["", "Coordinator overhead on the inline engine, rounds after the first (target <= 0.10 vs the slowest site). "
              "Pooled = summed over those rounds, median (min-max) over repeats; round columns are medians over rounds:", "",
              "| variant | round wall (s) | slowest site trains (s) | all sites train (s) | overhead vs slowest site, pooled "
              "| overhead vs sum of sites, pooled | typical round: vs slowest / vs sum |",
              "|---|---|---|---|---|---|---|"]
    for name, v in result["inline_coordinator_overhead"].items():
        lines.append(f"| {name} | {v['round_wall_s']['median']:.3f} (max {v['round_wall_s']['max']:.2f}) | "
                     f"{v['slowest_site_train_s']['median']:.3f} | {v['sum_site_train_s']['median']:.3f} | "
                     f"{fmt_ratio(v['overhead_vs_slowest_site'], 1)} | {fmt_ratio(v['overhead_vs_sum_of_sites'], 2)} | "
                     f"{v['per_round_overhead_vs_slowest_site']['median']:.1f} / {v['per_round_overhead_vs_sum_of_sites']['median']:.2f} |")
    profile = result.get("round_profile")
    if profile:
        lines += ["", f"Where a round's time goes, DP + secure aggregation, inline engine (cProfile, {profile['rounds_profiled']} "
                  f"rounds after the first, {profile['rounds_wall_s']:.2f} s in all; profiling slows Python code):", "",
                  "| part | seconds | share |", "|---|---|---|"]
        for name, seconds in sorted(profile["seconds"].items(), key=lambda item: -item[1]):
            lines.append(f"| {name} | {seconds:.3f} | {profile['share'][name]:.0%} |")
    return "\n".join(lines)
