"""What every measurement shares: repeat statistics, paired ratios, the machine, fresh studies.

Each ratio is measured side by side: the two variants run in the same process (or as one
paired run of two processes), alternating repeat by repeat so that the load of this shared
machine hits both alike. A statistic is always the median with the min and max of repeats.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "experiments" / "results"


@dataclass(frozen=True)
class Scale:
    """How big a run is: ``quick`` makes every measurement small (seconds) for the smoke test."""

    quick: bool = False

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def stats(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median, min and max of repeats (and how many)."""
    values = [float(v) for v in values]
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Statistics of the per-repeat ratios of two interleaved series."""
    return stats([n / d for n, d in zip(numerators, denominators, strict=True)], digits)


def fmt_ratio(entry: dict[str, Any], digits: int = 2) -> str:
    """``median (min-max)`` for a table cell."""
    return f"{entry['median']:.{digits}f} ({entry['min']:.{digits}f}-{entry['max']:.{digits}f})"


def single_thread() -> None:
    """One intra-op thread everywhere: the machine's cores are shared, and ratios must be comparable."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def quiet_logs() -> None:
    """Flower logs every round twice at INFO; the harness prints its own progress."""
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """The machine and the versions the numbers were taken with."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "flwr", "opacus", "ray", "cryptography", "dp-accounting", "prv-accountant", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "torch_threads": 1,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def run_study(overrides: Sequence[str], root: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Run one study in this process with a fresh sites folder; returns (summary, output folder).

    Each study gets its own ``sites_dir``: the sites' privacy ledgers persist across studies
    on purpose, and would make later studies of the sweep refuse.
    """
    from flsuite.config import compose_study
    from flsuite.privacy.accounting import clear_cache
    from flsuite.simulation import run_local_study

    # flsuite caches epsilon per phase list for the life of the process; a study run after
    # another in this process would find its accounting done. Each study starts cold, as in
    # a fresh `flsuite run`.
    clear_cache()
    root = Path(tempfile.mkdtemp(prefix="flsuite-bench-", dir=root))
    study = compose_study([*overrides, f"sites_dir={root / 'sites'}"])
    output = root / "out"
    return run_local_study(study, output), output


def round_walls(output: Path) -> list[float]:
    """The wall time of each round of a finished study (seconds)."""
    return [float(row["wall_s"]) for row in json.loads((output / "metrics.json").read_text())]


@contextlib.contextmanager
def site_training_times() -> Iterator[dict[int, list[float]]]:
    """Each round's local training times of its sites, timed in this process around the sites'
    training calls (a DP site withholds its own training time: it is not accounted).

    The in-process engine runs a round's sites one after another before the round's progress
    event, so the calls timed since the last event belong to the round it reports.
    """
    import flsuite.privacy.dp_training as dp_training
    import flsuite.site.handlers as handlers
    from flsuite.coordinator import progress as study_progress

    rounds: dict[int, list[float]] = {}
    current: list[float] = []

    def timed(function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                current.append(time.perf_counter() - started)

        return wrapper

    def on_round(record) -> None:
        rounds[record.round] = list(current)
        current.clear()

    saved = dp_training.train_dp, handlers.train_plain
    dp_training.train_dp, handlers.train_plain = timed(saved[0]), timed(saved[1])
    study_progress.subscribe(on_round)
    try:
        yield rounds
    finally:
        dp_training.train_dp, handlers.train_plain = saved
        study_progress.unsubscribe(on_round)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
