"""The "before" column of the secure-aggregation benchmark: flsuite's Shamir sharing until
issue 15 (PyCryptodome's pure-Python Shamir over GF(2^128) on each 16-byte half of a secret).

Benchmark only, never a user setting: ``shamir_backend("pycryptodome")`` swaps it in for the
length of a ``with`` block. Its 32-byte shares are padded with 4 zero bytes to the wire's
36-byte share size (the padding is dropped before combining), so a whole secure round runs
unchanged around it.

PyCryptodome is no runtime dependency of flsuite: it comes with the ``bench`` extra (the
``test`` extra includes it), ``pip install -e '.[bench]'``; without it the "before" column
stops with an ImportError that says so, and the other measurements run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flsuite.secagg.primitives as crypto

BACKENDS = ("numpy-prime-field", "pycryptodome")
_PAD = bytes(crypto.SHARE_BYTES - 32)
INSTALL = "pip install -e '.[bench]'"


def pycryptodome_shamir() -> Any:
    """PyCryptodome's Shamir class; an ImportError saying how to install it when it is absent."""
    try:
        from Crypto.Protocol.SecretSharing import Shamir
    except ImportError:
        raise ImportError(f'the secure-aggregation benchmark\'s "before" column runs PyCryptodome\'s Shamir sharing, '
                          f"which is not installed (flsuite itself does not need it): {INSTALL} installs the bench "
                          "extra (the test extra includes it)") from None
    return Shamir


def legacy_split(secret: bytes, *, threshold: int, holders: int) -> list[bytes]:
    Shamir = pycryptodome_shamir()  # noqa: N806 (the library's class)
    first = Shamir.split(threshold, holders, secret[:16], ssss=False)
    second = Shamir.split(threshold, holders, secret[16:], ssss=False)
    return [a + b + _PAD for (_, a), (_, b) in zip(first, second, strict=True)]


def legacy_combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    Shamir = pycryptodome_shamir()  # noqa: N806 (the library's class)
    first = Shamir.combine([(i, s[:16]) for i, s in shares], ssss=False)
    second = Shamir.combine([(i, s[16:32]) for i, s in shares], ssss=False)
    return first + second


def _legacy_split_secrets(secrets: Sequence[bytes], *, threshold: int, holders: int,
                          random_bytes: Callable[[int], bytes] = os.urandom) -> list[list[bytes]]:
    return [legacy_split(secret, threshold=threshold, holders=holders) for secret in secrets]


@contextlib.contextmanager
def shamir_backend(name: str) -> Iterator[None]:
    """Run the block with ``name``'s Shamir sharing in every secure round of this process."""
    if name not in BACKENDS:
        raise ValueError(f"unknown Shamir backend {name!r}; choose one of {BACKENDS}")
    if name == BACKENDS[0]:
        yield
        return
    pycryptodome_shamir()  # absent: say how to install it before a study runs
    saved = crypto.split_secrets, crypto.combine_secret, crypto.shares_off_secret
    crypto.split_secrets, crypto.combine_secret, crypto.shares_off_secret = _legacy_split_secrets, legacy_combine, _no_check
    try:
        yield
    finally:
        crypto.split_secrets, crypto.combine_secret, crypto.shares_off_secret = saved


def _no_check(basis: Sequence[tuple[int, bytes]], others: Sequence[tuple[int, bytes]]) -> list[int]:
    """flsuite before issue 15 named no wrong shares: the "before" column does no such check."""
    return []
