"""A study keeps its long-lived objects out of the collector's full passes while it runs, and hands
them back when it ends, however it ends (``flsuite.heap``): a sweep of studies in one process, or the
test suite, must not keep every study's cyclic garbage for the rest of the process."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from flsuite.config import compose_study
from flsuite.coordinator import progress
from flsuite.errors import StudyAborted
from flsuite.heap import frozen_heap
from flsuite.simulation import run_local_study


def smoke(tmp_path: Path, *overrides: str):
    return compose_study(["experiment=smoke", "privacy=none", f"sites_dir={tmp_path / 'sites'}", *overrides])


def frozen_at_each_round() -> tuple[list[int], object]:
    seen: list[int] = []

    def listener(event: object) -> None:
        seen.append(gc.get_freeze_count())

    return seen, listener


def test_a_study_runs_its_rounds_with_the_long_lived_objects_frozen_and_unfreezes_them_at_its_end(tmp_path):
    assert gc.get_freeze_count() == 0
    seen, listener = frozen_at_each_round()
    progress.subscribe(listener)
    try:
        summary = run_local_study(smoke(tmp_path), tmp_path / "out")
    finally:
        progress.unsubscribe(listener)
    assert summary["status"] == "completed"
    assert len(seen) == 2 and all(count > 10_000 for count in seen)  # the modules, the data, the apps
    assert gc.get_freeze_count() == 0


def test_a_study_that_raises_still_unfreezes(tmp_path):
    def failing_server_app(grid, context) -> None:
        raise RuntimeError("the coordinator failed before writing anything")

    with pytest.raises((RuntimeError, StudyAborted)):
        run_local_study(smoke(tmp_path), tmp_path / "out", server_app=failing_server_app)
    assert gc.get_freeze_count() == 0


def test_a_cycle_dropped_during_a_study_is_collected_once_it_ends():
    class Held:
        pass

    held = Held()
    held.itself = held  # a reference cycle: only the collector frees it
    alive = weakref.ref(held)
    with frozen_heap():
        del held
        gc.collect()
        assert alive() is not None  # frozen: no pass sees it while the study runs (the price flsuite.heap states)
    gc.collect()
    assert alive() is None
