"""Registry: publish time (1 MB and 10 MB models, plain and encrypted at rest), verify time for
10,000 audit entries, and blob hashing throughput during verify relative to hashlib SHA-256.

Reuses ``experiments/registry_bench.py`` (publish through ``publish_sample``, a real signed
registry in a temp folder; hashing interleaved with hashlib over the same files).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from experiments.bench.harness import Scale, progress


def run(scale: Scale) -> dict[str, Any]:
    from experiments.registry_bench import bench_hashing, bench_publish, bench_verify

    repeats = scale.pick(5, 2)
    entries = scale.pick(10_000, 300)
    hash_mb = scale.pick(100, 20)
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        root = Path(tmp)
        progress("registry: publish")
        publish = [bench_publish(root, mb, repeats, enc) for mb in (1, 10) for enc in (False, True)]
        progress(f"registry: verify {entries} entries")
        verify = bench_verify(root, entries, scale.pick(3, 1))
        progress(f"registry: hashing {hash_mb} MB")
        hashing = bench_hashing(root, hash_mb, repeats)
    return {"publish": publish, "verify": verify, "hashing": hashing}


def table(result: dict[str, Any]) -> str:
    lines = ["| measure | result |", "|---|---|"]
    for row in result["publish"]:
        lines.append(f"| publish {row['model_mb']:g} MB model{' (encrypted at rest)' if row['encrypted'] else ''} | "
                     f"{row['median_s'] * 1e3:.0f} ms ({row['min_s'] * 1e3:.0f}-{row['max_s'] * 1e3:.0f}) |")
    v, h = result["verify"], result["hashing"]
    lines += [f"| verify {v['entries']:,} audit entries, {v['versions']} versions | {v['median_s']:.2f} s "
              f"({v['us_per_entry']:.0f} us/entry) |",
              f"| append one audit entry (line + fsync, signed head) | {v['record_ms_per_entry']:.1f} ms |",
              f"| blob hashing in verify vs hashlib SHA-256 ({h['bytes'] / 1e6:.0f} MB) | {h['registry_mb_per_s']:.0f} vs "
              f"{h['hashlib_mb_per_s']:.0f} MB/s = {h['relative']:.2f}x |"]
    return "\n".join(lines)
