"""One compute-bound job for the parallel bench's machine ceiling: SGD steps of table 8's heavier MLP.

``python -m experiments.bench.compute_child STEPS START_AT`` imports torch, builds the 64-280-280-10
MLP (one torch thread, batch 32), warms up, sleeps until the wall-clock time ``START_AT`` (so that
two jobs started together begin their timed loops at the same moment, after their imports), runs
``STEPS`` steps and prints the loop's wall time in seconds.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    steps, start_at = int(sys.argv[1]), float(sys.argv[2])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 280), torch.nn.ReLU(), torch.nn.Linear(280, 280), torch.nn.ReLU(),
                                torch.nn.Linear(280, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    features, labels = torch.randn(32, 64, generator=generator), torch.randint(0, 10, (32,), generator=generator)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()

    for _ in range(100):
        step()
    time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    for _ in range(steps):
        step()
    print(time.perf_counter() - started)


if __name__ == "__main__":
    main()
