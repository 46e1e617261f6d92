"""Encoding and decoding a Flower ``Array`` without numpy's header writer and parser.

A Flower ``Array`` of stype ``numpy.ndarray`` carries the bytes ``np.save`` writes: a
header (a Python dict literal) and the raw values. ``Array.numpy`` parses that header with
``ast.literal_eval`` on every call, which costs more than copying the values of a
100k-parameter model. ``array_values`` decodes the common case directly: when the bytes
begin with exactly the header ``np.save`` writes for the Array's declared dtype and shape
(C order, format version 1.0) and the rest is exactly that many values, it copies the
values out with ``np.frombuffer``. Anything else (another header, Fortran order, another
format version, a size that does not match, a dtype outside bool/int/uint/float/complex)
goes through ``Array.numpy``, which parses the header itself and never unpickles
(``allow_pickle=False``). Both paths give an equal, writable array of the same dtype and
shape (tests/unit/test_array_codec.py checks them against each other).

``array_of`` is the way back: the same bytes ``Array.from_numpy_ndarray`` makes (``np.save``
into a buffer), built from the cached header and the values' bytes. It skips ``np.save``'s
per-call header formatting and its two copies through a ``BytesIO``, which cost more than the
values of a 100k-parameter model. Arrays whose header ``np.save`` would write differently
(Fortran order, format 2.0, a dtype outside bool/int/uint/float/complex) go through Flower's
own ``Array.from_numpy_ndarray``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["array_of", "array_values", "record_of"]

_PLAIN_KINDS = frozenset("biufc")  # values that are just bytes: no objects, no structured or void types
_HEADERS_KEPT = 1024
_MAX_DIMS = 64  # numpy's limit on dimensions


def array_values(array: Array) -> np.ndarray:
    """The Array's values as a new numpy array; a malformed Array raises what ``Array.numpy`` raises (np.load's
    errors: ValueError, TypeError, ...), which a caller decoding another party's bytes must catch."""
    header = _expected_header(array.stype, array.dtype, tuple(array.shape)) if _shape_ok(array.shape) else None
    if header is not None:
        prefix, dtype, count = header
        data = array.data
        if len(data) == len(prefix) + count * dtype.itemsize and data.startswith(prefix):
            return np.frombuffer(data, dtype=dtype, count=count, offset=len(prefix)).reshape(array.shape).copy()
    return array.numpy()


def array_of(values: np.ndarray) -> Array:
    """A Flower ``Array`` of ``values``, byte for byte what ``Array.from_numpy_ndarray(values)`` gives."""
    if not isinstance(values, np.ndarray):
        raise TypeError(f"array_of takes a numpy ndarray, not {type(values).__name__}")
    plain = values if type(values) is np.ndarray else values.view(np.ndarray)  # np.save writes a subclass's raw values
    dtype = plain.dtype
    # np.save writes an array that is Fortran- but not C-contiguous in Fortran order, and structured
    # dtypes with their own header text: Flower's path does both.
    if plain.flags.fnc or dtype.fields is not None or dtype.kind not in _PLAIN_KINDS:
        return Array.from_numpy_ndarray(values)
    dtype_name = str(dtype)
    header = _expected_header("numpy.ndarray", dtype_name, plain.shape)
    if header is None:
        return Array.from_numpy_ndarray(values)
    # One copy: join reads a C-contiguous array's buffer in place (what tobytes would copy first); numpy
    # exports no buffer for some non-native dtypes (a big-endian long double), which tobytes writes.
    in_place = plain.flags.c_contiguous and dtype.isnative
    data = b"".join((header[0], plain.data if in_place else plain.tobytes()))
    return Array(dtype=dtype_name, shape=plain.shape, stype="numpy.ndarray", data=data)


def record_of(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of ``array_of`` each array, in the mapping's order."""
    record = ArrayRecord()  # filled item by item: ArrayRecord's dict constructor re-checks every value's kind first
    for key, values in arrays.items():
        record[key] = array_of(values)
    return record


def _shape_ok(shape: object) -> bool:
    """A shape numpy could hold (at most 64 dimensions of sizes in int64): anything else, np.load judges."""
    return (isinstance(shape, (list, tuple)) and len(shape) <= _MAX_DIMS
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63 for n in shape))


@functools.lru_cache(maxsize=_HEADERS_KEPT)
def _expected_header(stype: str, dtype_name: str, shape: tuple[int, ...]) -> tuple[bytes, np.dtype, int] | None:
    """The bytes ``np.save`` writes before the values of a C-ordered array of this dtype and
    shape, the dtype and the value count; None where the fast path does not apply."""
    if stype != "numpy.ndarray" or not isinstance(dtype_name, str):
        return None
    try:
        dtype = np.dtype(dtype_name)
    except (TypeError, ValueError, SyntaxError):  # np.dtype evaluates some text as a literal ("f8,(")
        return None
    if dtype.kind not in _PLAIN_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return None
    if str(dtype) != dtype_name:
        return None  # an alias ("f4", "<f4"): Flower writes str(ndarray.dtype); let np.load judge the rest
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header too long for format 1.0: np.save would use 2.0
        return None
    return buffer.getvalue(), dtype, math.prod(shape)  # exact (Python ints): a product past int64 matches no byte count
