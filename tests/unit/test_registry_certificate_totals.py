"""A DP certificate states, per site, this study's epsilon, the site's total over every event its
ledger recorded, and the signed ledger head that total was read at (issue 11.10)."""

from __future__ import annotations

import pytest

from flsuite.registry import RegistryError, validate_dp_certificate
from flsuite.registry.testing import sample_certificate

HEAD = {"site": "site-a", "dataset": "records", "entries": 7, "hash": "ab" * 32, "signature": "cd" * 64}


def certificate(**claim):
    cert = sample_certificate({"site-a": 1.5})
    cert["sites"]["site-a"].update(claim)
    return cert


def test_the_total_and_the_signed_head_are_kept():
    out = validate_dp_certificate(certificate(total_epsilon=4.2, ledger_head=HEAD, ledger_head_check="verified"), sites=["site-a"])
    claim = out["sites"]["site-a"]
    assert claim["epsilon"] == 1.5 and claim["total_epsilon"] == 4.2
    assert claim["ledger_head"] == HEAD and claim["ledger_head_check"] == "verified"


@pytest.mark.parametrize(("claim", "match"), [
    ({"total_epsilon": 1.0}, "below this study's epsilon"),
    ({"total_epsilon": float("nan")}, "total_epsilon"),
    ({"total_epsilon": 4.2, "ledger_head": HEAD}, "come together"),
    ({"total_epsilon": 4.2, "ledger_head": {**HEAD, "site": "site-b"}, "ledger_head_check": "verified"}, "names site 'site-b'"),
    ({"total_epsilon": 4.2, "ledger_head": {**HEAD, "entries": -1}, "ledger_head_check": "verified"}, "not a signed ledger head"),
    ({"total_epsilon": 4.2, "ledger_head": {**HEAD, "signature": "XYZ"}, "ledger_head_check": "verified"}, "not a signed ledger head"),
    ({"ledger_head": HEAD, "ledger_head_check": "verified"}, "total_epsilon"),
    ({"total_epsilon": 4.2, "ledger_head": HEAD, "ledger_head_check": ""}, "ledger_head_check"),
    ({"epsilon_total": 4.2}, "unknown keys"),
])
def test_a_total_below_the_study_or_a_malformed_head_is_refused(claim, match):
    with pytest.raises(RegistryError, match=match):
        validate_dp_certificate(certificate(**claim), sites=["site-a"])
