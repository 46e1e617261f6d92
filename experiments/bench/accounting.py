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
            "never_below": all(row["never_below"] for row in rows), "hot_path": run_hot_path(scale)}


def table(result: dict[str, Any]) -> str:
    lines = ["| q | sigma | steps | PLD eps | flsuite PRV eps (/ PLD) | flsuite RDP eps (/ PLD) | s/call PLD / PRV / RDP |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s = r["seconds_per_call"]
        lines.append(f"| {r['q']} | {r['sigma']} | {r['steps']} | {r['epsilon']['pld']:.3f} | {r['epsilon']['prv']:.3f} "
                     f"({r['prv_over_pld']:.3f}) | {r['epsilon']['rdp']:.3f} ({r['rdp_over_pld']:.3f}) | "
                     f"{s['pld']['median']:.2f} / {s['prv']['median']:.2f} / {s['rdp']['median']:.2f} |")
    if "hot_path" in result:
        lines += ["", "On a study's hot path (issue 15.1), one default-study site (q 0.18, 12 steps per round), median CPU time:", "",
                  hot_path_table(result["hot_path"])]
    return "\n".join(lines)


# -- Accounting on a study's hot path (issue 15.1): before and after, side by side ----------

#: A default-study site: ~90 records at batch 16 (q 0.18), 12 steps per round, 10 rounds.
STUDY_SITE = (16 / 90, 12, 10)


def _prv_bounds_one_per_call(phases, delta):
    """flsuite's PRV call before issue 15: a new accountant per call, prv_accountant's own domain rule."""
    import math

    import numpy as np
    from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

    steps = [s for _, _, s in phases]
    prvs = [PoissonSubsampledGaussianMechanism(sampling_probability=q, noise_multiplier=sigma) for q, sigma, _ in phases]
    with np.errstate(all="ignore"):
        prv = PRVAccountant(prvs=prvs, max_self_compositions=steps, eps_error=0.01, delta_error=delta / 1000)
        lower, _, upper = prv.compute_epsilon(delta, steps)
    if not (math.isfinite(upper) and math.isfinite(lower)):
        raise ArithmeticError(f"PRV epsilon bounds are [{lower}, {upper}]")
    return float(lower), float(upper)


def _study_accounting(variant: str) -> tuple[float, float, list[float]]:
    """CPU seconds to plan one site's sigma for epsilon 3, then to report its epsilon after each round."""
    from unittest import mock

    from flsuite.privacy import accounting

    q, steps_per_round, rounds = STUDY_SITE
    accounting.clear_cache()  # a fresh process, as a new `flsuite run`
    patch = mock.patch.object(accounting, "_prv_bounds", _prv_bounds_one_per_call) if variant == "before" else mock.MagicMock()
    with patch:
        start = time.process_time()
        sigma = accounting.noise_multiplier_for(target_epsilon=3.0, delta=DELTA, sample_rate=q, steps=steps_per_round * rounds)
        planned = time.process_time()
        curve = [accounting.epsilon([(q, sigma, steps_per_round * k)], delta=DELTA) for k in range(1, rounds + 1)]
        reported = time.process_time()
    return planned - start, reported - planned, curve


def run_hot_path(scale: Scale) -> dict[str, Any]:
    from experiments import budget_check_cost

    repeats = scale.pick(3, 1)
    seconds: dict[str, dict[str, list[float]]] = {v: {"plan": [], "rounds": [], "check_ms": []} for v in ("before", "after")}
    curves: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved
        for variant in ("before", "after"):
            progress(f"accounting hot path, {variant}")
            plan_s, rounds_s, curves[variant] = _study_accounting(variant)
            seconds[variant]["plan"].append(plan_s)
            seconds[variant]["rounds"].append(rounds_s)
            check = budget_check_cost.before if variant == "before" else budget_check_cost.after
            number = 1 if variant == "before" else 50
            start = time.process_time()
            for _ in range(number):
                check()
            seconds[variant]["check_ms"].append((time.process_time() - start) / number * 1e3)
    return {
        "site": {"sample_rate": STUDY_SITE[0], "steps_per_round": STUDY_SITE[1], "rounds": STUDY_SITE[2]},
        "seconds": {v: {k: stats(x, 4) for k, x in parts.items()} for v, parts in seconds.items()},
        "max_relative_difference_of_reported_epsilons": max(
            abs(a - b) / b for a, b in zip(curves["after"], curves["before"])
        ),
    }


def hot_path_table(result: dict[str, Any]) -> str:
    s = result["seconds"]
    rows = [
        ("plan one site's sigma (epsilon 3, 10 rounds)", "plan", "s"),
        ("report its epsilon after each of 10 rounds", "rounds", "s"),
        ("one budget check (20 prior rounds)", "check_ms", "ms"),
    ]
    lines = ["| CPU time | before | after | after / before |", "|---|---|---|---|"]
    for label, key, unit in rows:
        b, a = s["before"][key]["median"], s["after"][key]["median"]
        lines.append(f"| {label} ({unit}) | {b:.3f} | {a:.3f} | {a / b:.3f} |")
    lines.append(f"\nReported epsilons after vs before differ by at most {result['max_relative_difference_of_reported_epsilons']:.1e} (relative).")
    return "\n".join(lines)
