"""What DP-SGD costs per local step: DP step time / non-DP step time for three small models.

One step = forward, backward and optimizer step on one batch of 64 records. The DP step is
Opacus' (per-sample gradients, clipping to C, Gaussian noise), with hooks and with ghost
clipping; the non-DP step is plain SGD on an identical model. All variants run in the same
process on one thread, interleaved repeat by repeat so machine load hits them alike; the
ratio is of medians. Writes experiments/results/dp_step_cost.json.

    .venv/bin/python experiments/dp_step_cost.py [--repeats 15] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import opacus
import torch
from opacus import PrivacyEngine
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

BATCH = 64
RESULTS = Path(__file__).resolve().parent / "results" / "dp_step_cost.json"


class LogisticRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(30, 2)

    def forward(self, x):
        return self.linear(x)


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.layers(x)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions with GroupNorm (DP-safe, unlike BatchNorm) on 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))


def datasets():
    x_bc, y_bc = load_breast_cancer(return_X_y=True)
    x_bc = (x_bc - x_bc.mean(0)) / x_bc.std(0)
    x_dg, y_dg = load_digits(return_X_y=True)
    x_dg = x_dg / 16.0
    as_tensors = lambda x, y: (torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))  # noqa: E731
    return {"breast_cancer": as_tensors(x_bc, y_bc), "digits": as_tensors(x_dg, y_dg)}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str | None):
    """A closure running one training step on (x, y): plain SGD, or Opacus with ``mode``."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    if mode is not None:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = PrivacyEngine(accountant="prv").make_private(
                module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
                noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode,
                noise_generator=torch.Generator().manual_seed(0),
            )
        if mode == "ghost":
            model, optimizer, criterion, _ = wrapped
        else:
            model, optimizer, _ = wrapped

    def step() -> None:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()

    step.reset = lambda: optimizer.zero_grad(set_to_none=True)  # frees grads (and Opacus' per-sample state)
    return step


def time_steps(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, steps: int) -> dict:
    batch_x, batch_y = x[:BATCH], y[:BATCH]
    variants = {label: make_step(model, batch_x, batch_y, mode) for label, mode in
                (("non_dp", None), ("dp_hooks", "hooks"), ("dp_ghost", "ghost"))}
    times: dict[str, list[float]] = {label: [] for label in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in variants.values():
            time_steps(step, 5)  # warm-up
        for _ in range(repeats):
            for label, step in variants.items():  # interleaved: load hits every variant alike
                times[label].append(time_steps(step, steps))
    median = {label: statistics.median(values) for label, values in times.items()}
    row = {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": BATCH,
        "median_step_ms": {label: round(value * 1e3, 4) for label, value in median.items()},
        "ratio_hooks": round(median["dp_hooks"] / median["non_dp"], 2),
        "ratio_ghost": round(median["dp_ghost"] / median["non_dp"], 2),
        "ratio_hooks_range": [round(min(h / n for h, n in zip(times["dp_hooks"], times["non_dp"])), 2),
                              round(max(h / n for h, n in zip(times["dp_hooks"], times["non_dp"])), 2)],
    }
    print(f"{name:<32} params {row['parameters']:>6}  non-DP {row['median_step_ms']['non_dp']:.3f} ms  "
          f"hooks x{row['ratio_hooks']}  ghost x{row['ratio_ghost']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = datasets()
    rows = [
        measure("logistic regression (breast cancer)", LogisticRegression(), *data["breast_cancer"], args.repeats, args.steps),
        measure("MLP 64-128-10 (digits)", DigitsMLP(), *data["digits"], args.repeats, args.steps),
        measure("CNN 2 conv + GroupNorm (digits)", DigitsCNN(), *data["digits"], args.repeats, args.steps),
    ]
    result = {
        "what": "DP-SGD step time / non-DP step time, median of interleaved repeats, one thread",
        "command": f"python experiments/dp_step_cost.py --repeats {args.repeats} --steps {args.steps}",
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
