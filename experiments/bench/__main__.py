"""``python -m experiments.bench [--quick] [--only NAME,...] [--out DIR] [--seeds N]``

Runs the measurements (all, or ``--only`` some, merged into an existing bench.json), saving
bench.json after each. A full run also rewrites the generated tables of experiments/README.md.
``--quick`` makes every measurement small and writes to experiments/results/quick/ unless
``--out`` says otherwise; it never touches the README. Exit status 1 if a measurement failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from experiments.bench import MEASUREMENTS
from experiments.bench.harness import REPO, RESULTS_DIR, Scale, machine_info, progress, quiet_logs, single_thread


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description="flsuite's benchmark harness.")
    parser.add_argument("--quick", action="store_true", help="every measurement small: seconds each (smoke test)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(MEASUREMENTS)}")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default experiments/results[/quick])")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the utility sweep (default 3, quick 1)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite experiments/README.md")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MEASUREMENTS)
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown:
        parser.error(f"--only: unknown measurement(s) {unknown}; choose from {list(MEASUREMENTS)}")
    args.names = names
    args.out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    single_thread()
    quiet_logs()
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
    scale = Scale(quick=args.quick)
    path = args.out / "bench.json"
    args.out.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() and args.only else {}
    command = "python -m experiments.bench" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    if args.seeds:
        command += f" --seeds {args.seeds}"
    bench: dict[str, Any] = {
        "meta": {"command": command, "quick": args.quick, "machine": machine_info(),
                 "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                 "wall_s": 0.0, "modules": dict(MEASUREMENTS), "seconds": {}},
        "results": dict(previous.get("results", {})),
    }
    if previous:  # a partial re-run: keep the full run's header and list the re-runs after it
        rerun = {**{k: bench["meta"][k] for k in ("command", "started_utc", "seconds")}, "cpu": machine_info()["cpu"]}
        bench["meta"] = {**previous["meta"], "reruns": [*previous["meta"].get("reruns", []), rerun]}
        bench["meta"]["machine_at_rerun"] = machine_info()
    started, failed = time.perf_counter(), []
    for name in args.names:
        progress(f"== {name}")
        module = importlib.import_module(MEASUREMENTS[name])
        began = time.perf_counter()
        try:
            result = module.run(scale, seeds=args.seeds) if name == "utility" else module.run(scale)
            if name == "utility":
                module.plot(result, args.out / "utility.png")
            bench["results"][name] = result
            print(module.table(result), flush=True)
        except Exception as exc:  # one failed measurement must not lose the others
            traceback.print_exc()
            bench["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        seconds = round(time.perf_counter() - began, 1)
        if previous:
            bench["meta"]["reruns"][-1]["seconds"][name] = seconds
        else:
            bench["meta"]["seconds"][name] = seconds
            bench["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(bench, indent=2, default=str) + "\n")
    progress(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    if not args.quick and not args.no_readme:
        from experiments.bench.report import update_readme

        update_readme(REPO / "experiments" / "README.md", bench)
        progress("updated experiments/README.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
