"""The site CSV loader: what it reads, and every malformed file it refuses with file, line and column."""

from __future__ import annotations

import numpy as np
import pytest

from flsuite.data.csv_source import MAX_LABEL_WITHOUT_NUM_CLASSES, check_labels, load_csv
from flsuite.data.datasets import Dataset
from flsuite.errors import DataError, UserError


def write(tmp_path, text: str | bytes):
    path = tmp_path / "site.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refusal(tmp_path, text: str | bytes, **kwargs) -> str:
    """The message of the DataError that loading ``text`` raises; it always names the file."""
    kwargs.setdefault("label_column", "outcome")
    with pytest.raises(DataError) as caught:
        load_csv(write(tmp_path, text), **kwargs)
    message = str(caught.value)
    assert "site.csv" in message
    assert isinstance(caught.value, UserError)  # the CLI exits 2 without a traceback
    return message


# What it reads


def test_csv_loader_reads_named_columns(tmp_path):
    path = write(tmp_path, "age,bp,outcome,note\n50,1.5,1,3\n61,2.0,0,4\n")
    data = load_csv(path, label_column="outcome", feature_columns=["age", "bp"])
    np.testing.assert_allclose(data.features, [[50, 1.5], [61, 2.0]])
    assert data.features.dtype == np.float32 and data.labels.dtype == np.int64
    assert data.labels.tolist() == [1, 0] and data.num_classes == 2


def test_one_feature_blank_lines_spaces_and_whole_number_labels_are_read(tmp_path):
    path = write(tmp_path, " dose , outcome \n\n0.5, 2.0\n\n-1e3,0\n\n")
    data = load_csv(path, label_column="outcome")
    assert data.features.shape == (2, 1) and data.features[:, 0].tolist() == [0.5, -1000.0]
    assert data.labels.tolist() == [2, 0] and data.num_classes == 3


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    path = write(tmp_path, "\ufeffoutcome,a\n1,0.5\n")
    assert load_csv(path, label_column="outcome").labels.tolist() == [1]


def test_num_classes_is_kept_even_when_a_site_lacks_the_top_classes(tmp_path):
    path = write(tmp_path, "a,outcome\n1,0\n2,1\n")
    assert load_csv(path, label_column="outcome", num_classes=5).num_classes == 5


def test_num_classes_allows_labels_past_the_default_bound(tmp_path):
    path = write(tmp_path, f"a,outcome\n1,{MAX_LABEL_WITHOUT_NUM_CLASSES}\n")
    data = load_csv(path, label_column="outcome", num_classes=MAX_LABEL_WITHOUT_NUM_CLASSES + 1)
    assert data.labels.tolist() == [MAX_LABEL_WITHOUT_NUM_CLASSES]


# Problems that were refused before; the messages stay


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("a,b\n1,2\n", {"label_column": "outcome"}, "no label column 'outcome'"),
        ("a,outcome\nx,1\n", {"label_column": "outcome"}, "line 2, column 'a': 'x' is not a number"),
        ("a,outcome\n1,0.5\n", {"label_column": "outcome"}, "must be a class number"),
        ("a,outcome\n", {"label_column": "outcome"}, "no records"),
        ("a,outcome\n\n\n", {"label_column": "outcome"}, "no records"),
        ("a,outcome\n1,1\n", {"label_column": "outcome", "feature_columns": ["zz"]}, "no feature column(s) ['zz']"),
        ("outcome\n1\n", {"label_column": "outcome"}, "no feature columns besides the label"),
    ],
)
def test_csv_problems_name_the_file_line_and_column(tmp_path, text, kwargs, message):
    assert message in refusal(tmp_path, text, **kwargs)


def test_missing_csv_file_is_named(tmp_path):
    with pytest.raises(DataError, match="absent.csv does not exist"):
        load_csv(tmp_path / "absent.csv", label_column="y")


# Attacks: each of these loaded (or failed without file, line or column) before


def test_empty_file_is_named_as_empty(tmp_path):
    assert "is empty" in refusal(tmp_path, "")


def test_duplicated_header_name_is_refused(tmp_path):
    # Before: column 1 was silently dropped and column 2 used twice.
    message = refusal(tmp_path, "a,a,outcome\n1,2,0\n3,4,1\n")
    assert "line 1" in message and "'a' is columns 1, 2" in message


def test_header_names_that_differ_only_by_spaces_are_duplicates(tmp_path):
    message = refusal(tmp_path, "a, a ,outcome\n1,2,0\n")
    assert "line 1" in message and "'a' is columns 1, 2" in message and "' a '" in message


def test_duplicated_label_column_is_refused(tmp_path):
    message = refusal(tmp_path, "outcome,a,outcome\n0,1,1\n")
    assert "line 1" in message and "'outcome' is columns 1, 3" in message


def test_an_unnamed_feature_column_is_refused(tmp_path):
    message = refusal(tmp_path, "a,,outcome\n1,2,0\n")
    assert "line 1" in message and "column 2 has no name" in message


def test_feature_columns_naming_a_column_twice_is_refused(tmp_path):
    message = refusal(tmp_path, "a,b,outcome\n1,2,0\n", feature_columns=["a", "a"])
    assert "feature_columns names ['a'] more than once" in message


