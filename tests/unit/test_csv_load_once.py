"""A site's CSV is parsed once per process and file version, fast and in bounded memory, and
the fast reader never accepts what the strict one refuses."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

from flsuite.data import csv_source
from flsuite.data.csv_source import clear_csv_cache, load_csv
from flsuite.errors import DataError


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_csv_cache()
    yield
    clear_csv_cache()


def write(path, rows, header="a,b,label"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def counting(monkeypatch, name):
    calls = []
    original = getattr(csv_source, name)

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(csv_source, name, counted)
    return calls


def test_seven_requests_of_one_study_parse_the_file_once(tmp_path, monkeypatch):
    """The attack on the clock: a site that answers train, evaluate and query messages reloads its
    data for each (7 parses of a 10^6-row file took 1141 s). Now the later ones hit the cache."""
    path = write(tmp_path / "site.csv", ["0.5,1.5,0", "2,3,1"])
    reads = counting(monkeypatch, "_read")
    loaded = [load_csv(path, label_column="label") for _ in range(7)]
    assert len(reads) == 1 and all(d is loaded[0] for d in loaded)
    np.testing.assert_array_equal(loaded[0].features, [[0.5, 1.5], [2, 3]])


def test_a_replaced_file_is_read_again_not_served_stale(tmp_path, monkeypatch):
    path = write(tmp_path / "site.csv", ["0.5,1.5,0", "2,3,1"])
    first = load_csv(path, label_column="label")
    write(path, ["9.5,1.5,1", "2,3,0"])  # same size: only the times tell
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_csv(path, label_column="label")
    assert second is not first and second.features[0, 0] == 9.5 and list(second.labels) == [1, 0]
    write(path, ["1,1,1"])  # another size
    assert len(load_csv(path, label_column="label")) == 1


def test_other_columns_or_class_counts_are_other_entries(tmp_path):
    path = write(tmp_path / "site.csv", ["0.5,1.5,0", "2,3,1"])
    both = load_csv(path, label_column="label")
    only_a = load_csv(path, label_column="label", feature_columns=["a"])
    wider = load_csv(path, label_column="label", num_classes=5)
    assert both.num_features == 2 and only_a.num_features == 1 and wider.num_classes == 5 and both.num_classes == 2


def test_the_cache_keeps_a_bounded_number_of_files(tmp_path):
    for i in range(csv_source.CACHE_SIZE + 3):
        load_csv(write(tmp_path / f"s{i}.csv", [f"{i},1,0"]), label_column="label")
    assert len(csv_source._CACHE) == csv_source.CACHE_SIZE


@pytest.mark.parametrize("token", ["1_0", "\uff11", '"2.5"', " 1.5 ", "+.5", "1e3", "-0"])
def test_fast_and_strict_readers_agree_on_what_python_float_accepts(tmp_path, monkeypatch, token):
    path = write(tmp_path / "odd.csv", [f"{token},1,0", "2,3,1"])
    fast = load_csv(path, label_column="label")
    clear_csv_cache()
    monkeypatch.setattr(csv_source, "_read_fast", lambda *a: None)
    strict = load_csv(path, label_column="label")
    np.testing.assert_array_equal(fast.features, strict.features)
    np.testing.assert_array_equal(fast.labels, strict.labels)


@pytest.mark.parametrize(("rows", "where"), [
    (["1,2,0"] * 9 + ["1,x,0"], "line 11, column 'b'"),
    (["1,2,0"] * 9 + ["1,2,0,4"], "line 11: 4 fields"),
    (["1,2,0"] * 9 + ["1,1e39,0"], "line 11, column 'b'"),
    (["1,2,0"] * 9 + ["1,2,1.5"], "line 11, column 'label'"),
    (["1,2,0"] * 9 + ["1,2,-1"], "line 11, column 'label'"),
])
def test_a_bad_record_deep_in_the_file_is_named_by_line_in_every_block_size(tmp_path, monkeypatch, rows, where):
    monkeypatch.setattr(csv_source, "CHUNK_RECORDS", 3)
    monkeypatch.setattr(csv_source, "FAST_BLOCK_BYTES", 16)
    path = write(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=where):
        load_csv(path, label_column="label")


def test_blocks_join_into_the_same_dataset_as_one_block(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rows = [f"{a:.5g},{b:.5g},{c}" for (a, b), c in zip(rng.normal(size=(50, 2)), rng.integers(0, 3, 50), strict=True)]
    path = write(tmp_path / "many.csv", ["", *rows[:20], "", *rows[20:]])
    whole = load_csv(path, label_column="label")
    for name, size in (("FAST_BLOCK_BYTES", 40), ("CHUNK_RECORDS", 7)):
        clear_csv_cache()
        monkeypatch.setattr(csv_source, name, size)
        if name == "CHUNK_RECORDS":
            monkeypatch.setattr(csv_source, "_read_fast", lambda *a: None)
        part = load_csv(path, label_column="label")
        np.testing.assert_array_equal(part.features, whole.features)
        np.testing.assert_array_equal(part.labels, whole.labels)
    assert len(whole) == 50


@pytest.mark.slow  # tracemalloc over 40k records: about 20 s each on this machine
@pytest.mark.parametrize("strict", [False, True])
def test_loading_holds_little_beyond_the_result(tmp_path, monkeypatch, strict):
    """Bounded memory: the old reader held every value as a Python float in lists (about 12x the
    float32 result); both readers now peak within a few times the result plus one block."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40_000, 30)).astype(np.float32)
    lines = [",".join(f"{v:.6g}" for v in row) + f",{i % 3}" for i, row in enumerate(features.tolist())]
    path = write(tmp_path / "wide.csv", lines, header=",".join(f"f{i}" for i in range(30)) + ",label")
    if strict:
        monkeypatch.setattr(csv_source, "_read_fast", lambda *a: None)
    tracemalloc.start()
    try:
        dataset = load_csv(path, label_column="label")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result = dataset.features.nbytes + dataset.labels.nbytes
    assert dataset.features.shape == (40_000, 30)
    assert peak < 3 * result + 16 * 2**20, (peak, result)
