"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^31 - 1), in numpy.

A secret of 256 bits is cut into ``LIMBS`` = 9 limbs of 30 bits (the last holds 16), and
every limb is shared with its own random polynomial of degree threshold-1 over
GF(p), p = 2^31 - 1 (a Mersenne prime). Share ``i`` (i = 1..holders) is the 9 polynomial
values at x = i, each a little-endian uint32 below p: ``SHARE_BYTES`` = 36 bytes.

Any ``threshold`` shares rebuild every limb by Lagrange interpolation at x = 0; fewer
reveal nothing: the coefficients are uniform in GF(p) (rejection sampling of 31-bit
words), so for every secret there is exactly one polynomial through any threshold-1
shares and the secret, and each is equally likely. Products of two field elements fit a
uint64, so evaluation (Horner's rule) and interpolation run as a few numpy operations on
a (holders x limbs) array, for all secrets of a site at once.

``off_polynomial`` names the shares off the polynomial through ``threshold`` others: after the
coordinator found a set of shares that rebuilds the committed secret, the shares a holder
altered (or its dealer dealt wrong).

Pure: numpy only. Rebuilt limbs that cannot be a 256-bit secret (a limb of 30 bits or
more, or bits beyond the 256th) mean the shares were not of one secret: ValueError.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = ["LIMBS", "PRIME", "SECRET_BYTES", "SHARE_BYTES", "combine", "off_polynomial", "split"]

PRIME = 2**31 - 1
SECRET_BYTES = 32
LIMB_BITS = 30
LIMBS = -(-8 * SECRET_BYTES // LIMB_BITS)  # 9 limbs of 30 bits hold 256 bits
SHARE_BYTES = 4 * LIMBS
_TOP_BITS = 8 * SECRET_BYTES - LIMB_BITS * (LIMBS - 1)  # bits of the last limb: 16
_LIMB_MASK = (1 << LIMB_BITS) - 1
MAX_HOLDERS = 65_535  # share indices travel as 2 bytes

RandomBytes = Callable[[int], bytes]


def split(secrets: Sequence[bytes], *, threshold: int, holders: int,
          random_bytes: RandomBytes = os.urandom) -> list[list[bytes]]:
    """Shares 1..holders of each 32-byte secret: ``result[s][i - 1]`` is share i of secret s."""
    if not 1 <= threshold <= holders <= MAX_HOLDERS:
        raise ValueError(f"need 1 <= threshold ({threshold}) <= holders ({holders}) <= {MAX_HOLDERS}")
    if any(len(secret) != SECRET_BYTES for secret in secrets):
        raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    if not secrets:
        return []
    limbs = np.array([_to_limbs(secret) for secret in secrets], dtype=np.uint64).reshape(1, -1)  # 1 x (S*LIMBS)
    width = limbs.shape[1]
    coefficients = _uniform(random_bytes, (threshold - 1, width))
    x = np.arange(1, holders + 1, dtype=np.uint64).reshape(-1, 1)
    # Horner's rule from the highest coefficient: every product is below 2^62.
    values = np.zeros((holders, width), dtype=np.uint64)
    for row in coefficients[::-1]:
        values += row
        values *= x
        values %= PRIME
    values += limbs
    values %= PRIME
    packed = values.astype("<u4").reshape(holders, len(secrets), LIMBS)
    return [[packed[i, s].tobytes() for i in range(holders)] for s in range(len(secrets))]


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret from (index, share) pairs; give exactly ``threshold`` of them (more also works,
    when all lie on one polynomial)."""
    indices, values = _checked(shares)
    limbs = _interpolate(indices, values, (0,))[0]
    return _from_limbs([int(limb) for limb in limbs])


def off_polynomial(basis: Sequence[tuple[int, bytes]], others: Sequence[tuple[int, bytes]]) -> list[int]:
    """The indices of ``others`` whose shares do not lie on the polynomials through the ``basis``
    shares (threshold of them, of one secret): shares that were altered or dealt wrong."""
    xs, values = _checked(basis)
    wrong, usable = [], []
    for index, share in others:  # a share that is no field element at all is off every polynomial
        try:
            _checked([(index, share)])
        except ValueError:
            wrong.append(int(index))
        else:
            usable.append((index, share))
    if usable:
        at, actual = _checked(usable)
        predicted = _interpolate(xs, values, tuple(at))
        wrong += [index for index, same in zip(at, (predicted == actual).all(axis=1), strict=True) if not same]
    return sorted(wrong)


def _checked(shares: Sequence[tuple[int, bytes]]) -> tuple[list[int], np.ndarray]:
    """Indices and a (shares x LIMBS) uint64 array of field elements; ValueError for shares that cannot be."""
    if not shares:
        raise ValueError("no shares to combine")
    indices = [int(index) for index, _ in shares]
    if len(set(indices)) != len(indices) or not all(1 <= i <= MAX_HOLDERS for i in indices):
        raise ValueError(f"share indices must be distinct and in 1..{MAX_HOLDERS}, got {indices}")
    if any(len(share) != SHARE_BYTES for _, share in shares):
        raise ValueError(f"shares are {SHARE_BYTES} bytes")
    values = np.frombuffer(b"".join(share for _, share in shares), dtype="<u4").reshape(len(shares), LIMBS)
    if (values >= PRIME).any():
        raise ValueError(f"a share value is not below the field prime {PRIME}")
    return indices, values.astype(np.uint64)


def _interpolate(xs: Sequence[int], values: np.ndarray, at: tuple[int, ...]) -> np.ndarray:
    """Every limb's polynomial through (xs, values), evaluated at each point of ``at``: (len(at) x LIMBS)."""
    weights = _lagrange_weights(tuple(xs), at)
    terms = weights[:, :, None] * values[None, :, :] % PRIME  # each below 2^31: the sum of 65,535 fits
    return terms.sum(axis=1) % PRIME


@functools.lru_cache(maxsize=1024)
def _lagrange_weights(xs: tuple[int, ...], at: tuple[int, ...]) -> np.ndarray:
    """Row j: the Lagrange basis polynomials of the points ``xs`` evaluated at ``at[j]``, modulo
    PRIME (read-only). Barycentric form: L_i(x) = prod_j (x - x_j) * w_i / (x - x_i) with
    w_i = 1 / prod_{j != i} (x_i - x_j), so t points cost t^2 products once and t per row.
    Cached: a round rebuilds many secrets from the same holders' indices."""
    w = _inverses([_product(xi - xj for xj in xs if xj != xi) for xi in xs])
    rows = []
    for x in at:
        if x in xs:
            rows.append([int(xi == x) for xi in xs])
            continue
        gaps = [(x - xi) % PRIME for xi in xs]
        whole = _product(gaps)
        rows.append([whole * wi % PRIME * inverse % PRIME for wi, inverse in zip(w, _inverses(gaps), strict=True)])
    weights = np.array(rows, dtype=np.uint64).reshape(len(at), len(xs))
    weights.setflags(write=False)
    return weights


def _product(values: Iterable[int]) -> int:
    result = 1
    for value in values:
        result = result * value % PRIME
    return result


def _inverses(values: Sequence[int]) -> list[int]:
    """Every value's inverse modulo PRIME with one exponentiation (Montgomery's trick); none may be 0."""
    prefix = [1]
    for value in values:
        prefix.append(prefix[-1] * value % PRIME)
    inverse = pow(prefix[-1], PRIME - 2, PRIME)
    result = [0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        result[k] = inverse * prefix[k] % PRIME
        inverse = inverse * values[k] % PRIME
    return result


def _uniform(random_bytes: RandomBytes, shape: tuple[int, int]) -> np.ndarray:
    """Uniform elements of GF(PRIME): 31-bit words, redrawing the one value (PRIME) outside it."""
    count = shape[0] * shape[1]
    words = np.frombuffer(random_bytes(4 * count), dtype="<u4").astype(np.uint64) & PRIME
    rejected = np.flatnonzero(words == PRIME)
    while rejected.size:
        words[rejected] = np.frombuffer(random_bytes(4 * rejected.size), dtype="<u4").astype(np.uint64) & PRIME
        rejected = rejected[words[rejected] == PRIME]
    return words.reshape(shape)


def _to_limbs(secret: bytes) -> list[int]:
    value = int.from_bytes(secret, "big")
    return [(value >> (LIMB_BITS * k)) & _LIMB_MASK for k in range(LIMBS)]


def _from_limbs(limbs: Sequence[int]) -> bytes:
    if any(limb > _LIMB_MASK for limb in limbs) or limbs[-1] >> _TOP_BITS:
        raise ValueError("the shares do not rebuild a 32-byte secret: they come from different secrets, "
                         "are fewer than the threshold, or were altered")
    value = 0
    for k, limb in enumerate(limbs):
        value |= limb << (LIMB_BITS * k)
    return value.to_bytes(SECRET_BYTES, "big")
