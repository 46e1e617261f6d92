"""Moving models in and out of Flower records, and naming what a message carries.

Weights travel as Flower ``ArrayRecord``s (numpy buffers, never pickle). The record keys
below are the contract between the coordinator and its sites.
"""

from __future__ import annotations

import hashlib

from flwr.app import ArrayRecord
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
