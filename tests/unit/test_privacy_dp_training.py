"""Local DP-SGD with Opacus: it learns, it refuses what it cannot protect, it accounts what it ran,
its noise is fresh for every request, and FedProx's term is clipped per record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from flsuite.errors import ConfigError, DataError, PlanError
from flsuite.privacy import (
    DpEvent,
    poisson_schedule,
    require_secure_rng,
    secure_rng_available,
    train_dp,
)

TRAIN = dict(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=32, local_epochs=3, lr=0.5)


@pytest.fixture(scope="module")
def breast_cancer():
    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    order = np.random.default_rng(0).permutation(len(labels))
    x = torch.tensor(features[order], dtype=torch.float32)
    y = torch.tensor(labels[order], dtype=torch.int64)
    return x[:400], y[:400], x[400:], y[400:]


def accuracy(model: nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    model.load_state_dict(state)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("mode, optimizer, lr", [("hooks", "sgd", 0.5), ("ghost", "sgd", 0.5), ("hooks", "adam", 0.05)])
def test_logistic_regression_learns_breast_cancer_under_dp(breast_cancer, mode, optimizer, lr):
    x, y, x_test, y_test = breast_cancer
    torch.manual_seed(0)
    model = nn.Linear(30, 2)
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_dp(model, x, y, **TRAIN | {"grad_sample_mode": mode, "optimizer": optimizer, "lr": lr})
    assert set(result.state_dict) == {"weight", "bias"}  # plain keys, no "_module." prefix
    assert all(torch.equal(untouched[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    assert accuracy(nn.Linear(30, 2), result.state_dict, x_test, y_test) > 0.9
    assert np.isfinite(result.mean_loss) and result.examples == 400


def test_sampling_and_steps_are_what_the_plan_accounts(breast_cancer):
    x, y, _, _ = breast_cancer
    result = train_dp(nn.Linear(30, 2), x, y, **TRAIN)
    schedule = poisson_schedule(records=400, batch_size=32, local_epochs=3)
    assert result.sample_rate == schedule.sample_rate == 1 / 13
    assert result.steps == schedule.steps_per_round == 39
    assert result.phase == (1 / 13, 1.0, 39)


def test_empty_poisson_batches_count_as_steps_and_do_not_poison_the_loss(breast_cancer):
    x, y, _, _ = breast_cancer
    for mode in ("hooks", "ghost"):
        result = train_dp(nn.Linear(30, 2), x[:40], y[:40], **TRAIN | {"batch_size": 1, "local_epochs": 1, "grad_sample_mode": mode})
        assert result.steps == 40 and result.empty_batches > 5
        assert np.isfinite(result.mean_loss)
        assert all(torch.isfinite(v).all() for v in result.state_dict.values())


def test_noise_is_really_added(breast_cancer):
    x, y, _, _ = breast_cancer
    torch.manual_seed(1)
    model = nn.Linear(30, 2)
    quiet = train_dp(model, x, y, **TRAIN | {"noise_multiplier": 1e-6})
    loud = train_dp(model, x, y, **TRAIN | {"noise_multiplier": 20.0})
    start = model.state_dict()["weight"]
    assert (loud.state_dict["weight"] - start).norm() > 3 * (quiet.state_dict["weight"] - start).norm()


def test_a_seed_for_dp_randomness_is_refused(breast_cancer):
    """Attack: whoever knows the seed of the sampling and the noise can subtract the noise."""
    x, y, _, _ = breast_cancer
    for seed in (0, 1234):
        with pytest.raises(ConfigError, match="takes no seed.*fresh OS entropy"):
            train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"seed": seed})


def test_same_request_twice_gives_different_releases_whatever_the_global_rng(breast_cancer):
    """The study seed (here: torch's global RNG, which model initialisation seeds) does not reach the noise."""
    x, y, _, _ = breast_cancer
    releases = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        releases.append(train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"initial_state": {"weight": torch.zeros(2, 30), "bias": torch.zeros(2)}}))
    assert (releases[0].state_dict["weight"] - releases[1].state_dict["weight"]).abs().max() > 1e-3


