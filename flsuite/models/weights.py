"""Models as Flower ArrayRecords: weights in and out, the flat vectors secure aggregation
masks, and the model hash.

Weights travel as ArrayRecords (numpy buffers, never pickle). Arrays are laid out in sorted key order (so the layout does not depend on how a record
was serialised), each flattened in C order into one float64 vector. The model hash
binds names, dtypes, shapes and bytes of every array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord

if TYPE_CHECKING:  # torch loads only where a model is built (secure-aggregation stages need none)
    from torch import nn

from flsuite.secagg import model_hash

__all__ = ["ModelLayout", "load_arrays", "model_digest", "model_to_arrays"]


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord (a copy, detached from the model)."""
    return ArrayRecord({key: value.detach().clone() for key, value in model.state_dict().items()})


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Copy weights into the model in place; keys and shapes must match exactly."""
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


@dataclass(frozen=True)
class ModelLayout:
    """Names, shapes and dtypes of a model's arrays, in the order of the original record."""

    order: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]

    @classmethod
    def of(cls, record: ArrayRecord) -> ModelLayout:
        arrays = {key: record[key].numpy() for key in record}
        return cls(order=tuple(record.keys()), shapes={k: a.shape for k, a in arrays.items()},
                   dtypes={k: a.dtype for k, a in arrays.items()})

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes.values()))

    def flatten(self, record: ArrayRecord) -> np.ndarray:
        """One float64 vector of the record's arrays; ValueError when names or shapes differ."""
        if set(record.keys()) != set(self.order):
            raise ValueError(f"arrays {sorted(record.keys())} differ from the model's {sorted(self.order)}")
        parts = []
        for key in sorted(self.order):
            array = record[key].numpy()
            if array.shape != self.shapes[key]:
                raise ValueError(f"array {key!r} has shape {array.shape}, the model {self.shapes[key]}")
            parts.append(np.asarray(array, dtype=np.float64).ravel())
        return np.concatenate(parts) if parts else np.zeros(0)

    def rebuild(self, vector: np.ndarray) -> ArrayRecord:
        """An ArrayRecord with the model's names, shapes and dtypes (integers rounded)."""
        out: dict[str, np.ndarray] = {}
        offset = 0
        for key in sorted(self.order):
            size = int(np.prod(self.shapes[key]))
            values = vector[offset : offset + size].reshape(self.shapes[key])
            dtype = self.dtypes[key]
            # np.asarray: np.rint of a 0-d view (a scalar buffer such as a step count) returns a numpy scalar
            out[key] = np.asarray(np.rint(values) if np.issubdtype(dtype, np.integer) else values).astype(dtype)
            offset += size
        return ArrayRecord({key: Array(out[key]) for key in self.order})


def model_digest(record: ArrayRecord) -> bytes:
    """SHA-256 over every array's name, dtype, shape and bytes, in sorted name order."""
    return model_hash({key: record[key].numpy() for key in record.keys()})