def test_the_label_column_cannot_also_be_a_feature(tmp_path):
    message = refusal(tmp_path, "a,outcome\n1,0\n", feature_columns=["a", "outcome"])
    assert "includes the label column 'outcome'" in message


def test_a_record_with_extra_fields_is_refused(tmp_path):
    message = refusal(tmp_path, "a,outcome\n1,0\n2,1,9\n")
    assert "line 3: 3 fields, but the header names 2 columns" in message


def test_a_record_with_missing_fields_is_refused(tmp_path):
    message = refusal(tmp_path, "a,b,outcome\n1,2,0\n1,0\n")
    assert "line 3: 2 fields, but the header names 3 columns" in message


@pytest.mark.parametrize("value", ["1e39", "-1e39", "3.5e38", "1e400", "nan", "-inf", "Infinity"])
def test_a_feature_that_is_not_a_finite_float32_is_refused(tmp_path, value):
    # 1e39 is finite in float64 but inf in float32; before, it reached training and crashed there.
    message = refusal(tmp_path, f"a,b,outcome\n1,2,0\n3,{value},1\n")
    assert "line 3, column 'b'" in message and "not a finite float32" in message


def test_the_largest_float32_is_accepted(tmp_path):
    path = write(tmp_path, "a,outcome\n3.4028234e38,0\n-3.4028234e38,1\n")
    assert np.isfinite(load_csv(path, label_column="outcome").features).all()


def test_line_numbers_count_blank_lines_and_multiline_fields(tmp_path):
    # Before, the line was the record number plus one, wrong after a blank line or a quoted newline.
    text = 'note,a,outcome\n"two\nlines",1,0\n\nok,2,1\nbad,1e39,0\n'
    message = refusal(tmp_path, text, feature_columns=["a"])
    assert "line 6, column 'a'" in message


@pytest.mark.parametrize("label", ["1.5", "-1", "nan", "inf", "x", ""])
def test_a_label_that_is_not_a_class_number_is_refused(tmp_path, label):
    message = refusal(tmp_path, f"a,outcome\n1,0\n2,{label}\n")
    assert "line 3, column 'outcome'" in message and "must be a class number" in message


@pytest.mark.parametrize("label", ["1e12", str(MAX_LABEL_WITHOUT_NUM_CLASSES), "1" * 40])
def test_a_huge_label_is_refused_before_any_allocation(tmp_path, label):
    # Before, 1e12 became num_classes=10**12+1 and the model asked for about 120 TB.
    message = refusal(tmp_path, f"a,outcome\n1,0\n2,{label}\n")
    assert "line 3, column 'outcome'" in message and "too large" in message and "data.num_classes" in message


def test_a_label_at_or_above_num_classes_is_refused(tmp_path):
    message = refusal(tmp_path, "a,outcome\n1,0\n2,3\n", num_classes=3)
    assert "line 3, column 'outcome'" in message and "'3'" in message and "num_classes=3" in message
    assert "set data.num_classes" in message


def test_bytes_that_are_not_utf8_are_named_with_their_line(tmp_path):
    # Far past the first 8 KiB decoded, so the line is found, not guessed from the reader's position.
    body = "".join(f"{i},{i % 2}\n" for i in range(3000)).encode()
    message = refusal(tmp_path, b"a,outcome\n" + body + b"\xff\xfe,1\n")
    assert "line 3002 is not UTF-8" in message


def test_a_field_past_the_csv_size_limit_is_named_with_its_line(tmp_path):
    message = refusal(tmp_path, "a,outcome\n1,0\n" + "1" * 200_000 + ",0\n")
    assert "line 3" in message and "not a readable CSV record" in message


def test_num_classes_below_one_is_refused(tmp_path):
    assert "num_classes=0" in refusal(tmp_path, "a,outcome\n1,0\n", num_classes=0)


# check_labels: what a site runs against the study's class count


def dataset(labels: list[int], num_classes: int) -> Dataset:
    return Dataset("site", np.zeros((len(labels), 1), dtype=np.float32), np.array(labels, dtype=np.int64), num_classes)


def test_check_labels_accepts_labels_below_the_class_count():
    check_labels(dataset([0, 1, 2, 1], 3), 3, source="site.csv")
    check_labels(dataset([0, 0], 1), 2, source="site.csv")  # a site may lack classes


def test_check_labels_refuses_a_label_past_the_study_class_count():
    # In deployment a site's label 5 against a 3-class coordinator model raised IndexError mid-round.
    with pytest.raises(DataError) as caught:
        check_labels(dataset([0, 5, 1, 7], 8), 3, source="/data/site.csv", label_column="diagnosis")
    message = str(caught.value)
    assert "/data/site.csv record 2, column 'diagnosis': label 5 is not in 0..2 (num_classes=3)" in message
    assert "and 1 more records" in message and "set data.num_classes" in message


def test_check_labels_refuses_a_negative_label():
    with pytest.raises(DataError, match="record 1, column 'label': label -1 is not in 0..1"):
        check_labels(dataset([-1, 0], 2), 2, source="site.csv")
