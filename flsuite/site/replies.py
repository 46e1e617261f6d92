"""The replies a site sends, built from the contract's types (``flsuite.protocol``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from flsuite import protocol
from flsuite.errors import BudgetExhausted
from flsuite.models.weights import model_to_arrays

if TYPE_CHECKING:
    import torch

__all__ = ["budget_refusal_reply", "refusal_reply", "train_reply"]


def refusal_reply(msg: Message, refusal: protocol.Refusal) -> Message:
    """A site's typed refusal: a reply that carries the Refusal record and nothing else."""
    return Message(RecordDict({protocol.REFUSAL: ConfigRecord(refusal.to_record())}), reply_to=msg)


def budget_refusal_reply(msg: Message, *, site: str, refusal: BudgetExhausted) -> Message:
    """The refusal of a release that would pass the site's cap: nothing was released."""
    return refusal_reply(
        msg, protocol.Refusal(kind="budget-exhausted", site=site, message=str(refusal), remaining_epsilon=refusal.remaining_epsilon)
    )


def train_reply(
    msg: Message, *, model: torch.nn.Module, metrics: dict[str, float], status: protocol.SiteStatus, dp_event: protocol.DpEvent | None = None
) -> Message:
    """The reply to a train request: the trained weights, the metrics, the site status and its DP event."""
    content = RecordDict(
        {
            protocol.ARRAYS: model_to_arrays(model),
            protocol.METRICS: MetricRecord(metrics),
            protocol.SITE: ConfigRecord(status.to_record()),
        }
    )
    if dp_event is not None:
        content[protocol.DP_EVENT] = ConfigRecord(protocol.dp_event_to_record(dp_event))
    return Message(content, reply_to=msg)
