"""Accounting: flsuite's epsilon (PRV, its default, and RDP) against Google's dp_accounting PLD.

For each (q, sigma, steps) at delta 1e-5: the ratio flsuite / PLD (flsuite must never be
below PLD; target <= 1.05 for PRV) and the wall time of one uncached call of each, repeated.
flsuite caches epsilon per phase list; the cache is cleared before every timed call.
"""

from __future__ import annotations

import time
from typing import Any

from experiments.bench.harness import Scale, progress, stats

DELTA = 1e-5
#: Known answers from the privacy notes, Opacus' own test, and settings of flsuite's studies
#: (a site of ~100-400 records at batch 16-32, 10-20 rounds of 2 local epochs).
SETTINGS = [
    (0.01, 1.0, 500), (0.1, 1.5, 500), (0.04, 1.5, 2250), (0.16, 1.2, 120), (0.08, 0.9, 250),
    (0.05, 0.8, 1000), (0.2, 2.0, 100), (0.25, 1.0, 200), (0.5, 3.0, 50), (1.0, 5.0, 20),
]
QUICK_SETTINGS = [(0.01, 1.0, 500), (0.16, 1.2, 120)]
TARGET_PRV = 1.05


def pld_epsilon(q: float, sigma: float, steps: int, delta: float = DELTA) -> float:
    import dp_accounting
    from dp_accounting import pld

    accountant = pld.PLDAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return float(accountant.get_epsilon(delta))


def _flsuite(q: float, sigma: float, steps: int, accountant: str) -> float:
    from flsuite.privacy import epsilon
    from flsuite.privacy.accounting import clear_cache

    clear_cache()  # time the computation, not flsuite's per-phase cache
    return epsilon([(q, sigma, steps)], delta=DELTA, accountant=accountant)


def _timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def run(scale: Scale) -> dict[str, Any]:
    repeats = scale.pick(2, 1)
    rows = []
    for q, sigma, steps in scale.pick(SETTINGS, QUICK_SETTINGS):
        progress(f"accounting q={q} sigma={sigma} steps={steps}")
        values: dict[str, float] = {}
        times: dict[str, list[float]] = {"pld": [], "prv": [], "rdp": []}
        for _ in range(repeats):  # interleaved, as everywhere
            values["pld"], t = _timed(pld_epsilon, q, sigma, steps)
            times["pld"].append(t)
            for accountant in ("prv", "rdp"):
                values[accountant], t = _timed(_flsuite, q, sigma, steps, accountant)
                times[accountant].append(t)
        rows.append({
            "q": q, "sigma": sigma, "steps": steps, "delta": DELTA,
            "epsilon": {k: round(v, 4) for k, v in values.items()},
            "prv_over_pld": round(values["prv"] / values["pld"], 4),
            "rdp_over_pld": round(values["rdp"] / values["pld"], 4),
            "never_below": values["prv"] >= values["pld"] and values["rdp"] >= values["pld"],
            "seconds_per_call": {k: stats(v, 3) for k, v in times.items()},
        })
    prv = [row["prv_over_pld"] for row in rows]
    return {"rows": rows, "target_prv_over_pld": TARGET_PRV, "prv_over_pld": stats(prv, 4),
            "rdp_over_pld": stats([row["rdp_over_pld"] for row in rows], 4),
            "never_below": all(row["never_below"] for row in rows)}


def table(result: dict[str, Any]) -> str:
    lines = ["| q | sigma | steps | PLD eps | flsuite PRV eps (/ PLD) | flsuite RDP eps (/ PLD) | s/call PLD / PRV / RDP |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s = r["seconds_per_call"]
        lines.append(f"| {r['q']} | {r['sigma']} | {r['steps']} | {r['epsilon']['pld']:.3f} | {r['epsilon']['prv']:.3f} "
                     f"({r['prv_over_pld']:.3f}) | {r['epsilon']['rdp']:.3f} ({r['rdp_over_pld']:.3f}) | "
                     f"{s['pld']['median']:.2f} / {s['prv']['median']:.2f} / {s['rdp']['median']:.2f} |")
    return "\n".join(lines)
