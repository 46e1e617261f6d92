"""Models as Flower ArrayRecords: weights in and out, decoded once, and the flat vectors secure
aggregation masks.

Weights travel as ArrayRecords (numpy buffers, never pickle). Arrays are laid out in sorted key order (so the layout does not depend on how a record
was serialised), each flattened in C order into one float64 vector. The model hash that binds
names, dtypes, shapes and bytes of every array is ``flsuite.secagg.model_hash`` of the decoded arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord

if TYPE_CHECKING:  # torch loads only where a model is built (secure-aggregation stages need none)
    from torch import nn

from flsuite.models.array_codec import array_values, record_of

__all__ = ["ModelLayout", "decoded", "load_arrays", "model_to_arrays"]


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord (a copy, detached from the model): the bytes Flower's
    ``ArrayRecord.from_torch_state_dict`` would hold, encoded by ``record_of``."""
    return record_of({key: value.detach().cpu().numpy() for key, value in model.state_dict().items()})


def decoded(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays as numpy arrays, in its order: decode once, then reuse (each decode parses the bytes)."""
    return {key: array_values(record[key]) for key in record}


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Copy weights into the model in place; keys and shapes must match exactly."""
    import torch

    model.load_state_dict({key: torch.from_numpy(values) for key, values in decoded(arrays).items()}, strict=True)


@dataclass(frozen=True)
class ModelLayout:
    """Names, shapes and dtypes of a model's arrays, in the order of the original record.

    Vectors lay the arrays out in sorted name order, each flattened in C order, as float64.
    """

    order: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]

    @classmethod
    def of(cls, record: ArrayRecord) -> ModelLayout:
        return cls.of_values(decoded(record))

    @classmethod
    def of_values(cls, values: Mapping[str, np.ndarray]) -> ModelLayout:
        """The layout of already decoded arrays (name -> array, in the record's order)."""
        return cls(order=tuple(values), shapes={k: a.shape for k, a in values.items()},
                   dtypes={k: a.dtype for k, a in values.items()})

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes.values()))

    def flatten(self, record: ArrayRecord) -> np.ndarray:
        """One float64 vector of the record's arrays; ValueError when names or shapes differ."""
        return self.flatten_values(decoded(record))

    def flatten_values(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """One float64 vector of decoded arrays (one copy, no concatenation); ValueError when
        names or shapes differ. An empty model gives an empty vector."""
        self._check_names(values.keys())
        vector = np.empty(self.size, dtype=np.float64)
        for key, part in self._parts(vector):
            np.copyto(part, self._checked(key, values[key]), casting="unsafe")
        return vector

    def difference(self, values: Mapping[str, np.ndarray], record: ArrayRecord) -> np.ndarray:
        """``record - values`` (e.g. trained minus global weights) as one float64 vector, in one
        pass: each array is decoded once and both sides are widened to float64 as they are
        subtracted straight into the vector. ValueError when names or shapes differ."""
        self._check_names(values.keys())
        self._check_names(record.keys())
        vector = np.empty(self.size, dtype=np.float64)
        for key, part in self._parts(vector):
            np.subtract(self._checked(key, array_values(record[key])), self._checked(key, values[key]), out=part,
                        dtype=np.float64)
        return vector

    def rebuild(self, vector: np.ndarray) -> ArrayRecord:
        """An ArrayRecord with the model's names, shapes and dtypes (integers rounded)."""
        out: dict[str, np.ndarray] = {}
        for key, values in self._parts(vector):
            dtype = self.dtypes[key]
            # np.asarray: np.rint of a 0-d view (a scalar buffer such as a step count) returns a numpy scalar
            out[key] = np.asarray(np.rint(values) if np.issubdtype(dtype, np.integer) else values).astype(dtype)
        return record_of({key: out[key] for key in self.order})

    def _parts(self, vector: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(name, view of ``vector`` shaped like the array), in sorted name order."""
        offset = 0
        for key in sorted(self.order):
            size = int(np.prod(self.shapes[key]))
            yield key, vector[offset : offset + size].reshape(self.shapes[key])
            offset += size

    def _check_names(self, keys: Iterable[str]) -> None:
        names = set(keys)
        missing, unexpected = sorted(set(self.order) - names), sorted(names - set(self.order))
        if missing or unexpected:
            raise ValueError(f"the arrays differ from the model's: missing {missing}, unexpected {unexpected}")

    def _checked(self, key: str, array: np.ndarray) -> np.ndarray:
        if array.shape != self.shapes[key]:
            raise ValueError(f"array {key!r} has shape {array.shape}, the model {self.shapes[key]}")
        return array
