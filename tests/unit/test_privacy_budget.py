"""Site budgets: check, then spend; a site never ends above its cap."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flsuite.errors import BudgetExhausted, ConfigError
from flsuite.privacy import PrivacyLedger, SiteBudget, epsilon
from tests.unit.test_privacy_events import make_event

FP = "site-0"  # the dataset make_event declares


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_epsilon": 0}, "max_epsilon"), ({"max_epsilon": -1.0}, "max_epsilon"), ({"max_epsilon": float("inf")}, "max_epsilon"),
     ({"delta": 1.0}, "delta"), ({"delta": 0}, "delta"), ({"accountant": "gdp"}, "under-reports")],
)
def test_a_bad_cap_is_refused_on_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SiteBudget(**({"max_epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"} | kwargs))


def test_a_fresh_site_projects_only_the_request(tmp_path):
    budget = SiteBudget(max_epsilon=3.0, delta=1e-5, accountant="rdp")
    projection = budget.project(PrivacyLedger(tmp_path / "l.jsonl"), FP, (0.1, 1.5, 50))
    assert projection.spent == 0.0 and projection.remaining == 3.0
    assert projection.projected == epsilon([(0.1, 1.5, 50)], delta=1e-5, accountant="rdp")
    assert projection.allowed


def test_a_request_past_the_cap_is_refused_with_what_is_left_and_nothing_is_written(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    ledger.append(make_event(sample_rate=0.1, noise_multiplier=1.5, steps=20))
    before = ledger.path.read_bytes()
    budget = SiteBudget(max_epsilon=3.0, delta=1e-5, accountant="rdp")
    spent = epsilon([(0.1, 1.5, 20)], delta=1e-5, accountant="rdp")
    assert 0 < spent < 3.0
    with pytest.raises(BudgetExhausted, match="above the site's cap 3") as caught:
        budget.require(ledger, FP, (0.1, 1.5, 400))
    assert caught.value.remaining_epsilon == pytest.approx(3.0 - spent)
    assert "Nothing was trained" in str(caught.value)
    assert ledger.path.read_bytes() == before
    assert budget.require(ledger, FP, (0.1, 1.5, 5)).allowed  # a small request still fits


def test_other_data_at_the_same_site_does_not_count(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    ledger.append(make_event(dataset="other-data", sample_rate=0.5, noise_multiplier=0.7, steps=500))
    budget = SiteBudget(max_epsilon=3.0, delta=1e-5, accountant="rdp")
    assert budget.project(ledger, FP, (0.1, 1.5, 10)).spent == 0.0


def test_a_cap_below_what_is_already_spent_allows_nothing(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    ledger.append(make_event(sample_rate=0.1, noise_multiplier=1.0, steps=300))
    projection = SiteBudget(max_epsilon=1.0, delta=1e-5, accountant="rdp").project(ledger, FP, (0.1, 50.0, 1))
    assert projection.spent > 1.0 and projection.remaining == 0.0 and not projection.allowed
    with pytest.raises(ConfigError, match=r"max_epsilon=1 is below what this site already spent"):
        SiteBudget(max_epsilon=1.0, delta=1e-5, accountant="rdp").check_cap(ledger, FP)
    assert SiteBudget(max_epsilon=50.0, delta=1e-5, accountant="rdp").check_cap(ledger, FP) == projection.spent


def _simulate_site(cap: float, requests: list[tuple[float, float, int]], accountant: str) -> tuple[float, int]:
    """A site answering every request by check-then-spend; returns its final epsilon and refusals."""
    budget = SiteBudget(max_epsilon=cap, delta=1e-5, accountant=accountant)
    refused = 0
    with tempfile.TemporaryDirectory() as folder:
        ledger = PrivacyLedger(Path(folder) / "ledger.jsonl")
        for round_number, (q, sigma, steps) in enumerate(requests, start=1):
            try:
                budget.require(ledger, FP, (q, sigma, steps))
            except BudgetExhausted:
                refused += 1
                continue
            ledger.append(make_event(round=round_number, sample_rate=q, noise_multiplier=sigma, steps=steps))
        final = epsilon(ledger.events(FP), delta=1e-5, accountant=accountant)
    return final, refused


requests = st.lists(
    st.tuples(st.floats(0.01, 0.5), st.floats(0.5, 4.0), st.integers(1, 200)), min_size=1, max_size=8
)


@settings(max_examples=15, deadline=None)
@given(cap=st.floats(0.2, 10.0), requests=requests)
def test_over_random_requests_and_caps_a_site_never_ends_above_its_cap(cap, requests):
    final, refused = _simulate_site(cap, requests, "rdp")
    assert final <= cap
    uncapped = epsilon(requests, delta=1e-5, accountant="rdp")
    assert refused == 0 or uncapped > cap


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(cap=st.floats(0.5, 6.0), requests=st.lists(st.tuples(st.floats(0.02, 0.3), st.floats(0.8, 3.0), st.integers(5, 60)), min_size=2, max_size=5))
def test_with_prv_a_site_never_ends_above_its_cap(cap, requests):
    final, _ = _simulate_site(cap, requests, "prv")
    assert final <= cap


class ExactAccountantCalled(Exception):
    """Raised by the patched exact accountants: not one of the errors accounting falls back on."""


def _forbid_exact_accounting(monkeypatch):
    from flsuite.privacy import accounting

    def exact(*args, **kwargs):
        raise ExactAccountantCalled(args)

    accounting.clear_cache()
    for name in ("_prv_bounds", "_prv_epsilon", "_pld_at"):  # _prv_epsilon: the name before the screen
        monkeypatch.setattr(accounting, name, exact, raising=False)


def test_a_request_far_from_the_cap_never_runs_the_exact_accountant(tmp_path, monkeypatch):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    for round_number in range(1, 6):
        ledger.append(make_event(round=round_number, sample_rate=0.02, noise_multiplier=1.2, steps=50))
    _forbid_exact_accounting(monkeypatch)
    budget = SiteBudget(max_epsilon=8.0, delta=1e-5, accountant="prv")
    projection = budget.require(ledger, FP, (0.02, 1.2, 50))
    assert projection.allowed
    with pytest.raises(ExactAccountantCalled):  # the exact epsilons are still there, when read
        _ = projection.projected


def test_near_the_cap_the_exact_accountant_decides(monkeypatch):
    _forbid_exact_accounting(monkeypatch)
    budget = SiteBudget(max_epsilon=1.0, delta=1e-5, accountant="prv")
    with pytest.raises(ExactAccountantCalled):
        budget.project_phases([(0.02, 1.2, 250)], (0.02, 1.2, 50))


# (prior, proposed): fresh, some spent, mixed phases, and a small-sigma one where PRV fails.
BUDGET_CASES = [
    ((), (0.05, 1.3, 200)),
    (((0.02, 1.2, 250),), (0.02, 1.2, 50)),
    (((0.01, 1.0, 300), (0.05, 1.5, 60)), (0.03, 1.1, 80)),
    (((0.1, 0.7, 100),), (0.1, 0.7, 30)),
]


@pytest.mark.parametrize("prior, proposed", BUDGET_CASES)
@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_budget_decisions_equal_the_exact_decisions_near_and_far_from_the_cap(prior, proposed, accountant):
    from flsuite.privacy.accounting import screening_bound

    spent = epsilon(prior, delta=1e-5, accountant=accountant)
    exact = epsilon(list(prior) + [proposed], delta=1e-5, accountant=accountant)
    bound = screening_bound(list(prior) + [proposed], delta=1e-5, accountant=accountant)
    assert bound >= exact
    caps = {exact * 0.98, exact * (1 - 1e-6), exact, exact * (1 + 1e-6), exact * 1.02, (exact + bound) / 2, bound, bound * 1.5}
    for cap in sorted(c for c in caps if c > 0):
        budget = SiteBudget(max_epsilon=cap, delta=1e-5, accountant=accountant)
        projection = budget.project_phases(prior, proposed)
        assert projection.allowed == (exact <= cap), (cap, exact)
        assert projection.projected == exact and projection.spent == spent
        assert projection.remaining == max(0.0, cap - spent)
