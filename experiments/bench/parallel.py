"""Sites in parallel on the inline engine (issue 15.2): sequential vs worker processes, side by side.

Each repeat runs the same seeded 10-site study sequentially (``engine.parallel_sites=1``) and
with two worker processes (``engine.parallel_sites=2``, ``engine.site_workers=processes``),
alternating which goes first, each in this process with a fresh sites folder. Reported:

- the wall time of the rounds after the first (the first also pays the imports and data loading
  that the workers do at start-up, while the coordinator plans), median per study, and
  parallel / sequential, paired by repeat; the first round's wall time beside it;
- coordinator overhead vs the sites' training. The sites' training is timed in process in the
  sequential run (the workers' calls cannot be timed from here; a seeded study does the same
  work on both). Sequential: ``(round - sum of training) / sum of training``. Parallel: the
  ideal round on W workers is ``max(slowest site, sum / W)``, and the overhead is
  ``(round - ideal) / ideal``;
- the default study (5 sites, 10 rounds, DP + secure aggregation) end to end, 1 vs 2 workers,
  which sets ``engine.parallel_sites``' default.

The machine's load average is recorded before and after: on a shared 2-core machine the second
core is only as free as the others leave it. And what two cores give here at best is measured
too (``measure_ceiling``): the same compute-bound job (SGD on the heavier variant's MLP, one torch
thread, no flsuite) run twice at once against twice one after the other. 0.5 would be two cores
that do not slow each other; above it, a round's "processes / sequential" cannot go lower even
with no overhead at all.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.bench.harness import Scale, fmt_ratio, paired_ratio, progress, round_walls, run_study, site_training_times, stats

WORKERS = 2

#: The 10-site study of issue 15.2: plain, plain with training heavy enough to dominate a round (as in
#: engine_cost), and with the default study's DP and secure aggregation.
VARIANTS = {
    "plain (no DP, no secure aggregation)": ["privacy=none", "secagg=none"],
    "plain, heavier training (99k-param MLP, 5 local epochs)": ["privacy=none", "secagg=none", "model.hidden_units=280",
                                                              "training.local_epochs=5"],
    "DP + secure aggregation": ["privacy.target_epsilon=null", "privacy.noise_multiplier=2.0"],
}
STUDY = ["experiment=digits_dp", "federation.num_sites=10", "federation.min_sites=5"]
QUICK = ["federation.num_sites=4", "federation.min_sites=3"]


def _mode(workers: int) -> list[str]:
    return [f"engine.parallel_sites={workers}", "engine.site_workers=processes"]


def _one(overrides: list[str], root: Path, *, timed: bool) -> dict[str, Any]:
    started = time.perf_counter()
    if timed:
        with site_training_times() as trains:
            summary, output = run_study(overrides, root)
    else:
        trains = {}
        summary, output = run_study(overrides, root)
    if summary["status"] != "completed":
        raise RuntimeError(f"study {overrides} did not complete: {summary.get('reasons')}")
    return {"study_wall_s": time.perf_counter() - started, "round_walls_s": round_walls(output),
            "trains": {int(k): v for k, v in trains.items()}, "final_accuracy": summary["final_accuracy"]}


def measure_rounds(scale: Scale) -> dict[str, Any]:
    rounds, repeats = scale.pick(8, 2), scale.pick(3, 1)  # 7 steady rounds a study: this VM's rounds jitter by 10-20%
    study = [*STUDY, *(QUICK if scale.quick else []), f"federation.rounds={rounds}"]
    result: dict[str, Any] = {"study": study, "rounds": rounds, "repeats": repeats, "workers": WORKERS, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        for name, extra in VARIANTS.items():
            runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "processes": []}
            for repeat in range(repeats):
                order = ("sequential", "processes") if repeat % 2 == 0 else ("processes", "sequential")
                for mode in order:
                    progress(f"parallel sites: {name}, {mode}, repeat {repeat + 1}/{repeats}")
                    workers = 1 if mode == "sequential" else WORKERS
                    runs[mode].append(_one([*study, *extra, *_mode(workers)], Path(tmp), timed=mode == "sequential"))
            result["variants"][name] = _summarise(runs, seeded="privacy=none" in extra)
    return result


def _summarise(runs: dict[str, list[dict[str, Any]]], *, seeded: bool) -> dict[str, Any]:
    """``same_accuracy``: whether both modes ended at the same accuracy, for a seeded study (None with DP: fresh noise)."""
    steady = {mode: [statistics.median(run["round_walls_s"][1:]) for run in runs[mode]] for mode in runs}
    first = {mode: [run["round_walls_s"][0] for run in runs[mode]] for mode in runs}
    overhead_seq, overhead_par, ideal, total = [], [], [], []
    for seq, par in zip(runs["sequential"], runs["processes"], strict=True):
        for index in range(1, len(seq["round_walls_s"])):
            trains = seq["trains"][index + 1]
            total.append(sum(trains))
            ideal.append(max(max(trains), sum(trains) / WORKERS))
            overhead_seq.append((seq["round_walls_s"][index] - total[-1]) / total[-1])
            overhead_par.append((par["round_walls_s"][index] - ideal[-1]) / ideal[-1])
    return {
        "steady_round_s": {mode: stats(values) for mode, values in steady.items()},
        "first_round_s": {mode: stats(values) for mode, values in first.items()},
        "processes_over_sequential": paired_ratio(steady["processes"], steady["sequential"]),
        "sum_site_train_s": stats(total), "ideal_parallel_round_s": stats(ideal),
        "overhead_sequential": stats(overhead_seq, 3), "overhead_processes": stats(overhead_par, 3),
        "same_accuracy": all(a["final_accuracy"] == b["final_accuracy"] for a, b in zip(runs["sequential"], runs["processes"]))
        if seeded else None,
        "runs": {mode: [{k: v for k, v in run.items() if k != "trains"} for run in runs[mode]] for mode in runs},
    }


def measure_default_study(scale: Scale) -> dict[str, Any]:
    """The default study (``flsuite run``'s) end to end on 1 and on 2 workers."""
    rounds, repeats = scale.pick(10, 2), scale.pick(2, 1)
    walls: dict[int, list[float]] = {1: [], WORKERS: []}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-default-") as tmp:
        for repeat in range(repeats):
            for workers in (1, WORKERS) if repeat % 2 == 0 else (WORKERS, 1):
                progress(f"parallel sites: default study, {workers} worker(s), repeat {repeat + 1}/{repeats}")
                walls[workers].append(_one([f"federation.rounds={rounds}", *_mode(workers)], Path(tmp), timed=False)["study_wall_s"])
    return {"rounds": rounds, "repeats": repeats, "study_wall_s": {str(w): stats(v) for w, v in walls.items()},
            "two_over_one": paired_ratio(walls[WORKERS], walls[1])}


def _compute_jobs(count: int, steps: int) -> list[float]:
    """The timed loops of ``count`` compute jobs started together (``compute_child``), in seconds."""
    start_at = time.time() + 6.0 if count > 1 else 0.0  # together: after every job's imports, even on a loaded machine
    jobs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            jobs.append(subprocess.Popen([sys.executable, "-m", "experiments.bench.compute_child", str(steps), str(start_at)],  # noqa: S603
                                         stdout=subprocess.PIPE, text=True))
        walls = []
        for job in jobs:
            out, _ = job.communicate(timeout=600)
            if job.returncode != 0:
                raise RuntimeError(f"compute job exited with {job.returncode}")
            walls.append(float(out.strip().splitlines()[-1]))
        return walls
    finally:
        for job in jobs:  # a failed or interrupted measurement leaves no job running: stopped by its PID
            if job.poll() is None:
                job.kill()
                job.wait()


def measure_ceiling(scale: Scale) -> dict[str, Any]:
    """Two identical compute jobs at once (the slower one's loop) over the same two one after the other (the
    sum of their loops), paired and alternating: the lowest "processes / sequential" two workers can reach here."""
    steps, repeats = scale.pick(4000, 300), scale.pick(4, 1)
    ratios, together, apart = [], [], []
    for repeat in range(repeats):
        progress(f"parallel sites: this machine's ceiling for {WORKERS} workers, repeat {repeat + 1}/{repeats}")
        if repeat % 2 == 0:
            one_by_one = _compute_jobs(1, steps) + _compute_jobs(1, steps)
            at_once = _compute_jobs(WORKERS, steps)
        else:
            at_once = _compute_jobs(WORKERS, steps)
            one_by_one = _compute_jobs(1, steps) + _compute_jobs(1, steps)
        together.append(max(at_once))
        apart.append(sum(one_by_one))
        ratios.append(max(at_once) / sum(one_by_one))
    return {"steps": steps, "repeats": repeats, "at_once_s": stats(together), "one_after_the_other_s": stats(apart),
            "ratio": stats(ratios, 3)}


def run(scale: Scale) -> dict[str, Any]:
    load_before = os.getloadavg()
    rounds = measure_rounds(scale)
    default = measure_default_study(scale)
    ceiling = measure_ceiling(scale)
    return {"rounds": rounds, "default_study": default, "ceiling": ceiling, "cores": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def table(result: dict[str, Any]) -> str:
    rounds, default = result["rounds"], result["default_study"]
    lines = [f"Study: `{' '.join(rounds['study'])}`, sequential vs `engine.parallel_sites={rounds['workers']}` "
             f"(worker processes), {rounds['repeats']} paired repeats, {result['cores']} cores, load average "
             f"{result['load_average_before'][0]:.1f} before / {result['load_average_after'][0]:.1f} after.", "",
             "| variant | round, sequential (s) | round, processes (s) | processes / sequential (target <= 0.6) "
             "| sites train, sum (s) | overhead sequential | overhead processes (target <= 0.2) | first round, sequential / processes (s) "
             "| same final accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in rounds["variants"].items():
        lines.append(f"| {name} | {v['steady_round_s']['sequential']['median']:.3f} | {v['steady_round_s']['processes']['median']:.3f} | "
                     f"{fmt_ratio(v['processes_over_sequential'])} | {v['sum_site_train_s']['median']:.3f} | "
                     f"{v['overhead_sequential']['median']:.2f} | {v['overhead_processes']['median']:.2f} | "
                     f"{v['first_round_s']['sequential']['median']:.2f} / {v['first_round_s']['processes']['median']:.2f} | "
                     f"{ {True: 'yes', False: 'NO', None: 'n/a (DP noise)'}[v['same_accuracy']] } |")
    walls = default["study_wall_s"]
    lines += ["", f"Default study ({default['rounds']} rounds, DP + secure aggregation, 5 sites), study wall time: "
              f"1 worker {walls['1']['median']:.1f} s, {rounds['workers']} workers {walls[str(rounds['workers'])]['median']:.1f} s, "
              f"ratio {fmt_ratio(default['two_over_one'])}."]
    ceiling = result.get("ceiling")
    if ceiling:  # absent from runs before it was measured
        lines += ["", f"This machine's ceiling for {rounds['workers']} workers: the same compute-bound job ({ceiling['steps']} SGD "
                  "steps of the heavier variant's MLP, one torch thread, no flsuite) run twice at once took "
                  f"{fmt_ratio(ceiling['ratio'])} of its time run twice one after the other ({ceiling['repeats']} paired "
                  "repeats); 0.5 would be two cores that do not slow each other."]
    return "\n".join(lines)
