"""Benchmark of the model registry: publish time (1 MB and 10 MB models, plain and
encrypted), verify time for 10,000 audit entries, and blob hashing throughput during
verification relative to plain hashlib SHA-256 on the same files.

    .venv/bin/python experiments/registry_bench.py [--entries 10000] [--repeats 5]

Writes experiments/results/registry.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flsuite.registry import Registry, create_key_file, verify_registry
from flsuite.registry.testing import publish_sample

RESULTS = Path(__file__).parent / "results" / "registry.json"


def _weights(megabytes: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    count = int(megabytes * 1024 * 1024 / 4)
    return {"layer.weight": rng.standard_normal(count - 256, dtype=np.float32),
            "layer.bias": rng.standard_normal(256, dtype=np.float32)}


def bench_publish(root: Path, megabytes: float, repeats: int, encrypted: bool) -> dict[str, float]:
    key = create_key_file(root / f"blob-{megabytes}-{encrypted}.key") if encrypted else None
    times = []
    with Registry.open(root / f"publish-{megabytes}-{encrypted}", signing_key_path=root / "k.pem",
                       encryption_key=key) as registry:
        for i in range(repeats):
            weights = _weights(megabytes, seed=i)
            start = time.perf_counter()
            publish_sample(registry, round=i, weights=weights)
            times.append(time.perf_counter() - start)
    return {"model_mb": megabytes, "encrypted": encrypted, "repeats": repeats,
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_verify(root: Path, entries: int, repeats: int) -> dict[str, float]:
    path = root / "verify"
    start = time.perf_counter()
    with Registry.open(path, signing_key_path=root / "k.pem") as registry:
        for round_ in range(10):
            publish_sample(registry, round=round_)
        build_s = time.perf_counter() - start
        records, start = 0, time.perf_counter()
        while registry.record("study.note", {"round": 0, "note": "bench"}).seq < entries:
            records += 1
        record_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        report = verify_registry(path)
        times.append(time.perf_counter() - start)
        assert report.ok, report.problems
    return {"entries": report.entries, "versions": report.versions,
            "publish_10_small_s": build_s, "record_ms_per_entry": record_s / (records + 1) * 1000,
            "median_s": statistics.median(times), "min_s": min(times),
            "us_per_entry": statistics.median(times) / report.entries * 1e6}


def bench_hashing(root: Path, megabytes: int, repeats: int) -> dict[str, float]:
    """Blob checks inside verify (read + SHA-256) against hashlib over the same files."""
    path = root / "hashing"
    with Registry.open(path, signing_key_path=root / "k.pem") as registry:
        for i in range(megabytes // 10):
            publish_sample(registry, round=i, weights=_weights(10, seed=100 + i))
    files = [f for f in (path / "blobs" / "sha256").iterdir()]
    size = sum(f.stat().st_size for f in files)
    registry_s, plain_s = [], []
    for _ in range(repeats):  # interleaved so both see the same cache and load
        start = time.perf_counter()
        verify_registry(path, check_blobs=False)
        no_blobs = time.perf_counter() - start
        start = time.perf_counter()
        verify_registry(path, check_blobs=True)
        registry_s.append(time.perf_counter() - start - no_blobs)
        start = time.perf_counter()
        for f in files:
            hashlib.sha256(f.read_bytes()).hexdigest()
        plain_s.append(time.perf_counter() - start)
    registry_rate = size / statistics.median(registry_s) / 1e6
    plain_rate = size / statistics.median(plain_s) / 1e6
    return {"bytes": size, "registry_mb_per_s": registry_rate, "hashlib_mb_per_s": plain_rate,
            "relative": registry_rate / plain_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hash-mb", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        root = Path(tmp)
        publish = [bench_publish(root, mb, args.repeats, enc) for mb in (1, 10) for enc in (False, True)]
        verify = bench_verify(root, args.entries, args.repeats)
        hashing = bench_hashing(root, args.hash_mb, args.repeats)
    results = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                           "cpus": os.cpu_count(), "numpy": np.__version__},
               "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "publish": publish, "verify": verify, "hashing": hashing}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| measurement | result |\n|---|---|")
    for row in publish:
        print(f"| publish {row['model_mb']:g} MB{' encrypted' if row['encrypted'] else ''} "
              f"(median of {row['repeats']}) | {row['median_s'] * 1000:.0f} ms |")
    print(f"| verify {verify['entries']} audit entries, {verify['versions']} versions "
          f"(median) | {verify['median_s']:.2f} s ({verify['us_per_entry']:.0f} us/entry) |")
    print(f"| append one audit entry (record: line + fsync, signed head) | "
          f"{verify['record_ms_per_entry']:.1f} ms |")
    print(f"| blob hashing in verify vs hashlib ({hashing['bytes'] / 1e6:.0f} MB) | "
          f"{hashing['registry_mb_per_s']:.0f} vs {hashing['hashlib_mb_per_s']:.0f} MB/s "
          f"({hashing['relative']:.2f}x) |")


if __name__ == "__main__":
    main()
