"""A study process's long-lived objects, kept out of the garbage collector's full passes.

A study process holds about half a million objects that live as long as it does: the modules of
torch, Flower, Opacus, scikit-learn and pydantic, the study's data and config. CPython's full
collection walks every object it tracks, and the young objects a study allocates trigger one every
so often: on this machine each pass took about 0.2 s, and the default study paid 0.63 s of them
(most in its first round, while the sites import what they use lazily); a 10-site study stalled a
round for 0.2 s about once every 20 rounds.

``frozen_heap()`` moves the objects alive when a study starts into CPython's permanent generation
(``gc.freeze``), again after its first round (``settle``), and hands them back to the collector
(``gc.unfreeze``) when the study ends, however it ends. Nothing else changes: reference counting
frees every object as before, and the young generations are collected as before; only cyclic
garbage among the frozen objects waits until the study ends (the young generations' is collected
first, at each freeze).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_heap", "settle"]


def settle() -> None:
    """Freeze what is alive now, after collecting the young generations' cyclic garbage (cheap)."""
    gc.collect(1)
    gc.freeze()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the long-lived objects for the duration of a study; unfreeze them when it ends."""
    settle()
    try:
        yield
    finally:
        gc.unfreeze()
