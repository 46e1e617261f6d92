"""The Poisson sampling schedule of local DP-SGD: the one place that turns (records, batch
size, local epochs) into the sample rate q and the step count, for planning and training alike.

It follows Opacus: a loader of N records in batches of B has ceil(N/B) batches per epoch;
Poisson sampling then takes each record with probability q = 1/ceil(N/B) (equal to B/N when B
divides N, slightly above otherwise) and runs ceil(N/B) steps per epoch. dp_training checks
that Opacus' loader agrees, so the plan and the ledger always account what was run. Pure.
"""

from __future__ import annotations

import dataclasses

from flsuite.errors import ConfigError, PlanError

__all__ = ["PoissonSchedule", "poisson_schedule"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoissonSchedule:
    """q, steps per epoch and per round (all local epochs) for one site."""

    records: int
    batch_size: int
    local_epochs: int
    sample_rate: float
    steps_per_epoch: int
    steps_per_round: int
    expected_batch_size: int


def poisson_schedule(*, records: int, batch_size: int, local_epochs: int, site: str | None = None) -> PoissonSchedule:
    """The schedule for ``records`` training records; refuses a batch larger than the data."""
    for name, value in (("batch_size", batch_size), ("local_epochs", local_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    where = f"site {site!r}" if site else "the training data"
    if isinstance(records, bool) or not isinstance(records, int) or records < 1:
        raise PlanError(f"{where} has no training records ({records!r}); DP-SGD needs at least one")
    if batch_size > records:
        raise PlanError(
            f"batch_size {batch_size} is larger than {where} ({records} records): "
            f"set batch_size <= {records}, or leave this site out"
        )
    steps_per_epoch = -(-records // batch_size)  # ceil(N / B), the length of a plain DataLoader
    sample_rate = 1.0 / steps_per_epoch
    return PoissonSchedule(
        records=records,
        batch_size=batch_size,
        local_epochs=local_epochs,
        sample_rate=sample_rate,
        steps_per_epoch=steps_per_epoch,
        steps_per_round=steps_per_epoch * local_epochs,
        expected_batch_size=int(records * sample_rate),
    )
