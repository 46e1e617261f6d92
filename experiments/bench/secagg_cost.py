"""Secure aggregation cost: secure round / plain round in whole studies, upload bytes, mask throughput.

Round ratio: the same study (digits, an MLP widened to ~100k parameters, IID sites, two
local epochs of plain SGD per round: a real, if light, training load) with
``secagg=secure`` and ``secagg=none``, alternating repeat by repeat, on the inline engine;
rounds after the first are compared. DP is off here so that the sites' per-round privacy
accounting (identical in both) does not dilute the ratio; the registry is off likewise.

Upload bytes and mask throughput reuse ``experiments/secagg_bench.py``: the protobuf size of
what each site sends in a secure vs a plain round (Flower wiring, 100k parameters), and
flsuite's mask generation against the raw AES-CTR / ChaCha20 keystream of ``cryptography``.

Before / after (issue 15), side by side in one run: every repeat runs the plain study, the
secure study as flsuite ran it before (PyCryptodome's GF(2^128) Shamir, swapped in by
``legacy_shamir.shamir_backend``, and the complete graph, the old default) and the secure
study as it runs now (numpy prime-field Shamir, SecAgg+'s default neighbours), in an order
that rotates repeat by repeat. The Shamir work of one round (every site splits its two
secrets for its share group, the coordinator rebuilds one secret per site) is also timed
alone with both backends.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.bench.harness import Scale, fmt_ratio, paired_ratio, progress, round_walls, run_study, stats
from experiments.bench.legacy_shamir import legacy_combine, legacy_split, shamir_backend

HIDDEN_UNITS = 280  # 64-280-280-10: 99,690 parameters
STUDY = ["experiment=digits", f"model.hidden_units={HIDDEN_UNITS}", "data.partitioning=iid", "data.min_site_records=20", "privacy=none",
         "registry.enabled=false", "training.local_epochs=2", "training.batch_size=32"]
TARGETS = {"10 sites": 1.5, "50 sites": 2.0, "upload": 1.05, "mask_over_raw": 0.8}
KINDS = ("plain", "before", "after")


def _settings(scale: Scale) -> dict[str, int]:
    return {"10 sites": 10} if scale.quick else {"10 sites": 10, "50 sites": 50}


def _overrides(kind: str, sites: int) -> list[str]:
    if kind == "plain":
        return ["secagg=none"]
    if kind == "before":  # the complete graph was the default before SecAgg+'s neighbours
        return ["secagg=secure", f"secagg.neighbours={sites - 1}"]
    return ["secagg=secure"]


def measure_rounds(scale: Scale) -> dict[str, Any]:
    from experiments.secagg_bench import bench_core
    from flsuite.config.schema import SecAggConfig

    rounds = scale.pick(6, 2)  # 5 steady rounds a study: this VM's rounds jitter by 10-20%
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        for label, sites in _settings(scale).items():
            repeats = scale.pick(3 if sites <= 10 else 2, 1)
            base = [*STUDY, f"federation.num_sites={sites}", f"federation.min_sites={max(2, sites // 2)}",
                    f"federation.rounds={rounds}"]
            walls: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for repeat in range(repeats):
                order = KINDS[repeat % 3:] + KINDS[: repeat % 3]
                for kind in order:
                    progress(f"secagg rounds: {label}, {kind}, repeat {repeat + 1}/{repeats}")
                    with shamir_backend("pycryptodome" if kind == "before" else "numpy-prime-field"):
                        _, output = run_study([*base, *_overrides(kind, sites)], Path(tmp))
                    walls[kind].append(statistics.median(round_walls(output)[1:]))
            after = SecAggConfig().settings_for(sites)
            progress(f"secagg rounds: {label}, the protocol's own work alone")
            core = bench_core(sites, after, repeats=3)
            results[label] = {
                "sites": sites, "overrides": base,
                "neighbours_before": sites - 1, "neighbours_after": after.neighbour_count, "threshold_after": after.threshold,
                "plain_round_s": stats(walls["plain"]),
                "secure_round_s_before": stats(walls["before"]), "secure_round_s": stats(walls["after"]),
                "ratio_before": paired_ratio(walls["before"], walls["plain"]), "ratio": paired_ratio(walls["after"], walls["plain"]),
                # the protocol's computation alone (every site's and the coordinator's, one thread, no messages, no
                # training: experiments/secagg_bench.bench_core): what no engineering short of fewer operations removes
                "protocol_core_s": round(core["secure_total_cpu_s"], 4),
                "ratio_floor": round((statistics.median(walls["plain"]) + core["secure_total_cpu_s"]) / statistics.median(walls["plain"]), 3),
            }
    return results


def measure_shamir(scale: Scale) -> dict[str, Any]:
    """One round's Shamir work alone: n sites split two secrets each, the coordinator rebuilds n."""
    from flsuite.config.schema import SecAggConfig
    from flsuite.secagg import primitives as crypto

    results = {}
    for sites in scale.pick((10, 50), (10,)):
        full = SecAggConfig(neighbours=sites - 1).settings_for(sites)
        default = SecAggConfig().settings_for(sites)
        cases = {"before": (full, "pycryptodome"), "after, same graph": (full, "numpy"), "after": (default, "numpy")}
        row: dict[str, Any] = {}
        for name, (settings, backend) in cases.items():
            group, t = settings.share_group, settings.threshold
            secrets = [os.urandom(32), os.urandom(32)]
            times = []
            for _ in range(scale.pick(3, 1)):
                started = time.perf_counter()
                for _site in range(sites):
                    if backend == "pycryptodome":
                        shares = [legacy_split(s, threshold=t, holders=group) for s in secrets]
                        legacy_combine(list(enumerate(shares[0], start=1))[:t])
                    else:
                        shares = crypto.split_secrets(secrets, threshold=t, holders=group)
                        crypto.combine_secret(list(enumerate(shares[0], start=1))[:t])
                times.append(time.perf_counter() - started)
            row[name] = {"group": group, "threshold": t, "seconds": stats(times)}
        row["speedup_same_graph"] = round(row["before"]["seconds"]["median"] / row["after, same graph"]["seconds"]["median"], 1)
        results[f"{sites} sites"] = row
    return results


