"""One study in a fresh process, for engine comparisons: prints its timeline as one JSON line.

    python -m experiments.bench.study_child OUTPUT_DIR OVERRIDE...

The parent passes its launch time in ``FLSUITE_BENCH_LAUNCHED`` (time.time()), so the
start-up time includes the interpreter and the imports. Round ends come from flsuite's
progress events, which the ServerApp publishes in this process on both engines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    launched = float(os.environ.get("FLSUITE_BENCH_LAUNCHED", time.time()))
    from experiments.bench.harness import quiet_logs, single_thread

    single_thread()
    from flsuite.config import compose_study
    from flsuite.coordinator import progress
    from flsuite.simulation import run_local_study

    quiet_logs()
    imported = time.time()
    output, overrides = Path(argv[0]), argv[1:]
    round_ends: list[tuple[int, float, float]] = []
    progress.subscribe(lambda record: round_ends.append((record.round, time.time(), record.wall_s)))
    study = compose_study([*overrides, f"sites_dir={output / 'sites'}"])
    started = time.time()
    summary = run_local_study(study, output / "out")
    finished = time.time()
    first_start = round_ends[0][1] - round_ends[0][2] if round_ends else None
    print("BENCH " + json.dumps({
        "imports_s": imported - launched,
        "startup_s": (first_start - launched) if first_start else None,
        "engine_startup_s": (first_start - started) if first_start else None,
        "round_walls_s": [wall for _, _, wall in round_ends],
        "study_s": finished - started,
        "total_s": finished - launched,
        "final_accuracy": summary.get("final_accuracy"),
        "status": summary.get("status"),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
