"""CSV loading (issue 15, item 4): a site's 10^6-record, 30-feature CSV, before and after.

Each load runs in a fresh child process (``csv_child``), which reports its wall time and its
peak resident memory (ru_maxrss, so the interpreter and numpy count too): ``before`` is the
old reader (``legacy_csv``), ``after`` is ``flsuite.data.csv_source.load_csv``. Before and
after alternate repeat by repeat. Parses per study: a small simulated CSV study (5 sites,
2 rounds, inline engine) counts how often the file is parsed with load_csv's cache on (now)
and with it off (every caller parsing again, as before). ``--quick`` uses 20,000 records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench.harness import REPO, Scale, progress, run_study, stats

FEATURES = 30
TARGETS = {"seconds": 60.0, "peak_gib": 1.0, "parses_per_study": 1}


def write_csv(path: Path, records: int, *, seed: int = 0) -> None:
    """``records`` rows of 30 normal features (6 significant digits) and a label in 0..2."""
    rng = np.random.default_rng(seed)
    with path.open("w") as handle:
        handle.write(",".join([f"f{i}" for i in range(FEATURES)] + ["label"]) + "\n")
        for start in range(0, records, 50_000):
            n = min(50_000, records - start)
            block = np.column_stack([rng.normal(size=(n, FEATURES)), rng.integers(0, 3, n)])
            np.savetxt(handle, block, delimiter=",", fmt=["%.6g"] * FEATURES + ["%d"])


def _child(mode: str, path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "experiments.bench.csv_child", mode, str(path)], env=env,
                          capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


#: The generated features are standard normal: declared ranges (a CSV study must declare them).
RANGES = "+data.feature_ranges={" + ",".join(f"f{i}:[-5,5]" for i in range(FEATURES)) + "}"


def parses_per_study(path: Path, tmp: Path) -> dict[str, int]:
    from flsuite.data import csv_source

    counts = {}
    original = csv_source._read
    for label, cache_size in (("before (no cache)", 0), ("after", csv_source._CACHE.size)):
        calls: list[Path] = []

        def counted(*args, calls=calls, **kwargs):
            calls.append(args[0])
            return original(*args, **kwargs)

        saved_size = csv_source._CACHE.size  # load_csv's FileVersionCache; size 0 keeps nothing (every caller parses)
        csv_source._read, csv_source._CACHE.size = counted, cache_size
        csv_source.clear_csv_cache()
        try:
            run_study(["experiment=smoke", "data=csv", f"data.csv_path={path}", "data.label_column=label", RANGES,
                       "federation.num_sites=5", "federation.min_sites=2", "privacy=none", "secagg=none",
                       "registry.enabled=false"], tmp)
        finally:
            csv_source._read, csv_source._CACHE.size = original, saved_size
            csv_source.clear_csv_cache()
        counts[label] = len(calls)
    return counts


def run(scale: Scale) -> dict[str, Any]:
    records = scale.pick(1_000_000, 20_000)
    repeats = scale.pick(2, 1)
    with tempfile.TemporaryDirectory(prefix="bench-csv-") as tmp:
        path = Path(tmp) / "site.csv"
        progress(f"csv: writing {records:,} x {FEATURES} records")
        write_csv(path, records)
        size = path.stat().st_size
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for repeat in range(repeats):
            for mode in (("before", "after") if repeat % 2 == 0 else ("after", "before")):
                progress(f"csv: {mode}, repeat {repeat + 1}/{repeats}")
                runs[mode].append(_child(mode, path))
        progress("csv: parses per study")
        small = Path(tmp) / "small.csv"
        write_csv(small, 2_000, seed=1)
        parses = parses_per_study(small, Path(tmp))
    result: dict[str, Any] = {"records": records, "features": FEATURES, "file_mb": round(size / 1e6, 1),
                              "parses_per_study": parses, "targets": TARGETS}
    for mode, rows in runs.items():
        result[mode] = {"seconds": stats([r["seconds"] for r in rows], 2),
                        "peak_gib": stats([r["peak_rss_kib"] / 2**20 for r in rows], 3),
                        "added_gib": stats([(r["peak_rss_kib"] - r["baseline_rss_kib"]) / 2**20 for r in rows], 3)}
    before_parses = parses["before (no cache)"]
    result["before"]["study_seconds"] = round(before_parses * result["before"]["seconds"]["median"], 1)
    result["after"]["study_seconds"] = round(parses["after"] * result["after"]["seconds"]["median"], 1)
    return result


def table(result: dict[str, Any]) -> str:
    b, a, p = result["before"], result["after"], result["parses_per_study"]
    return "\n".join([
        f"{result['records']:,} records x {result['features']} features + label ({result['file_mb']} MB), one load per "
        "fresh process (peak RSS during the load, the interpreter and imports included); parses per study counted in a 5-site, "
        "2-round simulated CSV study.", "",
        "| | before | after |", "|---|---|---|",
        f"| one load (s) | {b['seconds']['median']:.1f} | {a['seconds']['median']:.1f} |",
        f"| peak memory of the process during the load (GiB) | {b['peak_gib']['median']:.2f} | {a['peak_gib']['median']:.2f} |",
        f"| of which the load added (GiB) | {b['added_gib']['median']:.2f} | {a['added_gib']['median']:.2f} |",
        f"| parses per study | {p['before (no cache)']} | {p['after']} |",
        f"| loading per study (s, parses x one load) | {b['study_seconds']:.1f} | {a['study_seconds']:.1f} |",
    ])
