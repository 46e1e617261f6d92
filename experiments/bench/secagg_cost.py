"""Secure aggregation cost: secure round / plain round in whole studies, upload bytes, mask throughput.

Round ratio: the same study (digits, an MLP widened to ~100k parameters, IID sites, two
local epochs of plain SGD per round: a real, if light, training load) with
``secagg=secure`` and ``secagg=none``, alternating repeat by repeat, on the inline engine;
rounds after the first are compared. DP is off here so that the sites' per-round privacy
accounting (identical in both) does not dilute the ratio; the registry is off likewise.

Upload bytes and mask throughput reuse ``experiments/secagg_bench.py``: the protobuf size of
what each site sends in a secure vs a plain round (Flower wiring, 100k parameters), and
flsuite's mask generation against the raw AES-CTR / ChaCha20 keystream of ``cryptography``.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from experiments.bench.harness import Scale, fmt_ratio, paired_ratio, progress, round_walls, run_study, stats

HIDDEN_UNITS = 280  # 64-280-280-10: 99,690 parameters
STUDY = ["experiment=digits", f"model.hidden_units={HIDDEN_UNITS}", "data.partitioning=iid", "data.min_site_records=20", "privacy=none",
         "registry.enabled=false", "training.local_epochs=2", "training.batch_size=32"]
TARGETS = {"10 sites": 1.25, "50 sites": 1.5, "upload": 1.05}


def _settings(scale: Scale) -> dict[str, tuple[int, list[str]]]:
    if scale.quick:
        return {"10 sites, full graph": (10, []), "10 sites, 4 neighbours": (10, ["secagg.neighbours=4"])}
    return {"10 sites, full graph": (10, []), "50 sites, full graph": (50, []),
            "50 sites, 10 neighbours": (50, ["secagg.neighbours=10"])}


def measure_rounds(scale: Scale) -> dict[str, Any]:
    rounds = scale.pick(3, 2)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        for label, (sites, extra) in _settings(scale).items():
            repeats = scale.pick(3 if sites <= 10 else 2, 1)
            base = [*STUDY, f"federation.num_sites={sites}", f"federation.min_sites={max(2, sites // 2)}",
                    f"federation.rounds={rounds}"]
            secure, plain = [], []
            for repeat in range(repeats):
                order = (("secure", secure), ("plain", plain)) if repeat % 2 == 0 else (("plain", plain), ("secure", secure))
                for kind, bucket in order:
                    progress(f"secagg rounds: {label}, {kind}, repeat {repeat + 1}/{repeats}")
                    overrides = [*base, "secagg=secure", *extra] if kind == "secure" else [*base, "secagg=none"]
                    _, output = run_study(overrides, Path(tmp))
                    bucket.append(statistics.median(round_walls(output)[1:]))
            results[label] = {"sites": sites, "overrides": base + extra, "secure_round_s": stats(secure),
                              "plain_round_s": stats(plain), "ratio": paired_ratio(secure, plain)}
    return results


def measure_wire_and_masks(scale: Scale) -> dict[str, Any]:
    from experiments.secagg_bench import PARAMS, bench_flower, bench_throughput
    from flsuite.secagg import SecAggSettings

    progress("secagg: mask throughput and upload bytes")
    throughput = bench_throughput(scale.pick(3, 1))
    flower = bench_flower(10, SecAggSettings(cohort_size=10, threshold=6), scale.pick(3, 1))
    return {
        "params": PARAMS,
        "upload_bytes": {"secure": flower["upload_bytes_secure"], "plain": flower["upload_bytes_plain"],
                         "ratio": round(flower["upload_ratio"], 4)},
        "throughput_Bps": throughput,
        "mask_over_raw": {
            "aes_ctr_apply_100k": round(throughput["apply_aes_ctr_100k_Bps"] / throughput["raw_aes_ctr_update_into_Bps"], 3),
            "chacha20_apply_100k": round(throughput["apply_chacha20_100k_Bps"] / throughput["raw_chacha20_update_into_Bps"], 3),
            "aes_ctr_stream_64MiB": round(throughput["mask_aes_ctr_64MiB_Bps"] / throughput["raw_aes_ctr_update_into_Bps"], 3),
            "chacha20_stream_64MiB": round(throughput["mask_chacha20_64MiB_Bps"] / throughput["raw_chacha20_update_into_Bps"], 3),
        },
        "fake_grid_round_10_sites_instant_training": {k: flower[k] for k in ("secure_round_s", "plain_round_s", "round_ratio")},
    }


def run(scale: Scale) -> dict[str, Any]:
    return {"rounds": measure_rounds(scale), "wire": measure_wire_and_masks(scale), "targets": TARGETS}


def table(result: dict[str, Any]) -> str:
    lines = [f"Study: `{' '.join(STUDY)}`, inline engine, median of rounds after the first.", "",
             "| sites | plain round (s) | secure round (s) | secure / plain |", "|---|---|---|---|"]
    for label, row in result["rounds"].items():
        lines.append(f"| {label} | {row['plain_round_s']['median']:.3f} | {row['secure_round_s']['median']:.3f} | "
                     f"{fmt_ratio(row['ratio'])} |")
    wire = result["wire"]
    t, m = wire["throughput_Bps"], wire["mask_over_raw"]
    gb = lambda v: f"{v / 1e9:.2f} GB/s"  # noqa: E731
    lines += ["", "| measure | value |", "|---|---|",
              f"| upload bytes per site, secure / plain ({wire['params']:,} params) | {wire['upload_bytes']['secure']:,.0f} / "
              f"{wire['upload_bytes']['plain']:,.0f} = {wire['upload_bytes']['ratio']:.4f} |",
              f"| raw keystream, `cryptography` (256 KiB update_into): AES-256-CTR / ChaCha20 | "
              f"{gb(t['raw_aes_ctr_update_into_Bps'])} / {gb(t['raw_chacha20_update_into_Bps'])} |",
              f"| flsuite apply_mask (generate + add in place, 100k words): AES / ChaCha20 | "
              f"{gb(t['apply_aes_ctr_100k_Bps'])} ({m['aes_ctr_apply_100k']:.2f}x raw) / {gb(t['apply_chacha20_100k_Bps'])} "
              f"({m['chacha20_apply_100k']:.2f}x raw) |",
              f"| flsuite mask_stream (new 64 MiB array): AES / ChaCha20 | {gb(t['mask_aes_ctr_64MiB_Bps'])} "
              f"({m['aes_ctr_stream_64MiB']:.2f}x raw) / {gb(t['mask_chacha20_64MiB_Bps'])} ({m['chacha20_stream_64MiB']:.2f}x raw) |"]
    return "\n".join(lines)
