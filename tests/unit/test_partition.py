"""Partitioning records into a held-out split and simulated sites."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flsuite.config.schema import DataConfig
from flsuite.data.partition import label_skew, partition, train_test_indices
from flsuite.data.study_data import split_study
from flsuite.errors import DataError


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(20, 400),
    classes=st.integers(2, 6),
    sites=st.integers(1, 10),
    scheme=st.sampled_from(["iid", "dirichlet", "size_skew"]),
    alpha=st.floats(0.05, 10),
    seed=st.integers(0, 2**16),
)
def test_every_record_lands_at_exactly_one_site(count, classes, sites, scheme, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, classes, count)
    parts = partition(labels, num_sites=sites, scheme=scheme, seed=seed, dirichlet_alpha=alpha)
    assert len(parts) == sites
    merged = np.concatenate(parts)
    assert sorted(merged.tolist()) == list(range(count))
    assert all(len(part) >= 2 for part in parts)


def test_label_skew_grows_as_alpha_falls():
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    skews = [
        np.mean([label_skew(labels, partition(labels, num_sites=5, scheme="dirichlet", seed=s, dirichlet_alpha=a)) for s in range(5)])
        for a in (100.0, 1.0, 0.1)
    ]
    assert skews[0] < skews[1] < skews[2]
    iid = label_skew(labels, partition(labels, num_sites=5, scheme="iid", seed=0))
    assert iid < skews[1] and iid < 0.1


def test_size_skew_gives_unequal_sites():
    labels = np.zeros(1000, dtype=int)
    sizes = sorted(len(p) for p in partition(labels, num_sites=5, scheme="size_skew", seed=0, size_skew_sigma=1.5))
    assert sizes[-1] > 3 * sizes[0]


def test_same_seed_same_split_and_the_test_split_is_seen_by_no_site():
    first = split_study(DataConfig(), 5)
    second = split_study(DataConfig(), 5)
    for a, b in zip(first.sites, second.sites):
        np.testing.assert_array_equal(a.features, b.features)
    train, test = train_test_indices(np.arange(569) % 2, test_fraction=0.2, seed=0)
    assert not set(train) & set(test)
    assert len(test) == 114
    site_rows = {row.tobytes() for site in first.sites for row in site.features}
    assert not site_rows & {row.tobytes() for row in first.test.features}
    assert sum(len(site) for site in first.sites) + len(first.test) == 569


def test_more_sites_than_records_is_refused_with_the_limit():
    with pytest.raises(DataError, match="use at most 5 sites"):
        partition(np.zeros(10, dtype=int), num_sites=6, scheme="iid", seed=0)


def test_a_tight_dirichlet_request_still_gives_every_site_its_minimum():
    labels = np.array([0, 1] * 10)
    parts = partition(labels, num_sites=9, scheme="dirichlet", seed=0, dirichlet_alpha=1.0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(20))
    assert min(len(part) for part in parts) >= 2