def test_sampling_and_noise_come_from_os_entropy_only(breast_cancer, monkeypatch):
    """Fix os.urandom and the release repeats exactly: nothing else (no seed, no global RNG) feeds the randomness;
    each request asks the OS for two fresh 64-bit seeds."""
    from flsuite.privacy import dp_training

    x, y, _, _ = breast_cancer
    asked = []

    def fixed_entropy(n: int) -> bytes:
        asked.append(n)
        return bytes(range(n))

    monkeypatch.setattr(dp_training.os, "urandom", fixed_entropy)
    first = train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"initial_state": {"weight": torch.zeros(2, 30), "bias": torch.zeros(2)}})
    torch.manual_seed(99)
    again = train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"initial_state": {"weight": torch.zeros(2, 30), "bias": torch.zeros(2)}})
    assert asked == [8, 8, 8, 8]
    assert torch.equal(first.state_dict["weight"], again.state_dict["weight"])


def _hand_dp_sgd(state, x, y, *, steps, clip, lr, mu):
    """DP-SGD with every record in every batch (q = 1) and no noise, written out by hand: each record's loss is
    cross-entropy + mu/2 ||w - w0||^2, its gradient clipped to ``clip``, the sum divided by the batch size."""
    w, b = state["weight"].clone(), state["bias"].clone()
    w0, b0 = w.clone(), b.clone()
    for _ in range(steps):
        total_w, total_b = torch.zeros_like(w), torch.zeros_like(b)
        for i in range(len(y)):
            ww, bb = w.clone().requires_grad_(), b.clone().requires_grad_()
            loss = nn.functional.cross_entropy(x[i : i + 1] @ ww.T + bb, y[i : i + 1])
            loss = loss + mu / 2 * (((ww - w0) ** 2).sum() + ((bb - b0) ** 2).sum())
            gw, gb = torch.autograd.grad(loss, [ww, bb])
            factor = min(1.0, clip / (float(torch.sqrt((gw**2).sum() + (gb**2).sum())) + 1e-6))
            total_w += factor * gw
            total_b += factor * gb
        w, b = w - lr * total_w / len(y), b - lr * total_b / len(y)
    return w, b


def test_the_proximal_term_is_part_of_each_records_loss_and_clipped_with_it(breast_cancer):
    """A naive ``loss + mu/2 ||w - w0||^2`` on the batch loss never reaches Opacus' per-record gradients (it is
    silently dropped); here the released weights match per-record clipping of loss_i + the term."""
    x, y, _, _ = breast_cancer
    x, y = x[:64], y[:64]
    torch.manual_seed(0)
    model = nn.Linear(30, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = dict(noise_multiplier=1e-7, max_grad_norm=1.0, batch_size=64, local_epochs=3, lr=0.5)
    result = train_dp(model, x, y, **settings, proximal_mu=3.0)
    hand_w, hand_b = _hand_dp_sgd(start, x, y, steps=3, clip=1.0, lr=0.5, mu=3.0)
    plain_w, _ = _hand_dp_sgd(start, x, y, steps=3, clip=1.0, lr=0.5, mu=0.0)
    assert (hand_w - plain_w).abs().max() > 1e-3  # the term matters in this setting
    assert (result.state_dict["weight"] - hand_w).abs().max() < 1e-5
    assert (result.state_dict["bias"] - hand_b).abs().max() < 1e-5


def test_fedprox_under_dp_keeps_the_weights_near_the_global_model(breast_cancer):
    x, y, _, _ = breast_cancer
    torch.manual_seed(0)
    model = nn.Linear(30, 2)
    start = torch.cat([v.flatten() for v in model.state_dict().values()])

    def moved(mu: float) -> float:
        runs = [train_dp(model, x, y, **TRAIN | {"proximal_mu": mu}) for _ in range(3)]
        return float(np.mean([(torch.cat([v.flatten() for v in r.state_dict.values()]) - start).norm() for r in runs]))

    plain, proximal = moved(0.0), moved(1.5)
    assert proximal < 0.5 * plain, (plain, proximal)


def test_global_weights_load_before_training(breast_cancer):
    x, y, _, _ = breast_cancer
    zeros = {"weight": torch.zeros(2, 30), "bias": torch.zeros(2)}
    big = {"weight": torch.full((2, 30), 100.0), "bias": torch.zeros(2)}
    from_zero = train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"initial_state": zeros})
    from_big = train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"initial_state": big})
    assert from_big.state_dict["weight"].mean() > 50 > from_zero.state_dict["weight"].abs().max()


