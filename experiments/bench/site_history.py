"""A site with a history (issue 15.1 after many studies): the default study at sites that ran studies before.

A site's ledger keeps every round it ever trained, and its budget check, its spend and the
epsilon it reports compose all of them. This measurement runs the default study
(``privacy.target_epsilon=1.2``, so that several fit under each site's cap of 10, and
``secagg.clip_out_of_range=true``, as such noisy updates need) a few times on one sites folder,
recording each study's wall time as the ledgers grow; then, from copies of that folder, the
next study before and after (``legacy_accounting``: whole-ledger reads and prv_accountant's
composer, as until this change), alternating, in this process, each starting as a fresh process
would (no cached epsilons, accountants or ledger reads). Reported: study wall time, the time in
the sites' privacy guard (reserve, spend, status) and in the coordinator's planning, ledger
entries per site, and how far apart the epsilons both report are.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from experiments.bench.harness import Scale, fmt_ratio, paired_ratio, progress, stats
from experiments.bench.legacy_accounting import forget, legacy_accounting

STUDY = ["privacy.target_epsilon=1.2", "secagg.clip_out_of_range=true"]
VARIANTS = ("before", "after")


@contextlib.contextmanager
def _timed_privacy() -> Iterator[dict[str, float]]:
    """Seconds spent in the sites' privacy guard and in the coordinator's DP planning."""
    from flsuite.coordinator.admission import DpAdmission
    from flsuite.site.privacy_guard import SitePrivacy

    spent: dict[str, float] = defaultdict(float)

    def timing(owner: type, name: str, label: str):  # noqa: ANN202
        real = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        return mock.patch.object(owner, name, timed)

    with (timing(SitePrivacy, "reserve", "guard_s"), timing(SitePrivacy, "spend", "guard_s"),
          timing(SitePrivacy, "status", "guard_s"), timing(DpAdmission, "plan", "planning_s")):
        yield spent


def _study(sites: Path, output: Path) -> dict[str, Any]:
    from flsuite.config import compose_study
    from flsuite.simulation import run_local_study

    forget()  # a fresh `flsuite run`
    study = compose_study([*STUDY, f"sites_dir={sites}"])
    with _timed_privacy() as spent:
        summary = run_local_study(study, output)
    if summary["status"] != "completed":
        raise RuntimeError(f"the history study did not complete: {summary.get('reasons')}")
    with (output / "privacy.csv").open(newline="") as handle:
        epsilons = [float(row["epsilon"]) for row in csv.DictReader(handle)]
    return {"wall_s": summary["wall_s"], "guard_s": spent["guard_s"], "planning_s": spent["planning_s"], "epsilons": epsilons}


def _entries(sites: Path) -> list[int]:
    return [len((folder / "ledger.jsonl").read_bytes().splitlines()) for folder in sorted(sites.iterdir())
            if (folder / "ledger.jsonl").exists()]


def run(scale: Scale) -> dict[str, Any]:
    prior, repeats = scale.pick(4, 1), scale.pick(2, 1)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        root = Path(tmp)
        history = root / "sites"
        growth = []
        for number in range(1, prior + 1):
            progress(f"site history: study {number} of {prior} builds the ledgers")
            growth.append(_study(history, root / f"history-{number}"))
        entries = _entries(history)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for repeat in range(repeats):
            for variant in VARIANTS if repeat % 2 else VARIANTS[::-1]:
                progress(f"site history: study {prior + 1}, {variant}, repeat {repeat + 1}/{repeats}")
                sites = root / f"{variant}-{repeat}"
                shutil.copytree(history, sites)
                with legacy_accounting() if variant == "before" else contextlib.nullcontext():
                    runs[variant].append(_study(sites, root / f"out-{variant}-{repeat}"))
    wall = {v: [r["wall_s"] for r in runs[v]] for v in VARIANTS}
    return {
        "study": STUDY, "prior_studies": prior, "ledger_entries_per_site": entries,
        "growth_wall_s": [round(g["wall_s"], 2) for g in growth],
        "wall_s": {v: stats(wall[v], 3) for v in VARIANTS},
        "guard_s": {v: stats([r["guard_s"] for r in runs[v]], 3) for v in VARIANTS},
        "planning_s": {v: stats([r["planning_s"] for r in runs[v]], 3) for v in VARIANTS},
        "after_over_before": paired_ratio(wall["after"], wall["before"]),
        "largest_epsilon_difference": max((abs(x - y) / y for a, b in zip(runs["after"], runs["before"])
                                           for x, y in zip(a["epsilons"], b["epsilons"]) if y), default=0.0),
    }


def table(result: dict[str, Any]) -> str:
    w, g, p = result["wall_s"], result["guard_s"], result["planning_s"]
    entries, prior = result["ledger_entries_per_site"], result["prior_studies"]
    span = f"{min(entries)}" if min(entries) == max(entries) else f"{min(entries)}-{max(entries)}"
    return "\n".join([
        f"The default study (`{' '.join(result['study'])}`), run {prior} time{'s' if prior > 1 else ''} on one sites folder: "
        f"study wall time {', '.join(f'{s:.1f}' for s in result['growth_wall_s'])} s as the ledgers grew (after this change; "
        f"the first also pays this process's first imports). Then study {prior + 1}, at {span} ledger entries per site, "
        "before and after, paired:", "",
        f"| study {prior + 1} at a site with a history | before | after | after / before |",
        "|---|---|---|---|",
        f"| study wall time (s) | {w['before']['median']:.1f} | {w['after']['median']:.1f} | {fmt_ratio(result['after_over_before'])} |",
        f"| in the sites' privacy guard: reserve, spend, status (s) | {g['before']['median']:.1f} | {g['after']['median']:.1f} | "
        f"{g['after']['median'] / g['before']['median']:.2f} |",
        f"| in the coordinator's DP planning (s) | {p['before']['median']:.1f} | {p['after']['median']:.1f} | "
        f"{p['after']['median'] / p['before']['median']:.2f} |",
        "",
        f"Reported epsilons, after vs before: largest relative difference {result['largest_epsilon_difference']:.1e} "
        "(the sigma search's tolerance: each accountant call agrees to 1e-10).",
    ])
