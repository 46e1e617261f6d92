"""One CSV load in a fresh process, for csv_load: prints its seconds, peak RSS and the peak RSS
before the load (the interpreter and the loader's imports) as JSON.

    python -m experiments.bench.csv_child before|after PATH
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(argv: list[str]) -> None:
    mode, path = argv
    if mode == "before":
        from experiments.bench.legacy_csv import legacy_load_csv as load
    else:
        from flsuite.data.csv_source import load_csv as load
    import numpy  # noqa: F401 - counted in the baseline, as every loader needs it

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    dataset = load(path, label_column="label")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "records": len(dataset),
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "baseline_rss_kib": baseline}))


if __name__ == "__main__":
    main(sys.argv[1:])