def measure_wire_and_masks(scale: Scale) -> dict[str, Any]:
    from experiments.secagg_bench import PARAMS, bench_flower, bench_throughput, mask_over_raw
    from flsuite.secagg import SecAggSettings

    progress("secagg: mask throughput and upload bytes")
    throughput = bench_throughput(scale.pick(3, 1))
    paired = {cipher: mask_over_raw(cipher, pairs=scale.pick(15, 5)) for cipher in ("aes-256-ctr", "chacha20")}
    flower = bench_flower(10, SecAggSettings(cohort_size=10, threshold=6), scale.pick(3, 1))
    return {
        "params": PARAMS,
        "upload_bytes": {"secure": flower["upload_bytes_secure"], "plain": flower["upload_bytes_plain"],
                         "ratio": round(flower["upload_ratio"], 4)},
        "throughput_Bps": throughput,
        "mask_over_raw": {
            # paired, interleaved, CPU time, same bytes (secagg_bench.mask_over_raw): median and spread
            "aes_ctr_apply_100k": round(paired["aes-256-ctr"]["median"], 3),
            "chacha20_apply_100k": round(paired["chacha20"]["median"], 3),
            "aes_ctr_apply_100k_spread": [round(paired["aes-256-ctr"]["min"], 3), round(paired["aes-256-ctr"]["max"], 3)],
            "chacha20_apply_100k_spread": [round(paired["chacha20"]["min"], 3), round(paired["chacha20"]["max"], 3)],
            "aes_ctr_stream_64MiB": round(throughput["mask_aes_ctr_64MiB_Bps"] / throughput["raw_aes_ctr_update_into_Bps"], 3),
            "chacha20_stream_64MiB": round(throughput["mask_chacha20_64MiB_Bps"] / throughput["raw_chacha20_update_into_Bps"], 3),
        },
        "fake_grid_round_10_sites_instant_training": {k: flower[k] for k in ("secure_round_s", "plain_round_s", "round_ratio")},
    }


def run(scale: Scale) -> dict[str, Any]:
    return {"rounds": measure_rounds(scale), "shamir": measure_shamir(scale), "wire": measure_wire_and_masks(scale),
            "targets": TARGETS}


