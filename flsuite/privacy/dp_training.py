"""Local DP-SGD with Opacus on in-memory tensors: the one module of flsuite that imports Opacus.

``train_dp`` trains a copy of a plain ``nn.Module`` with Poisson sampling (rate and steps from
``poisson_schedule``, the same function the planner uses), per-sample clipping to C and
Gaussian noise sigma * C, and returns the plain trained weights with the mechanism it ran.
Privacy is accounted from the site's ledger, never from the throwaway PrivacyEngine here.

The sampling and the noise never come from a seed: every call seeds two fresh generators from
the OS's entropy (``os.urandom``), so no study seed, round number or coordinator message can
make two releases share their noise (which would let their difference reveal the clipped
gradients). FedProx's proximal term is part of each record's loss, so it is clipped with it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from flsuite.errors import ConfigError, DataError, PlanError
from flsuite.privacy.events import DpEvent, utc_now_iso
from flsuite.privacy.schedule import PoissonSchedule, poisson_schedule

__all__ = [
    "DpTrainingResult",
    "check_dp_compatible",
    "require_secure_rng",
    "rng_description",
    "secure_rng_available",
    "train_dp",
]

OPTIMIZERS = ("sgd", "adam")
GRAD_SAMPLE_MODES = ("hooks", "ghost")


def secure_rng_available() -> bool:
    """True when Opacus' secure mode can run (it needs the torchcsprng package)."""
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        return False
    return True


def require_secure_rng() -> None:
    """Raise PlanError (before any training) when no cryptographically secure RNG is available."""
    if not secure_rng_available():
        raise PlanError(
            "privacy.secure_rng=true needs Opacus' secure mode, which needs the torchcsprng package; "
            "it is not installed (and has no build for this Python/torch). Without it the noise comes "
            "from torch's Mersenne Twister: fine for research, but a guarantee against an adversary "
            "who can predict the generator's state needs a CSPRNG. Install torchcsprng on the site "
            "or set privacy.secure_rng=false (the RNG used is recorded in the ledger either way)."
        )


SEED_BITS = 64  # fresh OS entropy per generator and per training request


def rng_description(*, secure: bool = False) -> str:
    """Text naming the generator that makes the noise and the sampling; never its seed."""
    if secure:
        return "torchcsprng (Opacus secure_mode, cryptographically secure)"
    return (
        f"torch.Generator mt19937 on cpu, torch {torch.__version__}, sampling and noise each seeded per request "
        f"from os.urandom ({SEED_BITS} bits), never from the study seed (fresh noise; MT19937 is not "
        "cryptographically secure)"
    )


def fresh_generator() -> torch.Generator:
    """A CPU generator seeded from 64 bits of OS entropy: nothing outside this call can know its seed."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(SEED_BITS // 8), "little"))


def check_dp_compatible(model: nn.Module) -> None:
    """Refuse, naming the layer, a model DP-SGD cannot train per sample (BatchNorm first)."""
    from opacus.validators import ModuleValidator

    problems = []
    for name, module in model.named_modules():
        label = f"{name or '<model>'} ({type(module).__name__})"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Checked even without trainable parameters: batch statistics mix records.
            problems.append(f"{label}: BatchNorm mixes records within a batch; use nn.GroupNorm instead "
                            "(opacus.validators.ModuleValidator.fix does the swap)")
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None and any(p.requires_grad for p in module.parameters(recurse=False)):
            problems.extend(f"{label}: {error}" for error in validator(module))
    if problems:
        raise ConfigError("the model cannot be trained with DP-SGD: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DpTrainingResult:
    """The trained plain weights and the mechanism that was run (what the ledger records)."""

    state_dict: dict[str, torch.Tensor]
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    mean_loss: float
    examples: int
    empty_batches: int
    rng: str

    @property
    def phase(self) -> tuple[float, float, int]:
        return (self.sample_rate, self.noise_multiplier, self.steps)

    def dp_event(
        self, *, study_id: str, run_id: str, round: int, site: str, dataset: str, delta: float, accountant: str,
        recorded_at: str | None = None,
    ) -> DpEvent:
        """The DP event for the site's ledger; ``recorded_at`` defaults to now (UTC)."""
        return DpEvent(
            study_id=study_id, run_id=run_id, round=round, site=site, dataset=dataset,
            sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier, steps=self.steps,
            max_grad_norm=self.max_grad_norm, delta=delta, accountant=accountant, rng=self.rng,
            recorded_at=recorded_at or utc_now_iso(),
        )


