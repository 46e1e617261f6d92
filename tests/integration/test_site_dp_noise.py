"""A simulated DP site's noise is fresh for every request, and FedProx's mu reaches its DP-SGD.

The attack (issue 11, item 5): a coordinator asks one site twice, in the same round of a study
with the same seed, to train from two different starting models. If the site's Poisson sampling
and Gaussian noise came from the study seed, the noise would be the same in both releases and the
difference of the two updates would be the noiseless difference of the clipped gradients.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from flsuite import privacy, protocol
from flsuite.config import compose_study, to_run_config
from flsuite.data.study_data import model_shape, split_study
from flsuite.flower import InProcessGrid, new_run
from flsuite.models.weights import load_arrays, model_to_arrays
from flsuite.models.zoo import build_model
from flsuite.secagg import generate_identity
from flsuite.simulation import run_local_study
from flsuite.site import build_client_app, ensure_site_ledger

SIGMA = 2.0


def one_step_site(tmp_path):
    """One simulated site whose DP-SGD takes every record in its one step (q = 1): the sampling is then fixed,
    and the noiseless update can be computed by hand."""
    base = ["experiment=smoke", "secagg=none", "monitoring=none", "federation.num_sites=1", "federation.min_sites=1",
            "training.local_epochs=1"]
    probe = compose_study(base)
    records = len(split_study(probe.data, 1).sites[0])
    study = compose_study([f"sites_dir={tmp_path}", *base, f"training.batch_size={records}"])
    key = tmp_path / "identity.key"
    generate_identity(key)
    ensure_site_ledger(tmp_path / "ledger.jsonl", site="hospital-a", dataset="hospital-a", identity_key=key)
    node = {
        protocol.PARTITION_ID: 0,
        protocol.SITE_NAME: "hospital-a",
        protocol.LEDGER_PATH: str(tmp_path / "ledger.jsonl"),
        protocol.IDENTITY_KEY: str(key),
        protocol.MAX_EPSILON: 1000.0,
        protocol.DELTA: 1e-5,
    }
    grid = InProcessGrid.for_client_app(build_client_app(), run=new_run(7, to_run_config(study)), node_configs=[node])
    return study, grid, split_study(study.data, 1).sites[0]


def new_model(study, data, seed):
    shape = model_shape(study.data, data)
    return build_model(study.model, num_features=shape.num_features, num_classes=shape.num_classes, image_shape=shape.image_shape, seed=seed)


def release(grid, model) -> torch.Tensor:
    """Ask the site to train ``model`` in round 1; return the released update (weights after - before)."""
    node = next(iter(grid.get_node_ids()))
    config = ConfigRecord({protocol.SERVER_ROUND: 1, protocol.NOISE_MULTIPLIER: SIGMA})
    content = RecordDict({protocol.ARRAYS: model_to_arrays(model), protocol.CONFIG: config})
    with grid:
        (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type=protocol.TRAIN)], timeout=120)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else None
    trained = copy.deepcopy(model)
    load_arrays(trained, reply.content[protocol.ARRAYS])
    return flat(trained) - flat(model)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def noiseless_update(model, data, *, clip: float, lr: float) -> torch.Tensor:
    """One DP-SGD step over every record without noise, by hand: -lr * sum_i clip(g_i) / N."""
    features, labels = torch.from_numpy(data.features), torch.from_numpy(data.labels)
    params = list(model.parameters())
    total = torch.zeros_like(flat(model))
    for i in range(len(labels)):
        loss = torch.nn.functional.cross_entropy(model(features[i : i + 1]), labels[i : i + 1])
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        total += min(1.0, clip / (float(grad.norm()) + 1e-6)) * grad
    return -lr * total / len(labels)


def test_two_releases_from_different_models_do_not_reveal_the_clipped_gradients(tmp_path):
    """Attack: same site, same study seed, same round, two starting models. With seeded noise the difference
    of the releases equalled the noiseless clipped-gradient difference (to ~1e-8); with fresh noise the
    residual is Gaussian with std sqrt(2) * sigma * C * lr / N per coordinate."""
    study, grid, data = one_step_site(tmp_path)
    first, second = new_model(study, data, seed=0), new_model(study, data, seed=1)
    clip, lr = study.privacy.max_grad_norm, study.training.learning_rate
    difference = release(grid, first) - release(grid, second)
    noiseless = noiseless_update(first, data, clip=clip, lr=lr) - noiseless_update(second, data, clip=clip, lr=lr)
    residual = (difference - noiseless).double().numpy()
    expected_std = math.sqrt(2) * SIGMA * clip * lr / len(data)
    assert residual.std() > 0.6 * expected_std, (residual.std(), expected_std)  # seeded noise: ~1e-8
    assert residual.std() < 1.6 * expected_std, (residual.std(), expected_std)
    assert abs(residual.mean()) < 4 * expected_std / math.sqrt(residual.size)
    events = privacy.PrivacyLedger(tmp_path / "ledger.jsonl").events()
    assert len(events) == 2 and all("os.urandom" in e.rng and "per request" in e.rng for e in events)


def test_the_same_request_twice_gives_two_different_releases(tmp_path):
    study, grid, data = one_step_site(tmp_path)
    model = new_model(study, data, seed=0)
    first, second = release(grid, model), release(grid, model)
    expected_std = math.sqrt(2) * SIGMA * study.privacy.max_grad_norm * study.training.learning_rate / len(data)
    assert float((first - second).double().std()) > 0.6 * expected_std


@pytest.mark.parametrize("secagg", ["none", "secure"])
def test_a_dp_fedprox_study_trains_every_site_with_the_studys_mu(tmp_path, monkeypatch, secagg):
    """federation.strategy=fedprox with DP on: the coordinator sends mu and each site's DP-SGD uses it."""
    seen: list[tuple[float, float]] = []
    real_train_dp = privacy.train_dp

    def spy(*args, **kwargs):
        seen.append((kwargs.get("proximal_mu", 0.0), kwargs["noise_multiplier"]))
        return real_train_dp(*args, **kwargs)

    monkeypatch.setattr(privacy, "train_dp", spy)
    study = compose_study(
        [f"sites_dir={tmp_path / 'sites'}", "experiment=smoke", f"secagg={secagg}", "federation.rounds=1",
         "federation.strategy=fedprox", "federation.proximal_mu=0.3"]
    )
    summary = run_local_study(study, tmp_path / "out")
    assert summary["status"] == "completed", summary
    assert len(seen) == study.federation.num_sites
    assert all(mu == pytest.approx(0.3) for mu, _ in seen)
    assert np.isfinite([sigma for _, sigma in seen]).all()
