"""One CSV load in a fresh process, for csv_load: prints its seconds, the peak RSS during the load
and the RSS it started from (the interpreter and the loader's imports) as JSON.

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

    baseline = _reset_peak()
    started = time.perf_counter()
    dataset = load(path, label_column="label")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "records": len(dataset),
                      "peak_rss_kib": _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "baseline_rss_kib": baseline}))


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux: clear_refs 5), so the imports' own peak does
    not hide the load's; returns the RSS the load starts from (KiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main(sys.argv[1:])