def train_dp(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    local_epochs: int,
    optimizer: str = "sgd",
    lr: float,
    proximal_mu: float = 0.0,
    grad_sample_mode: str = "hooks",
    initial_state: Mapping[str, torch.Tensor] | None = None,
    secure_rng: bool = False,
    seed: None = None,
) -> DpTrainingResult:
    """DP-SGD on a copy of ``model`` (left untouched), cross-entropy on logits.

    Poisson sampling and Gaussian noise draw from two generators seeded from fresh OS entropy
    on every call (or from torchcsprng with ``secure_rng``); ``seed`` exists only to refuse one:
    whoever knows the seed of the noise can subtract it. ``initial_state`` (plain keys) is
    loaded first and is the anchor of FedProx's proximal term when ``proximal_mu > 0``: each
    record's loss becomes ``loss_i + mu/2 * ||w - w_initial||^2``, so its gradient
    ``g_i + mu * (w - w_initial)`` is clipped to C per record like any other (hooks mode only).
    """
    _validate(noise_multiplier, max_grad_norm, lr, optimizer, grad_sample_mode, proximal_mu, seed)
    if secure_rng:
        require_secure_rng()
    features, labels = _check_data(features, labels)
    schedule = poisson_schedule(records=len(features), batch_size=batch_size, local_epochs=local_epochs)
    local = copy.deepcopy(model)
    if initial_state is not None:
        local.load_state_dict(initial_state)
    local.train()
    check_dp_compatible(local)
    # Two independent fresh generators, made anew for every request (never reused, never seeded
    # from the study): one drives Poisson sampling, the other the Gaussian noise.
    sampling_rng, noise_rng = fresh_generator(), fresh_generator()

    loss_sum, nonempty, empty, steps = _run(
        local, features, labels, schedule, noise_multiplier, max_grad_norm, optimizer, lr,
        grad_sample_mode, sampling_rng, noise_rng, secure_rng, float(proximal_mu),
    )
    return DpTrainingResult(
        state_dict={k: v.detach().clone() for k, v in local.state_dict().items()},
        steps=steps,
        sample_rate=schedule.sample_rate,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        mean_loss=loss_sum / nonempty if nonempty else math.nan,
        examples=len(features),
        empty_batches=empty,
        rng=rng_description(secure=secure_rng),
    )


def _run(local, features, labels, schedule: PoissonSchedule, sigma, clip, optimizer_name, lr,
         grad_sample_mode, sampling_rng, noise_rng, secure_rng, proximal_mu):
    params = [p for p in local.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr) if optimizer_name == "sgd" else torch.optim.Adam(params, lr=lr)
    plain_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=schedule.batch_size, generator=sampling_rng
    )
    with warnings.catch_warnings():
        # The RNG in use is recorded in the ledger; Opacus' reminder adds nothing here. The
        # backward-hook notice is about inputs without gradients, which is the normal case.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the (largest|smallest) alpha.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        return _make_private_and_train(
            local, optimizer, plain_loader, schedule, sigma, clip, grad_sample_mode, noise_rng, secure_rng,
            proximal_mu,
        )


