"""The "before" column of the site-history benchmark: a site's privacy accounting as flsuite
did it until the history round of issue 15.

Benchmark only, never a user setting: ``legacy_accounting()`` swaps it in for the length of a
``with`` block:

- every ledger read parses and verifies the whole hash chain, and folds every entry into
  events again (``PrivacyLedger.state`` and ``head`` as they were);
- the PRV accountant composes with prv_accountant's ``Heterogeneous`` composer (each mechanism
  self-composed, the results convolved linearly) and reads epsilon off its long double grid.

Everything else (the domain, the mesh, the discretisation, the caches of epsilons and
accountants) is flsuite's current code, so the two columns differ only by these changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from unittest import mock

from flsuite.privacy import accounting
from flsuite.privacy.ledger import LedgerHead, LedgerState, PrivacyLedger
from flsuite.storage import chain


class LegacyPrvAccountant:
    """flsuite's ``_PrvAccountant`` at commit edff1b1."""

    def __init__(self, mechanisms: tuple[tuple[float, float], ...], max_steps: tuple[int, ...], delta: float) -> None:
        import numpy as np
        from prv_accountant.composers import Heterogeneous
        from prv_accountant.domain import Domain

        self.max_steps = max_steps
        self.eps_error, self.delta_error = accounting._PRV_EPS_ERROR, delta / 1000
        mesh = float(self.eps_error / np.sqrt(sum(max_steps) / 2 * np.log(12 / self.delta_error)))
        domain = Domain.create_aligned(*accounting._fft_friendly(accounting._prv_domain(mechanisms, max_steps, self.delta_error), mesh), mesh)
        prvs = [accounting._mechanism(q, sigma) for q, sigma in mechanisms]
        self.composer = Heterogeneous([accounting._discretise(prv, domain) for prv in prvs])

    def compute_epsilon(self, delta: float, steps: Sequence[int]) -> tuple[float, float, float]:
        if any(n > cap for n, cap in zip(steps, self.max_steps)):
            raise ValueError(f"{list(steps)} compositions exceed this accountant's maximum {list(self.max_steps)}")
        composed = self.composer.compute_composition(list(steps))
        return composed.compute_epsilon(delta, self.delta_error, self.eps_error)


def _state(ledger: PrivacyLedger) -> LedgerState:
    read = ledger._read()
    return dataclasses.replace(ledger._fold(read.entries, read.head, since=None), exists=ledger.path.exists())


def _head(ledger: PrivacyLedger) -> LedgerHead:
    return ledger._read().head


def forget() -> None:
    """What a fresh process knows: no epsilons, accountants, verified ledger bytes or folded ledgers."""
    from flsuite.privacy import ledger

    accounting.clear_cache()
    chain._VERIFIED.clear()
    with ledger._FOLDED_LOCK:
        ledger._FOLDED.clear()


@contextlib.contextmanager
def legacy_accounting() -> Iterator[None]:
    forget()
    with (
        mock.patch.object(accounting, "_PrvAccountant", LegacyPrvAccountant),
        mock.patch.object(chain, "_VERIFIED", chain.VerifiedPrefixes(most_bytes=0)),
        mock.patch.object(PrivacyLedger, "state", _state),
        mock.patch.object(PrivacyLedger, "head", _head),
    ):
        try:
            yield
        finally:
            forget()
