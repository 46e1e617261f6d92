"""Benchmark of flsuite's secure aggregation.

1. Mask generation throughput per core (flsuite.secagg mask_stream, AES-256-CTR and
   ChaCha20) against the raw keystream throughput of `cryptography` on this machine.
2. Upload bytes per site, secure / plain, for a 100k-parameter float32 model (protobuf
   size of every reply a site sends in a round, through the Flower wiring).
3. Secure vs plain aggregation time at 10 and 50 sites with 100k parameters: the
   protocol core (all sites' and the coordinator's work, one process, one core), and a
   whole round through the Flower wiring on the in-process Grid with instant training.
4. ``--round-cpu SITES``: only a secure round's fixed cost (CPU and wall) as a study runs
   it, instant training (``bench_round_cpu``).
5. ``--signature-memo SITES [--pairs N]``: only that round with and without the memo of
   verified signatures, paired (``bench_signature_memo``).

    .venv/bin/python experiments/secagg_bench.py [--repeats 3] [--round-cpu 10] [--signature-memo 10]

Writes experiments/results/secagg.json and prints a markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cryptography
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from experiments.bench.harness import cpu_model
from flsuite.secagg import CoordinatorRound, SecAggSettings, SiteRound, public_identity
from flsuite.secagg.primitives import apply_mask, mask_stream

RESULTS = Path(__file__).parent / "results" / "secagg.json"
PARAMS = 100_000


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# --- 1. throughput ------------------------------------------------------------------------

def bench_throughput(repeats: int) -> dict[str, float]:
    nbytes = 64 * 1024 * 1024
    key = os.urandom(32)
    chunk = 1 << 18  # the chunk size apply_mask uses
    zeros, out = bytes(chunk), bytearray(chunk + 15)

    def raw(make) -> float:
        def run() -> None:
            encryptor = make().encryptor()
            for _ in range(nbytes // chunk):
                encryptor.update_into(zeros, out)
        return nbytes / _best(run, repeats)

    def raw_update(make) -> float:  # the plain one-call API, allocating input and output
        return nbytes / _best(lambda: make().encryptor().update(bytes(nbytes)), repeats)

    aes = lambda: Cipher(algorithms.AES(key), modes.CTR(bytes(16)))  # noqa: E731
    chacha = lambda: Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None)  # noqa: E731
    words = nbytes // 4
    small = PARAMS + 1
    return {
        "raw_aes_ctr_update_into_Bps": raw(aes),
        "raw_chacha20_update_into_Bps": raw(chacha),
        "raw_aes_ctr_update_Bps": raw_update(aes),
        "raw_chacha20_update_Bps": raw_update(chacha),
        "mask_aes_ctr_64MiB_Bps": nbytes / _best(lambda: mask_stream(key, words, cipher="aes-256-ctr"), repeats),
        "mask_chacha20_64MiB_Bps": nbytes / _best(lambda: mask_stream(key, words, cipher="chacha20"), repeats),
        "apply_aes_ctr_100k_Bps": _apply(key, small, "aes-256-ctr", repeats),
        "apply_chacha20_100k_Bps": _apply(key, small, "chacha20", repeats),
        "apply_aes_ctr_16M_Bps": _apply(key, 16 * 1024 * 1024, "aes-256-ctr", repeats, times=1),
        "apply_chacha20_16M_Bps": _apply(key, 16 * 1024 * 1024, "chacha20", repeats, times=1),
    }


def mask_over_raw(cipher: str, words: int = PARAMS + 1, *, pairs: int = 15, loops: int = 40) -> dict[str, float]:
    """apply_mask's throughput over the raw keystream's for the same bytes, paired and interleaved.

    Raw: a new encryptor per call (as apply_mask makes one per key) and one ``update_into`` of
    ``4 * words`` zeros into a preallocated buffer: the keystream alone. Each pair times
    ``loops`` calls of each, in an order that alternates pair by pair, in CPU time
    (``time.process_time``: time the process was not scheduled does not count on a shared
    machine); the result is the median of the pairs' ratios with their spread.
    """
    key = os.urandom(32)
    nbytes = 4 * words
    zeros, out = bytes(nbytes), np.empty(nbytes + 16, dtype=np.uint8)
    target = np.zeros(words, dtype=np.uint32)
    make = (lambda: Cipher(algorithms.AES(key), modes.CTR(bytes(16)))) if cipher == "aes-256-ctr" else (  # noqa: E731
        lambda: Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None))

    def raw() -> None:
        for _ in range(loops):
            make().encryptor().update_into(zeros, out)

    def masked() -> None:
        for _ in range(loops):
            apply_mask(target, key, cipher=cipher)

    def cpu(fn) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start

    raw(), masked()  # warm caches and the per-thread scratch buffer
    ratios, raw_s, mask_s = [], [], []
    for pair in range(pairs):
        first, second = (raw, masked) if pair % 2 == 0 else (masked, raw)
        a, b = cpu(first), cpu(second)
        r, m = (a, b) if first is raw else (b, a)
        raw_s.append(r)
        mask_s.append(m)
        ratios.append(r / m)
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": pairs,
            "raw_Bps": nbytes * loops / statistics.median(raw_s), "apply_Bps": nbytes * loops / statistics.median(mask_s)}


def _apply(key: bytes, words: int, cipher: str, repeats: int, times: int = 50) -> float:
    """Bytes of mask generated and added in place per second (what a site does per peer)."""
    target = np.zeros(words, dtype=np.uint32)
    return 4 * words * times / _best(lambda: [apply_mask(target, key, cipher=cipher) for _ in range(times)], repeats)


# --- 3a. protocol core ----------------------------------------------------------------------

def bench_core(n_sites: int, settings: SecAggSettings, repeats: int, drop: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(0)
    nodes = [1000 + i for i in range(n_sites)]
    keys = {f"s{i}": Ed25519PrivateKey.generate() for i in range(n_sites)}
    pinned = {name: public_identity(key) for name, key in keys.items()}
    updates = {n: rng.uniform(-0.5, 0.5, PARAMS) for n in nodes}
    examples = {n: int(rng.integers(100, 5000)) for n in nodes}
    model_hash = hashlib.sha256(b"model").digest()

    def plain() -> np.ndarray:
        w = np.array([min(examples[n], settings.weight_cap) for n in nodes], dtype=np.float64)
        return np.stack([updates[n] for n in nodes]).T @ w / w.sum()

    timing = {"site_s": 0.0, "coordinator_s": 0.0}

    def secure(server_round: int) -> None:
        states: dict[int, dict | None] = {n: None for n in nodes}

        def site(node: int) -> SiteRound:
            name = f"s{nodes.index(node)}"
            return SiteRound(node_id=node, run_id=1, site_name=name, identity=keys[name], pinned=pinned, state=states[node])

        def at_sites(requests, call):
            replies = {}
            start = time.perf_counter()
            for node, request in requests.items():
                s = site(node)
                replies[node] = call(s, request)
                states[node] = s.state
            timing["site_s"] += time.perf_counter() - start
            return replies

        def at_coordinator(call, *args):
            start = time.perf_counter()
            result = call(*args)
            timing["coordinator_s"] += time.perf_counter() - start
            return result

        c = at_coordinator(lambda: CoordinatorRound(settings, run_id=1, server_round=server_round, cohort=nodes,
                                                    model_hash=model_hash, vector_length=PARAMS + 1))
        keys_ = at_sites(at_coordinator(c.setup_requests), lambda s, r: s.setup(r))
        shares = at_sites(at_coordinator(c.receive_keys, keys_), lambda s, r: s.share_keys(r))

        def train(s: SiteRound, r):
            s.begin_train(r, model_hash=model_hash)
            return s.mask_update(update=updates[s.node_id], num_examples=examples[s.node_id])
        masked = at_sites(at_coordinator(c.receive_shares, shares), train)
        for node in nodes[:drop]:
            masked.pop(node)
        unmasks = at_sites(at_coordinator(c.receive_masked, masked), lambda s, r: s.unmask(r))
        at_coordinator(c.receive_unmask, unmasks)

    plain_s = _best(plain, max(repeats, 5))
    rounds = iter(range(1, 1000))
    secure_times, site_times, coord_times = [], [], []
    for _ in range(repeats):
        timing.update(site_s=0.0, coordinator_s=0.0)
        secure(next(rounds))
        secure_times.append(timing["site_s"] + timing["coordinator_s"])
        site_times.append(timing["site_s"] / n_sites)
        coord_times.append(timing["coordinator_s"])
    return {"plain_average_s": plain_s, "secure_total_cpu_s": min(secure_times),
            "secure_per_site_s": min(site_times), "secure_coordinator_s": min(coord_times),
            "coordinator_over_plain": min(coord_times) / plain_s}


# --- 2 and 3b. through Flower ----------------------------------------------------------------

def bench_flower(n_sites: int, settings: SecAggSettings, repeats: int) -> dict[str, float]:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    from flsuite.coordinator.secure_round import secure_train_round
    from flsuite.flower import InProcessGrid, new_run
    from flsuite.site.testing import build_sites

    rng = np.random.default_rng(1)
    global_arrays = ArrayRecord({"fc1.weight": Array(rng.standard_normal((99_900,), dtype=np.float32) * 0.1),
                                 "fc1.bias": Array(np.zeros(100, dtype=np.float32))})
    plain_bytes: list[int] = []

    def train(msg: Message, context) -> Message:
        glob = msg.content["arrays"]
        local = ArrayRecord({k: Array(glob[k].numpy() + np.float32(0.01)) for k in glob})
        content = RecordDict({"arrays": local, "metrics": MetricRecord({"num-examples": 500, "train-loss": 0.3})})
        plain_bytes.append(recorddict_to_proto(content).ByteSize())
        return Message(content, reply_to=msg)

    with tempfile.TemporaryDirectory() as tmp:
        nodes = [5000 + i for i in range(n_sites)]
        handlers, contexts = build_sites(tmp, nodes, train, run_id=3)
        secure_rounds, plain_rounds = [], []
        for r in range(repeats):
            grid = InProcessGrid(handlers, contexts, run=new_run(3), wire=True)
            with grid:
                start = time.perf_counter()
                secure_train_round(grid, node_ids=nodes, server_round=r + 1, global_arrays=global_arrays,
                                   train_configs={n: ConfigRecord() for n in nodes}, settings=settings, timeout_s=60)
                secure_rounds.append(time.perf_counter() - start)
                up = {n: 0 for n in nodes}
                for received in grid.log:
                    up[received.node] += recorddict_to_proto(received.message.content).ByteSize()
                # the plain round: the same train messages without secagg, FedAvg-style average
                plain_grid = InProcessGrid(handlers, contexts, run=new_run(3), wire=True)
                start = time.perf_counter()
                replies = plain_grid.send_and_receive([
                    Message(RecordDict({"arrays": global_arrays, "config": ConfigRecord()}), dst_node_id=n,
                            message_type="train", group_id=str(r)) for n in nodes])
                weights = [float(m.content["metrics"]["num-examples"]) for m in replies]
                stacked = {k: np.stack([m.content["arrays"][k].numpy() for m in replies]) for k in global_arrays}
                {k: np.tensordot(weights, v, axes=1) / sum(weights) for k, v in stacked.items()}
                plain_rounds.append(time.perf_counter() - start)
        plain_upload = statistics.median(plain_bytes)
        secure_upload = statistics.median(up.values())
    return {"secure_round_s": min(secure_rounds), "plain_round_s": min(plain_rounds),
            "round_ratio": min(secure_rounds) / min(plain_rounds),
            "upload_bytes_plain": plain_upload, "upload_bytes_secure": secure_upload,
            "upload_ratio": secure_upload / plain_upload}


def _instant_training():
    """The bench study's 99,690-parameter MLP as a global model, and a site's training that returns it at once, changed."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    rng = np.random.default_rng(1)
    shapes = [(280, 64), (280,), (280, 280), (280,), (10, 280), (10,)]  # the bench study's MLP
    global_arrays = ArrayRecord({f"layer{i}": Array((rng.standard_normal(s) * 0.1).astype(np.float32)) for i, s in enumerate(shapes)})

    def train(msg: Message, context) -> Message:
        glob = msg.content["arrays"]
        local = ArrayRecord({k: Array(glob[k].numpy() + np.float32(0.01)) for k in glob})
        return Message(RecordDict({"arrays": local, "metrics": MetricRecord({"num-examples": 500})}), reply_to=msg)

    return global_arrays, train


