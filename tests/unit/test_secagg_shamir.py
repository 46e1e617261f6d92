"""Shamir sharing over GF(2^31-1): known answers, any t of n rebuild, t-1 reveal nothing, bad shares refused."""

from __future__ import annotations

import hashlib
import itertools
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flsuite.secagg import shamir

P = shamir.PRIME


def counter_bytes(seed: bytes = b"kat"):
    """A deterministic byte source (SHA-256 in counter mode) standing in for os.urandom."""
    state = {"n": 0}

    def draw(count: int) -> bytes:
        out = b""
        while len(out) < count:
            out += hashlib.sha256(seed + state["n"].to_bytes(8, "big")).digest()
            state["n"] += 1
        return out[:count]

    return draw


def reference_split(secret: bytes, threshold: int, holders: int, draw) -> list[bytes]:
    """The same scheme in plain Python integers, written independently of the module."""
    value = int.from_bytes(secret, "big")
    limbs = [(value >> (30 * k)) & (2**30 - 1) for k in range(9)]
    stream = draw(4 * (threshold - 1) * 9)
    words = [int.from_bytes(stream[i : i + 4], "little") & P for i in range(0, len(stream), 4)]
    assert P not in words  # the source below never hits the one rejected value
    coefficients = [words[r * 9 : (r + 1) * 9] for r in range(threshold - 1)]
    shares = []
    for x in range(1, holders + 1):
        values = [(limbs[k] + sum(c[k] * x ** (r + 1) for r, c in enumerate(coefficients))) % P for k in range(9)]
        shares.append(b"".join(v.to_bytes(4, "little") for v in values))
    return shares


def test_known_answer_by_hand():
    # secret 5, every coefficient 7: share x = 5 + 7x in limb 0 and 7x in the eight others
    secret = (5).to_bytes(32, "big")
    shares = shamir.split([secret], threshold=2, holders=3, random_bytes=lambda n: b"\x07\x00\x00\x00" * (n // 4))[0]
    for x, share in enumerate(shares, start=1):
        assert share == (5 + 7 * x).to_bytes(4, "little") + (7 * x).to_bytes(4, "little") * 8
    assert shamir.combine([(3, shares[2]), (1, shares[0])]) == secret


def test_known_answer_against_a_plain_integer_reference():
    secret = bytes(range(1, 33))
    got = shamir.split([secret], threshold=4, holders=7, random_bytes=counter_bytes())[0]
    assert got == reference_split(secret, 4, 7, counter_bytes())
    # pinned: a change of layout, limb order or coefficient order changes these bytes
    assert got[0].hex() == "8519e80c56399c0c19209876e7fe7d3ac032734f68548f0ba539ab4dcd18dc7018667539"
    assert hashlib.sha256(b"".join(got)).hexdigest()[:16] == "73caf64e9e6cfebf"


def test_the_prime_and_share_layout():
    assert P == 2**31 - 1 and pow(3, P - 1, P) == 1  # Fermat witness of the Mersenne prime
    assert shamir.SHARE_BYTES == 36 and shamir.LIMBS * 30 >= 256


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), holders=st.integers(1, 60), data=st.data())
def test_any_threshold_shares_rebuild_the_secret(secret, holders, data):
    threshold = data.draw(st.integers(1, holders))
    shares = shamir.split([secret], threshold=threshold, holders=holders)[0]
    chosen = data.draw(st.lists(st.integers(1, holders), min_size=threshold, max_size=threshold, unique=True))
    assert shamir.combine([(i, shares[i - 1]) for i in chosen]) == secret


@settings(max_examples=40, deadline=None)
@given(secrets=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4), data=st.data())
def test_many_secrets_split_at_once_are_independent_sharings(secrets, data):
    holders = data.draw(st.integers(2, 20))
    threshold = data.draw(st.integers(2, holders))
    split = shamir.split(secrets, threshold=threshold, holders=holders)
    for secret, shares in zip(secrets, split, strict=True):
        assert shamir.combine(list(enumerate(shares, start=1))[-threshold:]) == secret


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), data=st.data())
def test_fewer_than_threshold_shares_do_not_rebuild_the_secret(secret, data):
    holders = data.draw(st.integers(3, 30))
    threshold = data.draw(st.integers(2, holders))
    shares = shamir.split([secret], threshold=threshold, holders=holders)[0]
    chosen = data.draw(st.lists(st.integers(1, holders), min_size=threshold - 1, max_size=threshold - 1, unique=True))
    try:
        rebuilt = shamir.combine([(i, shares[i - 1]) for i in chosen])
    except ValueError:
        return  # the interpolated limbs are not even a 256-bit secret (the usual case)
    assert rebuilt != secret