def table(result: dict[str, Any]) -> str:
    lines = [f"Study: `{' '.join(STUDY)}`, inline engine, median of rounds after the first. Before: "
             "PyCryptodome's GF(2^128) Shamir and the complete graph; after: numpy GF(2^31-1) Shamir and "
             "SecAgg+'s default neighbours (3·log2 n, up to even).", "",
             "| sites | plain round (s) | secure round before (s) | secure / plain before | neighbours after | "
             "secure round after (s) | secure / plain after | protocol's crypto alone (s) | floor: (plain + crypto) / plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, row in result["rounds"].items():
        if "ratio_before" not in row:  # a result from before the before/after columns
            lines.append(f"| {label} | {row['plain_round_s']['median']:.3f} | | | | "
                         f"{row['secure_round_s']['median']:.3f} | {fmt_ratio(row['ratio'])} |")
            continue
        lines.append(f"| {label} | {row['plain_round_s']['median']:.3f} | {row['secure_round_s_before']['median']:.3f} | "
                     f"{fmt_ratio(row['ratio_before'])} | {row['neighbours_after']} (t={row['threshold_after']}) | "
                     f"{row['secure_round_s']['median']:.3f} | {fmt_ratio(row['ratio'])} | {_floor(row)} |")
    if result.get("shamir"):
        lines += ["", "Shamir work of one round alone (each site splits 2 secrets for its share group, the "
                  "coordinator rebuilds one per site), seconds:", "",
                  "| sites | before (group, t) | after, same graph | after, default graph (group, t) | speed-up, same graph |",
                  "|---|---|---|---|---|"]
        for label, row in result["shamir"].items():
            b, same, a = row["before"], row["after, same graph"], row["after"]
            lines.append(f"| {label} | {b['seconds']['median']:.4f} ({b['group']}, {b['threshold']}) | "
                         f"{same['seconds']['median']:.4f} | {a['seconds']['median']:.4f} ({a['group']}, {a['threshold']}) | "
                         f"{row['speedup_same_graph']}x |")
    wire = result["wire"]
    t, m = wire["throughput_Bps"], wire["mask_over_raw"]
    gb = lambda v: f"{v / 1e9:.2f} GB/s"  # noqa: E731
    lines += ["", "| measure | value |", "|---|---|",
              f"| upload bytes per site, secure / plain ({wire['params']:,} params) | {wire['upload_bytes']['secure']:,.0f} / "
              f"{wire['upload_bytes']['plain']:,.0f} = {wire['upload_bytes']['ratio']:.4f} |",
              f"| raw keystream, `cryptography` (256 KiB update_into): AES-256-CTR / ChaCha20 | "
              f"{gb(t['raw_aes_ctr_update_into_Bps'])} / {gb(t['raw_chacha20_update_into_Bps'])} |",
              f"| flsuite apply_mask (generate + add in place, 100k words) over the raw keystream of the same bytes, "
              f"paired, CPU time, median (spread): AES / ChaCha20 | {m['aes_ctr_apply_100k']:.2f}x "
              f"({_spread(m, 'aes_ctr_apply_100k')}) / {m['chacha20_apply_100k']:.2f}x ({_spread(m, 'chacha20_apply_100k')}) |",
              f"| flsuite mask_stream (new 64 MiB array): AES / ChaCha20 | {gb(t['mask_aes_ctr_64MiB_Bps'])} "
              f"({m['aes_ctr_stream_64MiB']:.2f}x raw) / {gb(t['mask_chacha20_64MiB_Bps'])} ({m['chacha20_stream_64MiB']:.2f}x raw) |"]
    return "\n".join(lines)


def _floor(row: dict[str, Any]) -> str:
    if "protocol_core_s" not in row:  # a result from before this column
        return " | "
    return f"{row['protocol_core_s']:.3f} | {row['ratio_floor']:.2f}"


def _spread(ratios: dict[str, Any], name: str) -> str:
    spread = ratios.get(f"{name}_spread")  # absent in results from before the paired measure
    return f"{spread[0]:.2f}-{spread[1]:.2f}" if spread else "one run"
