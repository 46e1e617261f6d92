"""DP cost: DP-SGD step time / non-DP step time, and peak memory ratio, per model and batch size.

One step = forward, backward and optimizer step on one fixed batch. The DP step is Opacus'
(per-sample gradients, clipping, Gaussian noise) in flsuite's default mode (hooks) and with
ghost clipping; the non-DP step is plain SGD on an identical copy. Models are flsuite's own
(``flsuite.models.zoo``) plus a wide 784-512-512-10 MLP (670k parameters). Variants run in
one process on one thread, interleaved repeat by repeat; each ratio is per repeat.

Peak memory of a step = the bytes of the parameters and the batch, plus the peak of the
allocations made during a step that starts with its gradients freed (torch's profiler, CPU
memory events in time order; the largest of three steps).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from experiments.bench.harness import Scale, fmt_ratio, paired_ratio, progress, stats
from experiments.dp_step_cost import datasets, make_step, time_steps  # the DP step-cost script this folds in

TARGETS = {"cnn_time_hooks": 3.5, "wide_mlp_ghost_time": 2.5, "wide_mlp_ghost_memory": 1.5}


def _models() -> dict[str, tuple[str, nn.Module, str]]:
    from flsuite.models.zoo import MLP, LogisticRegression, SmallCNN

    torch.manual_seed(0)
    return {
        "logreg": ("logistic regression, breast cancer", LogisticRegression(30, 2), "breast_cancer"),
        "mlp": ("MLP 64-64-64-10, digits", MLP(64, 10, 64), "digits"),
        "cnn": ("CNN 8/16 channels + GroupNorm, digits", SmallCNN((8, 8), 10, 8), "digits"),
        "wide_mlp": ("wide MLP 784-512-512-10", MLP(784, 10, 512), "wide"),
    }


def step_peak_bytes(step, resident_bytes: int, samples: int = 3) -> int:
    """Resident bytes plus the peak of what one step allocates on top of them.

    Each profiled step starts with its gradients freed, so every allocation it makes (and
    every free of one) is in the profile; the largest of ``samples`` steps is kept.
    """
    import gc

    from torch.profiler import ProfilerActivity, profile

    peaks = []
    for _ in range(samples):
        step()
        step.reset()
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        peaks.append(peak)
    return resident_bytes + max(peaks)


def noise_ms(model: nn.Module, repeats: int = 20) -> float:
    """Time to draw one step's Gaussian noise for every parameter: a fixed cost of DP-SGD per step."""
    generator = torch.Generator().manual_seed(0)
    shapes = [p.shape for p in model.parameters()]
    draw = lambda: [torch.normal(0.0, 1.0, shape, generator=generator) for shape in shapes]  # noqa: E731
    draw()
    return time_steps(draw, repeats) * 1e3


def _batch(data: dict, source: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    if source == "wide":
        generator = torch.Generator().manual_seed(1)
        return torch.rand(batch, 784, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    x, y = data[source]
    return x[:batch].contiguous(), y[:batch].contiguous()


def measure(key: str, label: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, modes: tuple[str, ...],
            repeats: int, steps: int, memory_samples: int = 3) -> dict[str, Any]:
    variants = {"non_dp": make_step(model, x, y, None), **{m: make_step(model, x, y, m) for m in modes}}
    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + x.numel() * 4 + y.numel() * 8
    peak = {name: step_peak_bytes(step, resident, memory_samples) for name, step in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in variants.values():
            time_steps(step, 2)
        for _ in range(repeats):
            for name, step in variants.items():
                times[name].append(time_steps(step, steps))
    row: dict[str, Any] = {
        "model": key, "label": label, "parameters": sum(p.numel() for p in model.parameters()), "batch": len(x),
        "step_ms": {name: stats([t * 1e3 for t in values], 3) for name, values in times.items()},
        "peak_mib": {name: round(value / 2**20, 3) for name, value in peak.items()},
        "noise_ms": round(noise_ms(model), 4),
    }
    for mode in modes:
        row[f"time_ratio_{mode}"] = paired_ratio(times[mode], times["non_dp"])
        row[f"memory_ratio_{mode}"] = round(peak[mode] / peak["non_dp"], 3)
    progress(f"DP cost {label} batch {len(x)}: " + ", ".join(f"{m} x{row[f'time_ratio_{m}']['median']}" for m in modes))
    return row


def run(scale: Scale) -> dict[str, Any]:
    torch.manual_seed(0)
    data = datasets()
    repeats, steps = scale.pick(9, 2), scale.pick(20, 3)
    wide_steps = scale.pick(5, 1)
    samples = scale.pick(3, 1)
    rows = []
    for key, (label, model, source) in _models().items():
        for batch in (64, 256):
            x, y = _batch(data, source, batch)
            if key == "wide_mlp":
                rows.append(measure(key, label, model, x, y, ("ghost", "hooks"), repeats, wide_steps, samples))
            else:
                rows.append(measure(key, label, model, x, y, ("hooks", "ghost"), repeats, steps, samples))
    return {"rows": rows, "targets": TARGETS, "repeats": repeats, "steps_per_repeat": steps,
            "wide_steps_per_repeat": wide_steps, "default_mode": "hooks"}


def table(result: dict[str, Any]) -> str:
    lines = ["| model | params | batch | non-DP step (ms) | noise alone (ms) | hooks: time ratio | ghost: time ratio "
             "| peak memory ratio hooks / ghost |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['parameters']:,} | {row['batch']} | {row['step_ms']['non_dp']['median']:.3f} | "
                     f"{row['noise_ms']:.3f} | {fmt_ratio(row['time_ratio_hooks'])} | {fmt_ratio(row['time_ratio_ghost'])} | "
                     f"{row['memory_ratio_hooks']:.2f} / {row['memory_ratio_ghost']:.2f} |")
    return "\n".join(lines)
