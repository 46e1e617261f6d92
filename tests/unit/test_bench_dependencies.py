"""PyCryptodome is no runtime dependency of flsuite: only the secure-aggregation benchmark's
"before" column (experiments/bench/legacy_shamir.py) uses it. It comes with the ``bench``
extra, which the ``test`` extra (what .ci/run installs) includes; without it, the bench says
how to install it."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_pycryptodome_is_in_the_bench_extra_only_and_the_tests_install_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "pycryptodome" not in _names(project["dependencies"])
    assert "pycryptodome" in _names(extras["bench"])
    assert "flsuite[bench]" in extras["test"]
    assert '".[test]"' in (REPO / ".ci" / "run").read_text()  # CI installs the test extra, so the bench's too


def test_without_pycryptodome_the_bench_says_how_to_install_it(monkeypatch):
    from experiments.bench import legacy_shamir

    monkeypatch.setitem(sys.modules, "Crypto.Protocol.SecretSharing", None)  # what an absent package looks like
    with pytest.raises(ImportError, match=re.escape("pip install -e '.[bench]'")):
        legacy_shamir.legacy_split(bytes(32), threshold=2, holders=3)
    with pytest.raises(ImportError, match="before"), legacy_shamir.shamir_backend("pycryptodome"):
        pass


def test_with_pycryptodome_the_before_column_still_round_trips():
    pytest.importorskip("Crypto")
    from experiments.bench.legacy_shamir import legacy_combine, legacy_split

    secret = bytes(range(32))
    shares = legacy_split(secret, threshold=2, holders=3)
    assert legacy_combine([(2, shares[1]), (3, shares[2])]) == secret
