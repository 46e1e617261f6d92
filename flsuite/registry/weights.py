"""Weights as bytes and back: safetensors only, never pickle.

`serialise_weights` turns a `dict[str, numpy.ndarray]` into safetensors bytes (string
metadata only); `parse_weights` and `read_weights_file` turn bytes or a file back into
arrays and refuse pickles, torch `.pt` archives and anything that is not well-formed
safetensors without ever deserialising it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as _safetensors_load
from safetensors.numpy import save as _safetensors_save

from flsuite.errors import WeightsFormatError

__all__ = ["serialise_weights", "parse_weights", "read_weights_file", "tensor_summary"]

FORMAT = "flsuite.weights/1"
_REFUSED_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
_MAX_HEADER = 100 * 1024 * 1024


def serialise_weights(weights: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Safetensors bytes of `weights` (same arrays give the same bytes)."""
    if not isinstance(weights, Mapping) or not weights:
        raise WeightsFormatError("weights: give a non-empty dict of name -> numpy.ndarray")
    arrays: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        if not isinstance(name, str) or not name:
            raise WeightsFormatError(f"weights: tensor name {name!r} is not a non-empty string")
        if not isinstance(array, np.ndarray):
            raise WeightsFormatError(f"weights[{name!r}]: is a {type(array).__name__}, not a "
                                     "numpy.ndarray (convert torch tensors with .numpy())")
        if array.dtype.kind not in "biuf" or array.dtype.byteorder == ">":
            raise WeightsFormatError(f"weights[{name!r}]: dtype {array.dtype} cannot be stored; "
                                     "use a little-endian bool, integer or float dtype")
        arrays[name] = np.ascontiguousarray(array)
    tags = {"format": FORMAT, **dict(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise WeightsFormatError("weights metadata: keys and values must be strings")
    return _safetensors_save(arrays, metadata=tags)


def parse_weights(data: bytes, *, source: str = "weights") -> dict[str, np.ndarray]:
    """Arrays from safetensors bytes; WeightsFormatError (naming `source`) for anything else."""
    _refuse_known_unsafe(data[:8], source)
    if len(data) < 10:
        raise WeightsFormatError(f"{source}: too short to be a safetensors file ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER, len(data) - 8) or data[8:9] != b"{":
        raise WeightsFormatError(f"{source}: not a safetensors file (bad header length or start)")
    try:
        json.loads(data[8:8 + header_len])
        arrays = _safetensors_load(data)
    except Exception as exc:  # noqa: BLE001 - the Rust parser raises its own error types
        raise WeightsFormatError(f"{source}: malformed safetensors file ({exc})") from None
    if not arrays:
        raise WeightsFormatError(f"{source}: the safetensors file holds no tensors")
    return arrays


def read_weights_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Arrays from a `.safetensors` file; pickles and `.pt` files are refused unread."""
    path = Path(path)
    if path.suffix.lower() in _REFUSED_SUFFIXES:
        raise WeightsFormatError(f"{path}: {path.suffix} files may hold pickles and are never "
                                 "loaded; save the weights with safetensors instead")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_weights(data, source=str(path))


def tensor_summary(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """{name: {"dtype", "shape"}} for a manifest."""
    return {name: {"dtype": str(array.dtype), "shape": list(array.shape)}
            for name, array in sorted(weights.items())}


def _refuse_known_unsafe(head: bytes, source: str) -> None:
    if head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}:
        kind = "a Python pickle (or a legacy torch .pt file)"
    elif head[:4] == b"PK\x03\x04":
        kind = "a zip archive (a torch .pt file?)"
    elif head[:6] == b"\x93NUMPY":
        kind = "a numpy .npy file"
    else:
        return
    raise WeightsFormatError(f"{source}: is {kind}; refused without deserialising it. "
                             "Save the weights with safetensors instead")
