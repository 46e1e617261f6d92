"""Moving models in and out of Flower records, and naming what a message carries.

Weights travel as Flower ``ArrayRecord``s (numpy buffers, never pickle). The record keys
below are the contract between the coordinator and its sites.
"""

from __future__ import annotations

import hashlib
import json

from flwr.app import ArrayRecord, Error, Message
from torch import nn

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
DP_EVENT = "dp"
REFUSAL = "refusal"
NUM_EXAMPLES = "num-examples"


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord (a copy, detached from the model)."""
    return ArrayRecord({key: value.detach().clone() for key, value in model.state_dict().items()})


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Copy weights into the model in place; keys and shapes must match exactly."""
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


def arrays_digest(arrays: ArrayRecord) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(arrays.keys()):
        array = arrays[key].numpy()
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


SITE_REFUSAL = 4200  # Error.code of a site's typed refusal; Error.reason is JSON
REFUSAL_KINDS = ("budget-exhausted", "privacy-required")


def refusal(msg: Message, *, kind: str, site: str, message: str, remaining_epsilon: float | None = None) -> Message:
    """A site's typed refusal: an Error reply (so it passes any client mod unchanged) with a JSON reason."""
    if kind not in REFUSAL_KINDS:
        raise ValueError(f"unknown refusal kind {kind!r}")
    reason = json.dumps({"kind": kind, "site": site, "remaining_epsilon": remaining_epsilon, "message": message})
    return Message(Error(code=SITE_REFUSAL, reason=reason), reply_to=msg)


def parse_refusal(code: int | None, reason: str) -> dict | None:
    """The refusal a site sent, from an error reply (or from secure aggregation's 'stage: reason' text)."""
    if code not in (None, SITE_REFUSAL):
        return None
    start = reason.find("{")
    if start < 0:
        return None
    try:
        parsed = json.loads(reason[start:])
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and parsed.get("kind") in REFUSAL_KINDS else None
