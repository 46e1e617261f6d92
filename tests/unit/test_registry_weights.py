"""Weights files: safetensors only; pickles and .pt files are refused without being unpickled."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flsuite.registry import WeightsFormatError, read_weights_file
from flsuite.registry.weights import parse_weights, serialise_weights


class _Trap:
    """Unpickling this would create the marker file: proof that nothing was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_safetensors_round_trip_is_deterministic(tmp_path: Path) -> None:
    weights = {"b": np.arange(3, dtype=np.int64), "a": np.eye(2, dtype=np.float64)}
    data = serialise_weights(weights)
    assert data == serialise_weights(dict(reversed(list(weights.items()))))
    (tmp_path / "w.safetensors").write_bytes(data)
    loaded = read_weights_file(tmp_path / "w.safetensors")
    for name, array in weights.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype


@pytest.mark.parametrize("name", ["model.pkl", "model.bin", "model.safetensors"])
def test_pickle_is_refused_unread_whatever_its_name(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"w": _Trap(marker)}, protocol=4))
    with pytest.raises(WeightsFormatError, match="refused|never loaded"):
        read_weights_file(path)
    assert not marker.exists()


def test_torch_pt_file_is_refused_by_name_and_by_content(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    pt = tmp_path / "model.pt"
    with zipfile.ZipFile(pt, "w") as archive:  # the layout torch.save writes
        archive.writestr("archive/data.pkl", pickle.dumps(_Trap(marker), protocol=2))
    with pytest.raises(WeightsFormatError, match=r"\.pt files may hold pickles"):
        read_weights_file(pt)
    renamed = pt.rename(tmp_path / "model.weights")
    with pytest.raises(WeightsFormatError, match="zip archive"):
        read_weights_file(renamed)
    assert not marker.exists()


@pytest.mark.parametrize("data", [
    b"",
    b"not safetensors at all",
    struct.pack("<Q", 10**12) + b"{}",
    struct.pack("<Q", 20) + b'{"w": {"dtype": "F3',
    struct.pack("<Q", 2) + b"{}" + b"",
], ids=["empty", "text", "huge-header", "bad-json", "no-tensors"])
def test_malformed_safetensors_gives_a_clean_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data)
    with pytest.raises(WeightsFormatError, match="broken.safetensors"):
        read_weights_file(path)


def test_truncated_tensor_data_gives_a_clean_error() -> None:
    data = serialise_weights({"w": np.ones((8, 8), dtype=np.float32)})
    with pytest.raises(WeightsFormatError, match="malformed safetensors"):
        parse_weights(data[:-10], source="upload")


def test_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsFormatError, match="cannot be read"):
        read_weights_file(tmp_path / "absent.safetensors")