def bench_round_cpu(n_sites: int = 10, rounds: int = 21) -> dict[str, float]:
    """One secure round as a study runs it (the in-process Grid without the protobuf round trip,
    secagg_mod on every site, SecAgg+'s default graph), with instant training on a
    99,690-parameter float32 model: the protocol's fixed cost per round, messaging included.
    CPU time of this process (all threads) and wall time; median and min of the rounds
    after the first."""
    from flwr.app import ConfigRecord

    from flsuite.config.schema import SecAggConfig
    from flsuite.coordinator.secure_round import secure_train_round
    from flsuite.flower import InProcessGrid, new_run
    from flsuite.site.testing import build_sites

    global_arrays, train = _instant_training()

    settings = SecAggConfig().settings_for(n_sites)
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [5000 + i for i in range(n_sites)]
        handlers, contexts = build_sites(tmp, nodes, train, run_id=3)
        for r in range(rounds):
            grid = InProcessGrid(handlers, contexts, run=new_run(3))
            with grid:
                wall, cpu = time.perf_counter(), time.process_time()
                secure_train_round(grid, node_ids=nodes, server_round=r + 1, global_arrays=global_arrays,
                                   train_configs={n: ConfigRecord() for n in nodes}, settings=settings, timeout_s=60)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
    return {"cpu_median_s": statistics.median(cpus[1:]), "cpu_min_s": min(cpus[1:]),
            "wall_median_s": statistics.median(walls[1:]), "wall_min_s": min(walls[1:])}


