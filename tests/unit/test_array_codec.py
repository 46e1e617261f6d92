"""array_values: the fast decode of a Flower Array equals Array.numpy, and refuses what np.load refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from flsuite.models import ModelLayout, decoded
from flsuite.models.array_codec import array_values

CASES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.linspace(-1, 1, 7, dtype=np.float64),
    np.array(5, dtype=np.int64),  # 0-d (a BatchNorm step count)
    np.zeros((0, 3), dtype=np.float32),
    np.array([True, False, True]),
    np.arange(6, dtype=np.uint32).reshape(2, 3),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    np.arange(4, dtype=np.float16),
    np.arange(6, dtype=">f4").reshape(3, 2),  # big-endian
    np.arange(2 * 3 * 4 * 5, dtype=np.int8).reshape(2, 3, 4, 5),
]


@pytest.mark.parametrize("values", CASES, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_equals_flowers_decode(values: np.ndarray) -> None:
    array = Array(values)
    got, expected = array_values(array), array.numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert got.flags.writeable and got.flags.c_contiguous
    got[...] = 0  # a copy: the message's bytes are untouched
    np.testing.assert_array_equal(array.numpy(), values)


def test_the_common_case_never_parses_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes it fast: a model's arrays decode without np.load's literal_eval of the header."""
    record = ArrayRecord({"w": Array(np.ones((280, 64), np.float32)), "b": Array(np.ones(280, np.float32))})

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("np.load was called")

    monkeypatch.setattr(np, "load", refuse)
    values = decoded(record)
    assert values["w"].shape == (280, 64) and float(values["b"].sum()) == 280.0


def _with_header(declared: np.ndarray, data: bytes) -> Array:
    return Array(dtype=str(declared.dtype), shape=tuple(declared.shape), stype="numpy.ndarray", data=data)


def _npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def test_object_arrays_are_never_unpickled() -> None:
    """A peer's bytes that claim an object array: np.load with allow_pickle=False refuses them."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    array = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        array_values(array)


def test_object_header_under_a_numeric_declaration_is_refused() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([None, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        array_values(Array(dtype="float64", shape=(2,), stype="numpy.ndarray", data=buffer.getvalue()))


def test_truncated_bytes_are_refused() -> None:
    data = _npy(np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError):
        array_values(_with_header(np.arange(10, dtype=np.float32), data[:-4]))


def test_extra_bytes_do_not_take_the_fast_path() -> None:
    """Trailing bytes are not values of the declared shape: decoded as np.load reads the file, not sliced blindly."""
    data = _npy(np.arange(10, dtype=np.float32)) + b"\0" * 8
    got = array_values(_with_header(np.arange(10, dtype=np.float32), data))
    np.testing.assert_array_equal(got, np.arange(10, dtype=np.float32))  # np.load reads what the header says


def test_a_declaration_that_lies_gets_what_the_bytes_say() -> None:
    """Declared float32 (3,), bytes of float64 (2,): the header decides, as with Array.numpy; the
    coordinator's checks then compare dtype and shape with the global model's."""
    array = _with_header(np.zeros(3, np.float32), _npy(np.array([1.5, 2.5])))
    got = array_values(array)
    assert got.dtype == np.float64 and got.shape == (2,)
    assert ModelLayout.of_values({"w": np.zeros(3, np.float32)}).shapes["w"] != got.shape


def test_fortran_order_is_read_in_its_order() -> None:
    values = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    got = array_values(_with_header(values, _npy(values)))
    np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize("shape", [(-1,), (True,), (4,), (2**63, 1), (2**64,), (2**40, 2**40), (1,) * 65])
def test_nonsense_shapes_fall_back_to_nps_reader(shape: object) -> None:
    """Negative, boolean, wrong, past-int64 and past-64-dimension declarations: the bytes' own header decides."""
    data = _npy(np.arange(3, dtype=np.float32))
    got = array_values(Array(dtype="float32", shape=shape, stype="numpy.ndarray", data=data))  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, np.arange(3, dtype=np.float32))


def test_another_stype_is_refused_as_flower_refuses_it() -> None:
    array = Array(dtype="float32", shape=(3,), stype="torch.Tensor", data=_npy(np.zeros(3, np.float32)))
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        array_values(array)