def _make_private_and_train(local, optimizer, plain_loader, schedule, sigma, clip, grad_sample_mode, noise_rng,
                            secure_rng, proximal_mu):
    from opacus import PrivacyEngine

    # FedProx's anchor: the weights the request started from (the global model).
    anchor = [p.detach().clone() for p in local.parameters() if p.requires_grad] if proximal_mu > 0 else []
    engine = PrivacyEngine(accountant="prv", secure_mode=secure_rng)
    try:
        wrapped = engine.make_private(
            module=local, optimizer=optimizer, data_loader=plain_loader, criterion=nn.CrossEntropyLoss(),
            noise_multiplier=sigma, max_grad_norm=clip, poisson_sampling=True,
            noise_generator=None if secure_rng else noise_rng, grad_sample_mode=grad_sample_mode,
        )
    except (NotImplementedError, ValueError) as error:
        raise ConfigError(f"Opacus cannot train this model with grad_sample_mode={grad_sample_mode!r}: {error}") from None
    if grad_sample_mode == "ghost":
        module, dp_optimizer, criterion, loader = wrapped
    else:
        (module, dp_optimizer, loader), criterion = wrapped, nn.CrossEntropyLoss()
    if abs(loader.sample_rate - schedule.sample_rate) > 1e-12 or len(loader) != schedule.steps_per_epoch:
        raise RuntimeError(  # the plan and the ledger would account something else than what runs
            f"Opacus sampled at q={loader.sample_rate} x {len(loader)} steps, the schedule says "
            f"q={schedule.sample_rate} x {schedule.steps_per_epoch}"
        )
    loss_sum, nonempty, empty = 0.0, 0, 0
    try:
        for _ in range(schedule.local_epochs):
            for batch_x, batch_y in loader:
                dp_optimizer.zero_grad()
                loss = criterion(module(batch_x), batch_y)
                loss.backward()
                proximal = _add_proximal_term(dp_optimizer.params, anchor, proximal_mu) if anchor else 0.0
                dp_optimizer.step()  # an empty batch still adds noise and still counts as a step
                if len(batch_y) == 0:
                    empty += 1
                else:
                    loss_sum += float(loss.item()) + proximal
                    nonempty += 1
    finally:
        module.to_standard_module()  # removes Opacus' hooks from the local copy
    (history,) = engine.accountant.history  # [(sigma, q, steps)]: a cross-check, not the accounting
    return loss_sum, nonempty, empty, history[2]


def _add_proximal_term(params, anchor, mu: float) -> float:
    """Add FedProx's term to every record's loss, before Opacus clips each record's gradient.

    Opacus builds per-record gradients (``p.grad_sample``, shape [batch, *p.shape], the gradient
    of loss_i for the mean loss) from layer hooks, so a term added to the batch loss that does not
    flow through a layer would be silently dropped. The gradient of mu/2 * ||w - w0||^2 is
    mu * (w - w0) for every record, so adding it to each row of ``grad_sample`` is exactly training
    on loss_i + mu/2 * ||w - w0||^2: the optimizer then clips each record's whole gradient to C,
    sums, adds noise sigma * C and divides by the expected batch size, as for any loss. Each
    record's contribution stays bounded by C, so the sensitivity, and the accounting, do not change.
    Returns the term's value (for the reported loss).
    """
    squared = 0.0
    for p, start in zip(params, anchor, strict=True):
        per_record = p.grad_sample
        if not isinstance(per_record, torch.Tensor):
            raise RuntimeError(f"expected one per-record gradient tensor for a parameter of shape {tuple(p.shape)}, got {type(per_record).__name__}")
        moved = p.detach() - start
        p.grad_sample = per_record + mu * moved.unsqueeze(0).to(per_record.dtype)
        squared += float((moved**2).sum())
    return mu / 2 * squared


def _validate(sigma, clip, lr, optimizer, grad_sample_mode, mu, seed) -> None:
    for name, value in (("noise_multiplier", sigma), ("max_grad_norm", clip), ("lr", lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"privacy/training {name} must be a finite number > 0, got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}, got {grad_sample_mode!r}")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not (mu >= 0 and math.isfinite(mu)):
        raise ConfigError(f"federation.proximal_mu must be a finite number >= 0, got {mu!r}")
    if mu > 0 and grad_sample_mode != "hooks":
        raise ConfigError(
            f"FedProx under DP (proximal_mu={mu}) needs privacy.grad_sample_mode=hooks: ghost clipping never forms "
            "each record's gradient, so the proximal term cannot be clipped with it; set "
            "privacy.grad_sample_mode=hooks or federation.strategy=fedavg"
        )
    if seed is not None:
        raise ConfigError(
            f"train_dp takes no seed (got {seed!r}): DP-SGD's sampling and noise are drawn from fresh OS entropy "
            "for every request, since whoever knows the seed can subtract the noise; the study seed governs "
            "data splits and model initialisation only"
        )


def _check_data(features, labels):
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError("features and labels must be torch tensors")
    if features.dtype != torch.float32:
        raise DataError(f"features must be float32, got {features.dtype}")
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise DataError(f"labels must be a 1-D int64 tensor, got {labels.dtype} with shape {tuple(labels.shape)}")
    if features.dim() < 2 or len(features) != len(labels):
        raise DataError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} must have one row per record")
    if not torch.isfinite(features).all():
        raise DataError("features contain NaN or infinite values")
    return features.detach().contiguous(), labels.detach().contiguous()
