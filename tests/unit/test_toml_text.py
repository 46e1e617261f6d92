"""The one TOML scalar encoder (flsuite.config.toml_text) and its three writers: the run_config file
`flsuite launch` hands to `flwr run`, a SuperNode's --node-config and pyproject.toml's app config.
Each value is read back by a real TOML parser (tomllib; Flower's own parser for --node-config)."""

from __future__ import annotations

import math
import tomllib

import pytest

from flsuite.config import toml_scalar
from flsuite.config.pyproject_sync import render
from flsuite.coordinator.launch import run_config_toml
from flsuite.errors import ConfigError
from flsuite.site.node_config import format_node_config

AWKWARD = ['say "hi"', "C:\\data\\site", "tab\there", "line\nbreak", "bell\x07", "del\x7fete", "ünïcode ✓", ""]
SCALARS = [True, False, 0, -7, 2**40, 0.1, 1e-5, -2.5e300, *AWKWARD]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_every_writer_of_a_toml_document_reads_back_the_same_value(value):
    assert tomllib.loads(f"v = {toml_scalar(value)}")["v"] == value
    assert tomllib.loads(run_config_toml({"a.b": value}))["a.b"] == value  # a quoted dotted key
    assert tomllib.loads(render({"a": value}))["a"] == value


def test_a_node_config_string_reads_back_through_flowers_parser():
    from flwr.common.config import parse_config_args

    values = {"site-name": "hospital-a", "path": "C:\\data\\a b.csv", "eps": 8.0, "records": 3, "on": True}
    assert parse_config_args([format_node_config(values)]) == values


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None, [1], {"a": 1}], ids=repr)
def test_what_toml_cannot_carry_is_refused_by_name(value):
    with pytest.raises(ValueError, match="finite number|not a TOML scalar"):
        toml_scalar(value)
    with pytest.raises(ConfigError, match=r"^study\.x=.* cannot travel in Flower's run_config"):
        run_config_toml({"study.x": value})
    with pytest.raises(ValueError, match="node_config data-path cannot be encoded"):
        format_node_config({"data-path": value})


@pytest.mark.parametrize("value", ["o'brien.csv", "a\nb", "a\rb"])
def test_a_literal_string_refuses_a_quote_or_a_line_break(value):
    with pytest.raises(ValueError, match="quote or a line break"):
        toml_scalar(value, literal_strings=True)
    assert tomllib.loads(f"v = {toml_scalar(value)}")["v"] == value  # a basic string carries it
