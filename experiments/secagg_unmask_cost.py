"""The coordinator's unmask stage of one honest secure round (``CoordinatorRound.receive_unmask``:
rebuilding every survivor's self-mask seed, checking it, removing the masks), per cohort size.

The round runs through the pure protocol core (no Flower, no training), the median of 7 rounds.
To compare two commits, run it from each tree in turn, e.g. ``git worktree add /tmp/before REV``.
Run: PYTHONPATH=. python -m experiments.secagg_unmask_cost
"""

from __future__ import annotations

import hashlib
import statistics
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flsuite.secagg import CoordinatorRound, SecAggSettings, SiteRound, public_identity

RUN_ID = 7
MODEL_HASH = hashlib.sha256(b"model").digest()


def unmask_seconds(n: int) -> float:
    """One honest round of ``n`` sites (threshold 60% of the cohort, full graph): the unmask stage's seconds."""
    nodes = [10 + i for i in range(n)]
    keys = {node: Ed25519PrivateKey.generate() for node in nodes}
    pinned = {f"s{node}": public_identity(key) for node, key in keys.items()}
    states: dict[int, dict | None] = {node: None for node in nodes}
    coordinator = CoordinatorRound(SecAggSettings(cohort_size=n, threshold=max(n // 2 + 1, -(-6 * n // 10))), run_id=RUN_ID,
                                   server_round=1, cohort=nodes, model_hash=MODEL_HASH, vector_length=5)

    def call(node: int, stage: str, *args, **kwargs):
        site = SiteRound(node_id=node, run_id=RUN_ID, site_name=f"s{node}", identity=keys[node], pinned=pinned, state=states[node])
        try:
            return getattr(site, stage)(*args, **kwargs)
        finally:
            states[node] = site.state

    setup = {node: call(node, "setup", request) for node, request in coordinator.setup_requests().items()}
    shares = {node: call(node, "share_keys", request) for node, request in coordinator.receive_keys(setup).items()}
    masked = {}
    for node, request in coordinator.receive_shares(shares).items():
        call(node, "begin_train", request, model_hash=MODEL_HASH)
        masked[node] = call(node, "mask_update", update=np.zeros(4), num_examples=10)
    answers = {node: call(node, "unmask", request) for node, request in coordinator.receive_masked(masked).items()}
    start = time.perf_counter()
    coordinator.receive_unmask(answers)
    return time.perf_counter() - start


def main() -> None:
    for n in (10, 30):
        print(f"{n} sites: unmask stage {statistics.median(unmask_seconds(n) for _ in range(7)) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
