"""Why a long DP study's rounds grew, before / after, paired in one run (issue 15: rounds that cost
what their training costs).

In a 60-round study of the bench's 10-site DP + secure aggregation setting, the rounds grew from
about 0.8 s to 1.1 s. py-spy put the growth in the sites, in two places that every round pays more
for than the one before:
- each site's status reports the epsilon it has spent, computed exactly (PRV) at a step count no
  round asked for before, and the PRV composition's cost grows with the step count;
- each read of a site's privacy ledger after a write (3-4 a round) decoded every line of it.

Later (2026-12-01, night), the study's registry: each version's DP certificate listed one phase per
site and round, so every version repeated the whole history and the audit log grew as the square
of the rounds.

Three measurements, each in a fresh process whose ``flsuite`` comes from the tree under test, the
trees alternating pair by pair:
- the study (``federation.rounds=ROUNDS``, ``privacy.max_epsilon=1000`` so that every round fits):
  its wall time, the median of rounds 2-6 and of the last five; each version's publish time (the
  median of rounds 2-6 and of the last five); the registry's audit log, catalogue and last version
  entry in kB; and ``verify_registry`` over the whole registry, as an auditor runs it offline;
- one exact epsilon at a new step count, (q, sigma) = (0.25, 2.0) at 481-490 steps (a site about
  60 rounds into that study), mean of the ten;
- one ledger read after a write, on a ledger of 180 entries (the same site's), mean of 20, with
  the number of lines decoded from JSON.

Run: ``git worktree add /tmp/before REV`` (the commit before the change), then
``PYTHONPATH=. python -m experiments.long_study_cost --before /tmp/before``; the table is printed
and the figures written to ``experiments/results/long_study.json`` (``--out`` names another file).
``--csv`` times only the formatting of a study's per-site CSV files (privacy.csv, site_metrics.csv),
rewritten every round: whole each round before, row by row (``CsvText``) after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "long_study.json"


def study(rounds: int) -> dict[str, float]:
    """The study's wall time and rounds; its registry's size, each version's publish time and an auditor's
    offline verification of the whole registry."""
    from experiments.bench.harness import round_walls, run_study
    from experiments.bench.parallel import STUDY, VARIANTS
    from flsuite.registry import Registry, verify_registry

    publishes: list[float] = []
    real_publish = Registry.publish

    def timed_publish(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the tree's own signature
        started = time.perf_counter()
        try:
            return real_publish(self, *args, **kwargs)
        finally:
            publishes.append(time.perf_counter() - started)

    Registry.publish = timed_publish
    try:
        with tempfile.TemporaryDirectory(prefix="long-study-") as tmp:
            started = time.perf_counter()
            summary, output = run_study([*STUDY, *VARIANTS["DP + secure aggregation"], f"federation.rounds={rounds}",
                                         "privacy.max_epsilon=1000"], Path(tmp))
            wall = time.perf_counter() - started
            if summary["status"] != "completed":
                raise RuntimeError(f"the study did not complete: {summary.get('reasons')}")
            walls = round_walls(output)
            registry = output / "registry"
            lines = (registry / "audit.jsonl").read_bytes().splitlines()
            started = time.perf_counter()
            if not verify_registry(registry).ok:
                raise RuntimeError("the study's registry does not verify")
            verify_s = time.perf_counter() - started
            sizes = {"audit_log_kB": sum(len(line) + 1 for line in lines) / 1e3,
                     "catalogue_kB": (registry / "catalogue.sqlite").stat().st_size / 1e3,
                     "last_version_entry_kB": max(len(line) for line in lines if b'"version.published"' in line) / 1e3}
    finally:
        Registry.publish = real_publish
    return {"study_wall_s": wall, "early_round_s": statistics.median(walls[1:6]), "late_round_s": statistics.median(walls[-5:]),
            "early_publish_ms": 1000 * statistics.median(publishes[1:6]), "late_publish_ms": 1000 * statistics.median(publishes[-5:]),
            "verify_registry_s": verify_s, **sizes}


def epsilon_at_new_steps() -> dict[str, float]:
    from flsuite.privacy import epsilon

    epsilon([(0.25, 2.0, 480)], delta=1e-5)  # the accountant for up to 512 steps, built once
    started = time.perf_counter()
    for steps in range(481, 491):
        epsilon([(0.25, 2.0, steps)], delta=1e-5)
    return {"epsilon_ms": (time.perf_counter() - started) * 100}


def ledger_read_after_write() -> dict[str, float]:
    import flsuite.storage.chain as chain
    from flsuite.privacy.events import DpEvent
    from flsuite.privacy.ledger import PrivacyLedger

    def event(number: int) -> DpEvent:
        return DpEvent(study_id="long", run_id="run-1", round=number, site="site-0", dataset="site-0", sample_rate=0.25,
                       noise_multiplier=2.0, steps=8, max_grad_norm=1.0, delta=1e-5, accountant="prv",
                       rng="torch.Generator mt19937", recorded_at="2026-12-01T00:00:00+00:00")

    decodes = [0]
    real = chain._json_object

    def counting(line: bytes):  # noqa: ANN202 - the chain's JSON decoder, counted
        decodes[0] += 1
        return real(line)

    with tempfile.TemporaryDirectory(prefix="long-ledger-") as tmp:
        ledger = PrivacyLedger(Path(tmp) / "ledger.jsonl")
        for number in range(1, 181):
            ledger.append(event(number))
        ledger.state()
        times = []
        chain._json_object = counting
        try:
            for number in range(181, 201):
                ledger.append(event(number))
                started = time.perf_counter()
                ledger.state()
                times.append(time.perf_counter() - started)
        finally:  # the study measured after this in the same process decodes uncounted
            chain._json_object = real
    return {"ledger_read_ms": 1000 * statistics.mean(times), "lines_decoded_per_read": decodes[0] / len(times)}


def csv_formatting(rounds: int, sites: int = 10) -> dict[str, float]:
    """The CSV text of a study's per-site files round by round, formatted whole every round (before)
    and row by row (``CsvText``, after), in this process: milliseconds summed over the study, and
    in its last round."""
    from flsuite.coordinator.outputs import CsvText, _csv

    columns = ["round", "site", "accountant", "delta", "empty_batches", "epsilon", "max_epsilon", "max_grad_norm",
               "noise_multiplier", "rng", "sample_rate", "steps"]
    rows: list[dict] = []
    text = CsvText()
    whole, grown = [], []
    for number in range(1, rounds + 1):
        rows.extend({"round": number, "site": f"site-{i}", "accountant": "prv", "delta": 1e-5, "empty_batches": 0,
                     "epsilon": 0.05 * number + i / 7, "max_epsilon": 1000.0, "max_grad_norm": 1.0, "noise_multiplier": 2.0,
                     "rng": "torch.Generator mt19937", "sample_rate": 0.25 + i / 1000, "steps": 8} for i in range(sites))
        started = time.perf_counter()
        expected = _csv(rows, columns)
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        if text.of(rows, columns) != expected:
            raise AssertionError("CsvText differs from a whole rendering")
        grown.append(time.perf_counter() - started)
    return {"csv_whole_total_ms": 1000 * sum(whole), "csv_whole_last_ms": 1000 * whole[-1],
            "csv_grown_total_ms": 1000 * sum(grown), "csv_grown_last_ms": 1000 * grown[-1]}


def child(rounds: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps({**epsilon_at_new_steps(), **ledger_read_after_write(), **study(rounds)}))


def _measure(tree: Path, rounds: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(HERE), "--child", str(rounds)], env=env, check=True, capture_output=True,
                         text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


ROWS = {
    "study wall time (s)": "study_wall_s",
    "rounds 2-6, median (s)": "early_round_s",
    "last 5 rounds, median (s)": "late_round_s",
    "one exact epsilon at a new step count, 481-490 steps (ms)": "epsilon_ms",
    "a ledger read after a write, 180 entries (ms)": "ledger_read_ms",
    "lines decoded per such read": "lines_decoded_per_read",
    "a version's publish, rounds 2-6, median (ms)": "early_publish_ms",
    "a version's publish, last 5 rounds, median (ms)": "late_publish_ms",
    "the last version's audit-log entry (kB)": "last_version_entry_kB",
    "the registry's audit log (kB)": "audit_log_kB",
    "the registry's catalogue (kB)": "catalogue_kB",
    "an auditor's offline verification of the registry (s)": "verify_registry_s",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the commit before the change")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--csv", action="store_true", help="only the CSV formatting of a study's per-site files, "
                        "formatted whole every round and row by row, in this process (one file; a study writes two)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(HERE.parents[1])})")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.csv:
        for rounds in (60, 500):
            print(json.dumps({"rounds": rounds, **{k: round(v, 2) for k, v in csv_formatting(rounds).items()}}))
        return
    if args.before is None or not (args.before / "flsuite").is_dir():
        parser.error("--before must be a checkout of the commit before the change (git worktree add /tmp/before REV)")
    trees = {"before": args.before.resolve(), "after": HERE.parents[1]}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for pair in range(args.pairs):
        for name in (("before", "after") if pair % 2 == 0 else ("after", "before")):
            print(f"pair {pair + 1}/{args.pairs}: {name}", file=sys.stderr, flush=True)
            runs[name].append(_measure(trees[name], args.rounds))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}",
        "load_average": os.getloadavg(), "rounds": args.rounds, "pairs": args.pairs, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| {args.rounds}-round study, 10 sites, DP + secure aggregation | before | after | after / before |")
    print("|---|---|---|---|")
    for label, key in ROWS.items():
        before = statistics.median(run[key] for run in runs["before"])
        after = statistics.median(run[key] for run in runs["after"])
        print(f"| {label} | {before:.3g} | {after:.3g} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
