"""Secure-aggregation settings that cannot be safe are refused at config time, with the reason."""

from __future__ import annotations

import pytest

from flsuite.errors import ConfigError
from flsuite.secagg import SecAggSettings


def test_defaults_and_derived_values():
    s = SecAggSettings(cohort_size=10, threshold=6)
    assert s.share_group == 10 and s.tolerated_dropouts == 4 and s.min_survivors == 6
    assert s.levels == (2**32 - 1) // 10 and s.levels * 10 < 2**32
    assert s.resolution == pytest.approx(2.0 / s.levels)
    plus = SecAggSettings(cohort_size=50, threshold=6, neighbours=10, max_dropouts=3)
    assert plus.share_group == 11 and plus.tolerated_dropouts == 3 and plus.min_survivors == 47


@pytest.mark.parametrize("kwargs, words", [
    ({"cohort_size": 2, "threshold": 2}, ["cohort_size=2", "at least 3"]),
    ({"cohort_size": 6, "threshold": 3}, ["threshold=3", "more than half", "between 4 and 6"]),
    ({"cohort_size": 6, "threshold": 7}, ["threshold=7", "at most 6"]),
    ({"cohort_size": 6, "threshold": 5, "max_dropouts": 2}, ["max_dropouts=2", "at most 1"]),
    ({"cohort_size": 10, "threshold": 2, "neighbours": 4}, ["threshold=2", "share group (5"]),
    ({"cohort_size": 10, "threshold": 3, "neighbours": 3}, ["neighbours=3", "even"]),
    ({"cohort_size": 10, "threshold": 3, "neighbours": 10}, ["neighbours=10", "between 2 and"]),
    ({"cohort_size": 5, "threshold": 3, "clip_range": 0}, ["clip_range=0"]),
    ({"cohort_size": 5, "threshold": 3, "clip_range": float("nan")}, ["clip_range=nan"]),
    ({"cohort_size": 5, "threshold": 3, "weight_cap": 0}, ["weight_cap=0"]),
    ({"cohort_size": 5, "threshold": 3, "mask_cipher": "rc4"}, ["mask_cipher='rc4'", "aes-256-ctr"]),
    ({"cohort_size": 5, "threshold": True}, ["threshold=True"]),
])
def test_unsafe_settings_are_refused_with_an_explanation(kwargs, words):
    with pytest.raises(ConfigError) as info:
        SecAggSettings(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_settings_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        SecAggSettings(5, 3)  # type: ignore[misc]
    s = SecAggSettings(cohort_size=5, threshold=3)
    with pytest.raises(AttributeError):
        s.threshold = 1  # type: ignore[misc]


def test_wire_form_round_trips_and_is_revalidated():
    s = SecAggSettings(cohort_size=9, threshold=4, neighbours=6, clip_range=0.5, clip_out_of_range=True,
                       mask_cipher="chacha20")
    assert SecAggSettings.from_wire(s.to_wire()) == s
    with pytest.raises(ConfigError, match="threshold=2"):
        SecAggSettings.from_wire(s.to_wire().replace('"threshold":4', '"threshold":2'))
    for bad in ("{", "[]", '{"cohort_size": 5}', '{"cohort_size": 5, "threshold": 3, "extra": 1}'):
        with pytest.raises(ConfigError):
            SecAggSettings.from_wire(bad)


def test_default_neighbours_grow_like_log2_of_the_cohort():
    from flsuite.secagg import default_neighbours

    assert [default_neighbours(n) for n in (3, 5, 10, 20, 50, 100, 1000)] == [2, 4, 9, 14, 18, 20, 30]
    assert all(default_neighbours(n) % 2 == 0 or default_neighbours(n) == n - 1 for n in range(3, 300))
    with pytest.raises(ValueError):
        default_neighbours(2)


def test_study_settings_use_the_secagg_plus_default_and_keep_neighbours_overridable():
    from flsuite.config.schema import SecAggConfig

    assert SecAggConfig().settings_for(50).neighbours == 18  # was the complete graph (49) before
    assert SecAggConfig().settings_for(50).threshold == 12
    assert SecAggConfig().settings_for(10).neighbours is None  # 3·log2(10) reaches n-1: complete graph
    assert SecAggConfig(neighbours=10).settings_for(50).neighbours == 10
    assert SecAggConfig(neighbours=49).settings_for(50).neighbours is None
