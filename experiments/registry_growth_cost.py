"""What publishing a round costs as a registry's audit log grows (issue 15: rounds that cost what
their training costs), before / after, paired in one run.

A registry serves every study a team runs, and the coordinator publishes a signed version and
records a study event every round, so its audit log only grows. Each measurement copies a registry
that already holds N versions (each with a 10-site DP certificate, and one study event each),
opens it, and times ``rounds`` rounds of one ``publish`` and one ``record``, in a fresh process
whose ``flsuite`` comes from the tree under test; the trees alternate, pair by pair.

Run: ``git worktree add /tmp/before REV`` (the commit before the change), then
``PYTHONPATH=. python -m experiments.registry_growth_cost --before /tmp/before``; the table is
printed, and the figures written to ``experiments/results/registry_growth.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (0, 500, 2000, 5000)
SITES = [f"site-{i}" for i in range(10)]
HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "registry_growth.json"


def _round(registry, number: int) -> None:  # noqa: ANN001 - a Registry of the tree under test
    from flsuite.registry.testing import publish_sample, sample_certificate

    publish_sample(registry, round=number, sites=SITES,
                   dp_certificate=sample_certificate({site: 1.0 + number * 1e-3 for site in SITES}))
    registry.record("study.round_ended", {"round": number, "sites": SITES})


def child(folder: Path, key: Path, rounds: int) -> None:
    """In the tree under test: time ``rounds`` rounds on the registry at ``folder``; print JSON."""
    from flsuite.registry import Registry

    with Registry.open(folder, signing_key_path=key) as registry:
        start = len(registry.versions())
        times = []
        for number in range(start + 1, start + rounds + 1):
            begin = time.perf_counter()
            _round(registry, number)
            times.append(time.perf_counter() - begin)
    print(json.dumps({"median_ms": 1000 * statistics.median(times)}))


def _measure(tree: Path, snapshot: Path, key: Path, work: Path, rounds: int) -> dict:
    folder = work / "registry"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(snapshot, folder)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(HERE), "--child", str(folder), str(key), str(rounds)],
                         env=env, check=True, capture_output=True, text=True, cwd=work).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the commit before the change")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    if args.before is None or not (args.before / "flsuite").is_dir():
        parser.error("--before must be a checkout of the commit before the change (git worktree add /tmp/before REV)")
    after = HERE.parents[1]
    from flsuite.registry import Registry

    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        key = work / "coordinator.pem"
        snapshots, rows = {}, []
        with Registry.open(work / "base", signing_key_path=key) as registry:
            for size in SIZES:
                for number in range(len(registry.versions()) + 1, size + 1):
                    _round(registry, number)
                snapshots[size] = work / f"at-{size}"
                shutil.copytree(work / "base", snapshots[size])
        for size in SIZES:
            results: dict[str, list[float]] = {"before": [], "after": []}
            log_bytes = (snapshots[size] / "audit.jsonl").stat().st_size
            for pair in range(args.pairs):
                order = [("before", args.before), ("after", after)]
                for name, tree in order if pair % 2 == 0 else reversed(order):
                    measured = _measure(tree, snapshots[size], key, work, args.rounds)
                    results[name].append(measured["median_ms"])
            before, after_ms = statistics.median(results["before"]), statistics.median(results["after"])
            rows.append({"versions": size, "log_bytes": log_bytes, "before_ms": before, "after_ms": after_ms,
                         "before_runs": results["before"], "after_runs": results["after"]})
            print(f"| {size:,} | {log_bytes / 2**20:.1f} MiB | {before:.1f} ms | {after_ms:.1f} ms | "
                  f"{before / after_ms:.1f}x |", flush=True)
    from experiments.bench.harness import cpu_model

    result = {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "python": platform.python_version(),
              "load_average": [round(v, 2) for v in os.getloadavg()], "rounds": args.rounds, "pairs": args.pairs, "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
