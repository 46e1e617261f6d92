"""CSV features are scaled from declared ranges, never from the records; a CSV study without them is refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from flsuite.config import compose_study, to_run_config
from flsuite.config.bridge import from_run_config
from flsuite.config.preflight import check_inputs
from flsuite.config.schema import DataConfig
from flsuite.data.feature_ranges import load_scaled_csv, load_site_csv
from flsuite.data.study_data import load_source
from flsuite.errors import ConfigError, DataError


@pytest.fixture()
def records(tmp_path):
    path = tmp_path / "ward.csv"
    path.write_text("age,creatinine,outcome\n30,60,0\n90,600,1\n150,60,1\n-5,330,0\n")
    return path


def _config(path, **extra) -> DataConfig:
    return DataConfig(dataset="csv", csv_path=str(path), label_column="outcome", **extra)


def test_features_are_scaled_from_declared_ranges_not_from_the_records(records, caplog):
    config = _config(records, feature_ranges={"age": [0, 120], "creatinine": [0, 1200]})
    with caplog.at_level(logging.WARNING, logger="flsuite.data.feature_ranges"):
        data = load_source(config)
    expected_age = np.clip(2 * np.array([30, 90, 150, -5]) / 120 - 1, -1, 1)
    np.testing.assert_allclose(data.features[:, 0], expected_age, rtol=1e-6)
    np.testing.assert_allclose(data.features[:, 1], 2 * np.array([60, 600, 60, 330]) / 1200 - 1, rtol=1e-6)
    assert "age: 2" in caplog.text and "creatinine" not in caplog.text.split("clipped")[-1]


def test_a_feature_without_a_declared_range_is_refused_with_how_to_declare_it(records):
    with pytest.raises(DataError, match=r"no declared range for feature column\(s\) \['creatinine'\].*feature_ranges"):
        load_scaled_csv(records, _config(records, feature_ranges={"age": [0, 120]}))


def test_a_csv_study_without_ranges_is_refused_before_anything_is_written(records, tmp_path):
    study = compose_study([f"sites_dir={tmp_path / 's'}", "data=csv", f"data.csv_path={records}", "data.label_column=outcome"])
    with pytest.raises(DataError, match="needs declared feature ranges.*data.schema_path"):
        check_inputs(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_schema_file_is_read_into_the_config_that_travels_to_the_sites(records, tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text("feature_ranges:\n  age: [0, 120]\n  creatinine: [0, 1200]\n")
    study = compose_study(["data=csv", f"data.csv_path={records}", "data.label_column=outcome", f"data.schema_path={schema}"])
    assert study.data.feature_ranges == {"age": [0.0, 120.0], "creatinine": [0.0, 1200.0]} and study.data.schema_path is None
    assert from_run_config(to_run_config(study)).data.feature_ranges == study.data.feature_ranges


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("feature_ranges:\n  age: [120, 0]\n", "min < max"), ("age: [0, 1]\n", "no `feature_ranges:`"), ("[", "not valid YAML")],
)
def test_a_bad_schema_file_is_refused(records, tmp_path, text, fragment):
    schema = tmp_path / "schema.yaml"
    schema.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        compose_study(["data=csv", f"data.csv_path={records}", f"data.schema_path={schema}"])


def test_bad_declared_ranges_are_refused_by_the_schema(records):
    with pytest.raises(ConfigError, match=r"data.feature_ranges.age=\[5.0, 5.0\].*min < max"):
        compose_study(["data=csv", f"data.csv_path={records}", "+data.feature_ranges={age:[5,5]}"])
    with pytest.raises(ConfigError, match="only to dataset=csv"):
        compose_study(["+data.feature_ranges={age:[0,1]}"])


def test_a_site_holding_raw_values_under_a_built_in_dataset_refuses_them(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("f0,f1,label\n0.5,-0.25,1\n0.1,1200,0\n")
    with pytest.raises(DataError, match=r"'f1' holds 1200.*outside \[-1, 1\].*data=csv"):
        load_site_csv(path, DataConfig())
    path.write_text("f0,f1,label\n0.5,-0.25,1\n0.1,1.0,0\n")
    np.testing.assert_allclose(load_site_csv(path, DataConfig()).features, [[0.5, -0.25], [0.1, 1.0]])


def test_a_site_of_a_csv_study_scales_with_the_studys_ranges(records):
    config = _config(records, feature_ranges={"age": [0, 120], "creatinine": [0, 1200]})
    assert load_site_csv(records, config).features.max() <= 1.0


@pytest.mark.parametrize("bounds", ["[120, 0]", "[5, 5]", "[1, 2, 3]"])
def test_a_bad_range_is_refused_with_one_text_from_the_config_and_from_a_schema_file(records, tmp_path, bounds):
    """One check, one text: the config and the schema file once said it three different ways."""
    schema = tmp_path / "schema.yaml"
    schema.write_text(f"feature_ranges:\n  age: {bounds}\n")
    with pytest.raises(ConfigError) as from_file:
        compose_study(["data=csv", f"data.csv_path={records}", f"data.schema_path={schema}"])
    with pytest.raises(ConfigError) as from_config:
        compose_study(["data=csv", f"data.csv_path={records}", f"+data.feature_ranges={{age:{bounds}}}"])
    tail = "give [min, max], two finite numbers with min < max, e.g. age: [0, 120]"
    assert f"data.schema_path {schema}: feature_ranges.age=" in str(from_file.value)
    assert "data.feature_ranges.age=" in str(from_config.value)
    assert tail in str(from_file.value) and tail in str(from_config.value)


def test_a_non_finite_range_in_a_schema_file_is_refused_with_the_one_text(records, tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text("feature_ranges:\n  age: [0, .inf]\n")
    with pytest.raises(ConfigError, match="age=.*two finite numbers with min < max"):
        compose_study(["data=csv", f"data.csv_path={records}", f"data.schema_path={schema}"])


@pytest.mark.parametrize("bounds", [[5.0, 5.0], [0.0, float("inf")], [float("nan"), 1.0]])
def test_the_scaler_refuses_a_range_that_did_not_come_through_the_config(bounds):
    """A direct caller of scale_to_ranges got inf or NaN features, with no error."""
    from flsuite.data import scale_to_ranges
    from flsuite.data.datasets import Dataset

    data = Dataset(name="s", features=np.ones((3, 1), np.float32), labels=np.zeros(3, np.int64), num_classes=2)
    with pytest.raises(DataError, match="two finite numbers with min < max"):
        scale_to_ranges(data, ["age"], {"age": bounds}, source="direct")
