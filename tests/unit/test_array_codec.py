"""array_values and array_of: the fast decode equals Array.numpy and refuses what np.load refuses; the fast encode gives Flower's bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from flsuite.models import ModelLayout, decoded
from flsuite.models.array_codec import array_of, array_values

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


# --- array_of: the encode, byte for byte Flower's -------------------------------------------------

ODD_LAYOUTS = [
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # np.save writes it in Fortran order
    np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2],  # neither C nor Fortran contiguous
    np.arange(24, dtype=np.int32).reshape(4, 6).T,  # a transposed view
    np.zeros((1,) * 40, dtype=np.float32),  # 40 dimensions: a long header
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),  # structured: not a plain dtype
]


def _same_as_flowers(values: np.ndarray) -> None:
    ours, flowers = array_of(values), Array.from_numpy_ndarray(values)
    assert (ours.dtype, tuple(ours.shape), ours.stype) == (flowers.dtype, tuple(flowers.shape), flowers.stype)
    assert ours.data == flowers.data


@pytest.mark.parametrize("values", CASES + ODD_LAYOUTS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_array_of_gives_flowers_bytes(values: np.ndarray) -> None:
    _same_as_flowers(values)
    if values.dtype.fields is None:
        np.testing.assert_array_equal(array_values(array_of(values)), values)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["<f4", ">f8", "<i2", "|u1", "|b1", "<c8", "<u8", "<f2"]),
       st.lists(st.integers(0, 5), max_size=4), st.booleans(), st.booleans())
def test_array_of_matches_flower_on_any_shape_and_layout(dtype: str, shape: list[int], fortran: bool, strided: bool) -> None:
    values = np.arange(int(np.prod(shape)) * 2).astype(dtype)[::2].reshape(shape) if shape else np.array(7, dtype=dtype)
    if fortran:
        values = np.asfortranarray(values)
    if strided and values.ndim:
        values = values[..., ::-1]
    _same_as_flowers(values)


def test_array_of_refuses_what_is_not_an_array() -> None:
    with pytest.raises(TypeError, match="numpy ndarray"):
        array_of([1.0, 2.0])  # type: ignore[arg-type]


def test_model_weights_encode_as_flower_would() -> None:
    """model_to_arrays (what every site replies with) holds the bytes of Flower's from_torch_state_dict."""
    import torch

    from flsuite.config.schema import ModelConfig
    from flsuite.models import build_model, model_to_arrays

    for config, image in ((ModelConfig(name="mlp", hidden_units=16), None), (ModelConfig(name="cnn", channels=4), (8, 8))):
        model = build_model(config, num_features=64, num_classes=10, image_shape=image, seed=3)
        ours, flowers = model_to_arrays(model), ArrayRecord.from_torch_state_dict(model.state_dict())
        assert list(ours) == list(flowers)
        assert all(ours[key].data == flowers[key].data and ours[key].dtype == flowers[key].dtype for key in ours)
        next(iter(model.parameters())).data.add_(1.0)  # a copy: changing the model later leaves the record alone
        assert torch.equal(torch.from_numpy(array_values(ours[next(iter(ours))])) + 1.0, next(iter(model.state_dict().values())))


@pytest.mark.parametrize("values", [
    np.zeros(3, dtype=np.dtype("g").newbyteorder(">")),  # numpy exports no buffer for it: tobytes writes it
    np.zeros(2, dtype=np.dtype("G").newbyteorder(">")),
    np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),  # a record dtype whose name np.dtype cannot read back
    np.ma.masked_array(np.arange(8.0), mask=[0, 1, 0, 0, 1, 0, 0, 0])[::2],  # np.save writes the raw values, not the fill
], ids=["big-endian-longdouble", "big-endian-clongdouble", "recarray", "masked-strided"])
def test_array_of_handles_odd_dtypes_and_subclasses_as_flower_does(values: np.ndarray) -> None:
    _same_as_flowers(values)
