"""Split records into a held-out test set and simulated sites.

Every training record lands at exactly one site; the test split is seen by no site and
serves the coordinator's evaluation. Same seed, same split.
"""

from __future__ import annotations

import numpy as np

from flsuite.errors import DataError

MIN_RECORDS_PER_SITE = 2
DIRICHLET_ATTEMPTS = 200


def train_test_indices(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split: (train indices, test indices), both sorted."""
    rng = np.random.default_rng([seed, 1])
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * test_fraction))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def partition(
    labels: np.ndarray,
    *,
    num_sites: int,
    scheme: str,
    seed: int,
    dirichlet_alpha: float = 0.5,
    size_skew_sigma: float = 1.0,
    min_site_records: int = MIN_RECORDS_PER_SITE,
) -> list[np.ndarray]:
    """Positions (into ``labels``) of each site's records; a partition of range(len(labels))."""
    count = len(labels)
    minimum = max(MIN_RECORDS_PER_SITE, min_site_records)
    if num_sites * minimum > count:
        raise DataError(
            f"federation.num_sites={num_sites} is too many for {count} training records: "
            f"each site needs at least {minimum} (data.min_site_records); use at most {count // minimum} sites"
        )
    rng = np.random.default_rng([seed, 2])
    if scheme == "iid":
        parts = np.array_split(rng.permutation(count), num_sites)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_sites, dirichlet_alpha, rng, minimum)
    elif scheme == "size_skew":
        parts = _size_skew(count, num_sites, size_skew_sigma, rng, minimum)
    else:
        raise DataError(f"data.partitioning={scheme!r} is not allowed: use iid, dirichlet or size_skew")
    return [np.sort(part) for part in parts]


def _dirichlet(labels: np.ndarray, num_sites: int, alpha: float, rng: np.random.Generator, minimum: int) -> list[np.ndarray]:
    """Label skew: each class is spread over sites by proportions drawn from Dir(alpha).

    Draws are repeated (as Flower Datasets' DirichletPartitioner does) until every site
    holds at least ``minimum`` records; if none does, the most even draw is topped up with
    records moved from its largest site, so a feasible request always succeeds.
    """
    best: list[list[int]] = []
    for _ in range(DIRICHLET_ATTEMPTS):
        sites: list[list[int]] = [[] for _ in range(num_sites)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                sites[site].extend(chunk.tolist())
        if not best or min(map(len, sites)) > min(map(len, best)):
            best = sites
        if min(map(len, best)) >= minimum:
            break
    for site in best:
        while len(site) < minimum:
            donor = max(best, key=len)
            site.append(donor.pop(int(rng.integers(len(donor)))))
    return [np.array(site, dtype=np.int64) for site in best]


def _size_skew(count: int, num_sites: int, sigma: float, rng: np.random.Generator, minimum: int) -> list[np.ndarray]:
    """Site sizes drawn log-normally, labels shuffled: some hospitals are much larger."""
    weights = rng.lognormal(0.0, sigma, num_sites)
    sizes = np.maximum(minimum, np.floor(weights / weights.sum() * count)).astype(int)
    while sizes.sum() > count:
        sizes[np.argmax(sizes)] -= 1
    sizes[np.argmax(sizes)] += count - sizes.sum()
    return np.split(rng.permutation(count), np.cumsum(sizes)[:-1])


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's label mix and the overall mix (0 = IID)."""
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    distances = []
    for part in parts:
        local = np.array([(labels[part] == c).mean() for c in classes])
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))