def test_the_result_becomes_a_ledger_event(breast_cancer):
    x, y, _, _ = breast_cancer
    result = train_dp(nn.Linear(30, 2), x, y, **TRAIN)
    event = result.dp_event(study_id="s", run_id="r", round=2, site="site-1", dataset="ward-7", delta=1e-5, accountant="prv")
    assert DpEvent.from_json(event.to_json()) == event
    assert event.dataset == "ward-7"  # the declared dataset, never a fingerprint of the bytes
    assert (event.sample_rate, event.noise_multiplier, event.steps, event.max_grad_norm) == (1 / 13, 1.0, 39, 1.0)
    assert "mt19937" in event.rng and "not cryptographically secure" in event.rng
    assert "os.urandom" in event.rng and "per request" in event.rng  # the ledger says the noise was fresh
    again = train_dp(nn.Linear(30, 2), x, y, **TRAIN)
    assert again.rng == result.rng  # a description of the generator, never the seed it drew


class WithBatchNorm(nn.Module):
    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(30, 8)
        self.norm = nn.BatchNorm1d(8, affine=affine)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.norm(self.hidden(x)))


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_is_refused_naming_the_layer_and_the_fix(breast_cancer, affine):
    x, y, _, _ = breast_cancer
    with pytest.raises(ConfigError, match=r"norm \(BatchNorm1d\).*GroupNorm"):
        train_dp(WithBatchNorm(affine), x, y, **TRAIN)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"noise_multiplier": 0.0}, ConfigError, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, ConfigError, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, ConfigError, "max_grad_norm"),
        ({"lr": float("nan")}, ConfigError, "lr"),
        ({"optimizer": "rmsprop"}, ConfigError, "optimizer"),
        ({"grad_sample_mode": "functorch"}, ConfigError, "grad_sample_mode"),
        ({"batch_size": 401}, PlanError, "larger than"),
        ({"seed": -3}, ConfigError, "seed"),
        ({"seed": 0}, ConfigError, "takes no seed"),
        ({"proximal_mu": -0.1}, ConfigError, "proximal_mu"),
        ({"proximal_mu": float("inf")}, ConfigError, "proximal_mu"),
        ({"proximal_mu": 0.1, "grad_sample_mode": "ghost"}, ConfigError, "grad_sample_mode=hooks"),
    ],
)
def test_bad_settings_fail_before_training(breast_cancer, changes, error, match):
    x, y, _, _ = breast_cancer
    with pytest.raises(error, match=match):
        train_dp(nn.Linear(30, 2), x, y, **TRAIN | changes)


def test_bad_data_is_refused(breast_cancer):
    x, y, _, _ = breast_cancer
    with pytest.raises(DataError, match="float32"):
        train_dp(nn.Linear(30, 2), x.double(), y, **TRAIN)
    with pytest.raises(DataError, match="int64"):
        train_dp(nn.Linear(30, 2), x, y.float(), **TRAIN)
    with pytest.raises(DataError, match="one row per record"):
        train_dp(nn.Linear(30, 2), x, y[:-1], **TRAIN)
    bad = x.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        train_dp(nn.Linear(30, 2), bad, y, **TRAIN)


@pytest.mark.skipif(secure_rng_available(), reason="torchcsprng is installed here")
def test_secure_rng_request_fails_before_training_with_an_explanation(breast_cancer):
    x, y, _, _ = breast_cancer
    with pytest.raises(PlanError, match="torchcsprng"):
        require_secure_rng()
    with pytest.raises(PlanError, match="secure_rng=false"):
        train_dp(nn.Linear(30, 2), x, y, **TRAIN | {"secure_rng": True})
