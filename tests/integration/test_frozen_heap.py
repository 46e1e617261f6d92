"""A study keeps its long-lived objects out of the collector's full passes while it runs, and hands
them back when it ends, however it ends (``flsuite.heap``): a sweep of studies in one process, or the
test suite, must not keep any study's cyclic garbage for the rest of the process, and a freeze made by
someone else is not undone."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest

from flsuite.config import compose_study
from flsuite.coordinator import progress
from flsuite.errors import StudyAborted
from flsuite.heap import freeze_more, frozen_heap
from flsuite.simulation import _once, run_local_study


class Held:
    """An object that only the collector frees, once it is garbage: it refers to itself."""

    def __init__(self) -> None:
        self.itself = self


def smoke(tmp_path: Path, *overrides: str):
    return compose_study(["experiment=smoke", "privacy=none", f"sites_dir={tmp_path / 'sites'}", *overrides])


def test_a_study_runs_its_rounds_frozen_freezes_more_after_its_first_round_and_hands_all_back(tmp_path):
    assert gc.get_freeze_count() == 0
    listeners = len(progress._listeners)
    seen: list[int] = []

    def count(event: object) -> None:  # subscribed before the study's own listener: sees each round before it acts
        seen.append(gc.get_freeze_count())

    progress.subscribe(count)
    try:
        summary = run_local_study(smoke(tmp_path), tmp_path / "out")
    finally:
        progress.unsubscribe(count)
    assert summary["status"] == "completed"
    assert len(seen) == 2 and seen[0] > 10_000  # the modules, the data, the apps
    assert seen[1] > seen[0]  # what the first round imported and built was frozen after it
    assert gc.get_freeze_count() == 0
    assert len(progress._listeners) == listeners  # the study's listener left with it


def test_the_second_freeze_follows_the_first_round_a_study_runs_whatever_its_number():
    """A resumed study starts at a later round: its first round still adds to the freeze, once."""
    calls = []
    listener = _once(lambda: calls.append("freeze more"))
    listener(SimpleNamespace(round=3))
    listener(SimpleNamespace(round=4))
    assert calls == ["freeze more"]


def test_a_study_that_raises_still_hands_its_objects_back(tmp_path):
    def failing_server_app(grid, context) -> None:
        raise RuntimeError("the coordinator failed before writing anything")

    with pytest.raises((RuntimeError, StudyAborted)):
        run_local_study(smoke(tmp_path), tmp_path / "out", server_app=failing_server_app)
    assert gc.get_freeze_count() == 0


def test_a_frozen_object_that_becomes_garbage_is_collectable_once_the_study_ends():
    held = Held()
    alive = weakref.ref(held)
    with frozen_heap():
        del held
        gc.collect()
        assert alive() is not None  # frozen: no pass sees it while the study runs (the price flsuite.heap states)
    gc.collect()
    assert alive() is None


def test_a_study_after_another_does_not_freeze_again_what_the_first_handed_back():
    """A sweep: with no full pass between two studies, the first's dropped cycles would be frozen for the second."""
    held = Held()
    alive = weakref.ref(held)
    with frozen_heap():
        del held
    with frozen_heap():
        assert alive() is None


def test_a_freeze_made_by_someone_else_is_left_as_it_is():
    gc.freeze()  # e.g. before a fork
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            freeze_more()
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_nested_studies_share_one_freeze_that_the_last_to_end_hands_back():
    with frozen_heap():
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
        freeze_more()
    assert gc.get_freeze_count() == 0
    freeze_more()  # outside any study: nothing to add to
    assert gc.get_freeze_count() == 0
