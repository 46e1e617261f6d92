"""Local training and evaluation of a model on one site's records (non-private path).

The DP-SGD path lives in ``flsuite.privacy.dp_training``; both return the same
``TrainResult`` shape so the site's handler does not care which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flsuite.data.datasets import Dataset


@dataclass(frozen=True)
class TrainResult:
    """What one site's local training did."""

    examples: int
    steps: int
    mean_loss: float


def make_optimizer(name: str, parameters, learning_rate: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate)
    return torch.optim.SGD(parameters, lr=learning_rate)


def train_plain(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Mini-batch training with shuffling; FedProx's proximal term when ``proximal_mu > 0``."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.from_numpy(data.features)
    labels = torch.from_numpy(data.labels)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    opt = make_optimizer(optimizer, model.parameters(), learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    losses, steps = [], 0
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(features[batch]), labels[batch])
            if anchor:
                loss = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
    return TrainResult(examples=len(labels), steps=steps, mean_loss=float(np.mean(losses)))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> dict[str, float]:
    """Loss, accuracy and (for two classes) ROC-AUC of ``model`` on ``data``."""
    model.eval()
    logits = model(torch.from_numpy(data.features))
    labels = torch.from_numpy(data.labels)
    metrics = {
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(dim=1) == labels).float().mean()),
    }
    if logits.shape[1] == 2 and len(np.unique(data.labels)) == 2:
        scores = torch.softmax(logits, dim=1)[:, 1].numpy()
        metrics["auc"] = binary_auc(data.labels, scores)
    return metrics


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for labels 0/1 (both present): the Mann-Whitney statistic with tied
    scores counted half, which is the trapezoidal area scikit-learn's roc_auc_score computes,
    without importing scikit-learn on every study's path (a second of its start)."""
    labels = np.asarray(labels)
    order = np.argsort(scores, kind="mergesort")
    ranked = np.asarray(scores)[order]
    ranks = np.empty(len(ranked), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average rank of each tie group
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