def bench_signature_memo(n_sites: int = 10, pairs: int = 30) -> dict[str, float]:
    """A secure round (``bench_round_cpu``'s setting) with and without the memo of verified signatures.

    Rounds alternate between ``crypto.verify_keys`` as it is (each signature checked once per process)
    and a verification of every signature by every neighbour, in an order that flips pair by pair;
    wall and CPU medians and the median of the pairs' wall ratios (with / without).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from flwr.app import ConfigRecord

    from flsuite.config.schema import SecAggConfig
    from flsuite.coordinator.secure_round import secure_train_round
    from flsuite.flower import InProcessGrid, new_run
    from flsuite.secagg import primitives
    from flsuite.site.testing import build_sites

    def every_time(identity_public: bytes, signature: bytes, payload: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, payload)
        except (InvalidSignature, ValueError):
            return False
        return True

    global_arrays, train = _instant_training()

    settings = SecAggConfig().settings_for(n_sites)
    variants = {"memo": primitives.verify_keys, "every_time": every_time}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [5000 + i for i in range(n_sites)]
        handlers, contexts = build_sites(tmp, nodes, train, run_id=3)
        server_round = 0
        try:
            for pair in range(pairs + 1):  # pair 0 warms up
                for name in (("memo", "every_time") if pair % 2 else ("every_time", "memo")):
                    primitives.verify_keys = variants[name]
                    server_round += 1
                    with InProcessGrid(handlers, contexts, run=new_run(3)) as grid:
                        wall, cpu = time.perf_counter(), time.process_time()
                        secure_train_round(grid, node_ids=nodes, server_round=server_round, global_arrays=global_arrays,
                                           train_configs={n: ConfigRecord() for n in nodes}, settings=settings, timeout_s=60)
                        if pair:
                            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        finally:
            primitives.verify_keys = variants["memo"]
    result = {f"{name}_{kind}_median_s": statistics.median(t[i] for t in times[name])
              for name in variants for i, kind in enumerate(("wall", "cpu"))}
    result["paired_wall_ratio"] = statistics.median(m[0] / e[0] for m, e in zip(times["memo"], times["every_time"], strict=True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round-cpu", type=int, metavar="SITES",
                        help="only print bench_round_cpu(SITES) as JSON (a secure round's fixed cost, instant training)")
    parser.add_argument("--signature-memo", type=int, metavar="SITES",
                        help="only print bench_signature_memo(SITES) as JSON (secure rounds with and without the memo of "
                             "verified signatures, paired)")
    parser.add_argument("--pairs", type=int, default=30, help="pairs of rounds for --signature-memo")
    args = parser.parse_args()
    if args.round_cpu:
        print(json.dumps({k: round(v, 4) for k, v in bench_round_cpu(args.round_cpu).items()}))
        return
    if args.signature_memo:
        print(json.dumps({k: round(v, 4) for k, v in bench_signature_memo(args.signature_memo, args.pairs).items()}))
        return
    configs = {
        "10 sites, full graph, t=6": (10, SecAggSettings(cohort_size=10, threshold=6)),
        "50 sites, full graph, t=26": (50, SecAggSettings(cohort_size=50, threshold=26)),
        "50 sites, 10 neighbours, t=6": (50, SecAggSettings(cohort_size=50, threshold=6, neighbours=10)),
    }
    results: dict[str, object] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_model(),
                    "cryptography": cryptography.__version__, "cores_used": 1},
        "params": PARAMS,
        "throughput": bench_throughput(args.repeats),
        "core": {}, "core_one_dropout": {}, "flower": {},
    }
    for label, (n, settings) in configs.items():
        print(f"core: {label}", flush=True)
        results["core"][label] = bench_core(n, settings, args.repeats)
        results["core_one_dropout"][label] = bench_core(n, settings, 1, drop=1)
        print(f"flower: {label}", flush=True)
        results["flower"][label] = bench_flower(n, settings, args.repeats if n <= 10 else 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))


def _table(r: dict) -> str:
    t = r["throughput"]
    gb = lambda x: f"{x / 1e9:.2f} GB/s"  # noqa: E731
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| raw AES-256-CTR (cryptography, update_into 256 KiB) | {gb(t['raw_aes_ctr_update_into_Bps'])} |",
              f"| raw ChaCha20 (cryptography, update_into 256 KiB) | {gb(t['raw_chacha20_update_into_Bps'])} |",
              f"| raw AES-256-CTR (one update() call, 64 MiB) | {gb(t['raw_aes_ctr_update_Bps'])} |",
              f"| mask_stream (new 64 MiB array) AES-256-CTR / ChaCha20 | {gb(t['mask_aes_ctr_64MiB_Bps'])} / {gb(t['mask_chacha20_64MiB_Bps'])} |",
              f"| apply_mask (generate + add in place), 100k words, AES / ChaCha20 | {gb(t['apply_aes_ctr_100k_Bps'])} / {gb(t['apply_chacha20_100k_Bps'])} |",
              f"| apply_mask, 16 M words (64 MiB), AES / ChaCha20 | {gb(t['apply_aes_ctr_16M_Bps'])} / {gb(t['apply_chacha20_16M_Bps'])} |"]
    lines += ["", "| sites (100k params) | plain avg | secure coordinator | secure per site | coord/plain | 1 dropout: coordinator | Flower round secure / plain | upload secure / plain |",
              "|---|---|---|---|---|---|---|---|"]
    for label in r["core"]:
        c, d, f = r["core"][label], r["core_one_dropout"][label], r["flower"][label]
        lines.append(f"| {label} | {c['plain_average_s'] * 1e3:.1f} ms | {c['secure_coordinator_s']:.3f} s | "
                     f"{c['secure_per_site_s']:.3f} s | {c['coordinator_over_plain']:.0f}x | {d['secure_coordinator_s']:.3f} s | "
                     f"{f['secure_round_s']:.2f} s / {f['plain_round_s']:.2f} s = {f['round_ratio']:.1f}x | "
                     f"{f['upload_bytes_secure']:,.0f} / {f['upload_bytes_plain']:,.0f} B = {f['upload_ratio']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