def test_threshold_minus_one_shares_look_alike_for_any_two_secrets():
    """With t=3, two shares of the all-zero and the all-ones secret have the same (uniform)
    distribution: per limb, the mean, and counts in 8 buckets of GF(p), match within sampling error."""
    rng = random.Random(7)
    draw = lambda n: rng.randbytes(n)  # noqa: E731
    samples = {}
    for secret in (bytes(32), b"\xff" * 32):
        values = np.array([np.frombuffer(b"".join(shamir.split([secret], threshold=3, holders=5, random_bytes=draw)[0][1:3]),
                                         dtype="<u4") for _ in range(3000)], dtype=np.float64)
        samples[secret] = values.ravel()
    for values in samples.values():
        counts = np.bincount((values * 8 / P).astype(int), minlength=8)
        expected = values.size / 8
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 30, counts  # 7 degrees of freedom: p < 1e-4
        assert abs(values.mean() / P - 0.5) < 0.01
    zero, ones = samples.values()
    assert abs(zero.mean() - ones.mean()) / P < 0.01


def test_every_secret_is_consistent_with_threshold_minus_one_shares():
    """Perfect secrecy, shown constructively: for t-1 shares of one secret and any other secret there
    is a polynomial of degree t-1 through both, so the shares cannot rule any secret out."""
    t, holders = 3, 5
    real, other = os.urandom(32), os.urandom(32)
    shares = shamir.split([real], threshold=t, holders=holders)[0]
    seen = [(1, shares[0]), (4, shares[3])]  # t - 1 of them
    # a third point chosen so that interpolation at 0 gives ``other``: solve limb by limb
    other_limbs = [(int.from_bytes(other, "big") >> (30 * k)) & (2**30 - 1) for k in range(9)]
    seen_values = [[int(v) for v in np.frombuffer(s, dtype="<u4")] for _, s in seen]
    x3 = 2
    w = [1, 1, 1]
    xs = [1, 4, x3]
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num, den = num * xj % P, den * (xj - xi) % P
        w[i] = num * pow(den, P - 2, P) % P
    third = [(other_limbs[k] - w[0] * seen_values[0][k] - w[1] * seen_values[1][k]) * pow(w[2], P - 2, P) % P
             for k in range(9)]
    forged = b"".join(v.to_bytes(4, "little") for v in third)
    assert shamir.combine([*seen, (x3, forged)]) == other


def test_tampered_or_foreign_shares_are_refused_not_silently_combined():
    secret = os.urandom(32)
    shares = shamir.split([secret], threshold=3, holders=5)[0]
    with pytest.raises(ValueError, match="distinct"):
        shamir.combine([(1, shares[0]), (1, shares[0]), (2, shares[1])])
    with pytest.raises(ValueError, match="36 bytes"):
        shamir.combine([(1, shares[0][:32]), (2, shares[1]), (3, shares[2])])
    with pytest.raises(ValueError, match="prime"):
        shamir.combine([(1, b"\xff" * 36), (2, shares[1]), (3, shares[2])])
    other = shamir.split([os.urandom(32)], threshold=3, holders=5)[0]
    refused = 0
    for mixed in itertools.islice(itertools.product(range(5), repeat=3), 40):
        picks = [(i + 1, (shares if k else other)[i]) for k, i in enumerate(dict.fromkeys(mixed))]
        if len(picks) == 3:
            try:
                assert shamir.combine(picks) != secret
            except ValueError:
                refused += 1
    assert refused > 0


@pytest.mark.parametrize("bad", [dict(threshold=0, holders=3), dict(threshold=4, holders=3),
                                 dict(threshold=2, holders=70_000)])
def test_impossible_thresholds_are_refused(bad):
    with pytest.raises(ValueError):
        shamir.split([bytes(32)], **bad)
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split([bytes(31)], threshold=1, holders=1)


@settings(max_examples=30, deadline=None)
@given(threshold=st.integers(1, 8), extra=st.integers(1, 6), data=st.data())
def test_off_polynomial_names_exactly_the_altered_shares(threshold, extra, data):
    holders = threshold + extra
    shares = list(enumerate(shamir.split([os.urandom(32)], threshold=threshold, holders=holders)[0], start=1))
    altered = set(data.draw(st.sets(st.integers(threshold + 1, holders), max_size=extra)))
    limb = data.draw(st.integers(0, shamir.LIMBS - 1))
    for index in altered:  # one limb moved by one: the smallest change a share can take
        share = bytearray(shares[index - 1][1])
        value = (int.from_bytes(share[4 * limb : 4 * limb + 4], "little") + 1) % P
        share[4 * limb : 4 * limb + 4] = value.to_bytes(4, "little")
        shares[index - 1] = (index, bytes(share))
    assert shamir.off_polynomial(shares[:threshold], shares[threshold:]) == sorted(altered)
