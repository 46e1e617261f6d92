"""A CSV site prepares its records (read, scale, hold-out split) once per process and file version,
never serving an old preparation for a changed file or changed settings."""

from __future__ import annotations

import os

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from flsuite import protocol
from flsuite.config import compose_study, to_run_config
from flsuite.data import clear_csv_cache, clear_site_cache, site_cache
from flsuite.data.feature_ranges import load_site_csv
from flsuite.site import handlers
from flsuite.site.evaluation import training_part

RANGES = "+data.feature_ranges={age:[0,120],dose:[0,10]}"


@pytest.fixture(autouse=True)
def fresh_caches():
    clear_site_cache()
    clear_csv_cache()
    yield
    clear_site_cache()
    clear_csv_cache()


def write(path, rows):
    path.write_text("age,dose,label\n" + "".join(f"{a},{d},{y}\n" for a, d, y in rows))
    return path


ROWS = [(10 * i, i % 10, i % 2) for i in range(1, 13)]


def study(csv, *extra):
    return compose_study(["experiment=smoke", "secagg=none", "data=csv", f"data.csv_path={csv}", RANGES, *extra])


def context(csv, config, name="ward-7"):
    node = {protocol.DATA_PATH: str(csv)}
    if name is not None:
        node[protocol.SITE_NAME] = name
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=to_run_config(config))


def uncached(csv, config, name="ward-7"):
    clear_csv_cache()  # parse the file afresh: the reference shares no cache with what it checks
    data = load_site_csv(csv, config.data, label_column="label")
    return training_part(config, name or data.name, data)


def same(setup, expected):
    train, holdout = expected
    np.testing.assert_array_equal(setup.data.features, train.features)
    np.testing.assert_array_equal(setup.data.labels, train.labels)
    assert setup.data.features.dtype == train.features.dtype and setup.data.num_classes == train.num_classes
    if holdout is None:
        assert setup.holdout is None
    else:
        np.testing.assert_array_equal(setup.holdout.features, holdout.features)
        np.testing.assert_array_equal(setup.holdout.labels, holdout.labels)


def counting(monkeypatch):
    calls = []
    original = handlers.training_part

    def counted(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(handlers, "training_part", counted)
    return calls


def test_seven_messages_prepare_the_site_once(tmp_path, monkeypatch):
    """The attack on the clock: every train/evaluate/query message rescaled and re-split the records."""
    csv = write(tmp_path / "ward.csv", ROWS)
    config = study(csv)
    assert config.site_evaluation  # the split is part of what is prepared
    splits = counting(monkeypatch)
    setups = [handlers.site_setup(context(csv, config)) for _ in range(7)]
    assert splits == ["ward-7"]
    assert all(s.data is setups[0].data and s.holdout is setups[0].holdout for s in setups)


@pytest.mark.parametrize("name", ["ward-7", None])
def test_the_cached_result_equals_the_uncached_one_exactly(tmp_path, name):
    csv = write(tmp_path / "ward.csv", ROWS)
    config = study(csv)
    first = handlers.site_setup(context(csv, config, name))
    second = handlers.site_setup(context(csv, config, name))
    expected = uncached(csv, config, name)
    assert first.name == second.name == (name or "ward") and first.index == second.index
    same(first, expected)
    same(second, expected)
    assert len(first.data) + len(first.holdout) == len(ROWS)


def test_a_rewritten_file_is_prepared_again(tmp_path):
    csv = write(tmp_path / "ward.csv", ROWS)
    config = study(csv)
    handlers.site_setup(context(csv, config))
    changed = [(a, 9 - d, y) for a, d, y in ROWS]  # same size: only the times tell
    write(csv, changed)
    stat = csv.stat()
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    same(handlers.site_setup(context(csv, config)), uncached(csv, config))
    write(csv, ROWS[:6])  # another size
    assert len(handlers.site_setup(context(csv, config)).data) + 1 == 6


def test_a_file_replaced_by_another_inode_with_the_old_times_is_prepared_again(tmp_path):
    csv = write(tmp_path / "ward.csv", ROWS)
    config = study(csv)
    handlers.site_setup(context(csv, config))
    stat = csv.stat()
    other = write(tmp_path / "other.csv", [(a, 9 - d, 1 - y) for a, d, y in ROWS])
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, csv)
    assert csv.stat().st_mtime_ns == stat.st_mtime_ns and csv.stat().st_size == stat.st_size
    same(handlers.site_setup(context(csv, config)), uncached(csv, config))


@pytest.mark.parametrize(
    "change",
    ["+data.feature_ranges={age:[0,240],dose:[0,10]}", "data.seed=7", "monitoring.holdout_fraction=0.5",
     "data.num_classes=3", "privacy=none"],
)
def test_changed_settings_are_never_served_the_old_preparation(tmp_path, change):
    csv = write(tmp_path / "ward.csv", ROWS)
    before = study(csv)
    handlers.site_setup(context(csv, before))
    overrides = [change] if change.startswith("+data.feature_ranges") else [RANGES, change]
    after = compose_study(["experiment=smoke", "secagg=none", "data=csv", f"data.csv_path={csv}", *overrides])
    setup = handlers.site_setup(context(csv, after))
    same(setup, uncached(csv, after))


def test_the_cache_keeps_a_bounded_number_of_sites(tmp_path):
    for i in range(site_cache.CACHE_SIZE + 3):
        csv = write(tmp_path / f"ward{i}.csv", ROWS)
        handlers.site_setup(context(csv, study(csv), name=f"ward-{i}"))
    assert len(site_cache._CACHE) == site_cache.CACHE_SIZE


def test_a_missing_file_is_refused_by_the_reader_and_not_cached(tmp_path):
    from flsuite.errors import DataError

    csv = tmp_path / "gone.csv"
    config = study(write(tmp_path / "ward.csv", ROWS))
    with pytest.raises(DataError, match="does not exist"):
        handlers.site_setup(context(csv, config))
    assert not site_cache._CACHE
