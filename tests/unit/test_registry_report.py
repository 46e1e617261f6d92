"""The auditor's privacy report: claims per version and site, recomputed and compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from flsuite.errors import ConfigError
from flsuite.registry import Registry, RegistryError, privacy_report
from flsuite.registry.testing import publish_sample, sample_certificate


@pytest.fixture()
def registry_path(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "k.pem") as reg:
        publish_sample(reg, round=0, epsilon=1.0)
        publish_sample(reg, round=1, epsilon=None)
        publish_sample(reg, round=2, dp_certificate={
            **sample_certificate({"site-a": 2.0, "site-b": 0.5}, steps=200)})
    return path


def _fake_accountant(phases, *, delta, accountant):
    """1 epsilon per 100 steps: enough to tell honest claims from low ones."""
    if accountant == "gdp":
        raise ConfigError("gdp under-reports")
    return sum(steps for _, _, steps in phases) / 100


def test_claims_are_recomputed_and_compared(registry_path: Path) -> None:
    report = privacy_report(registry_path, epsilon_fn=_fake_accountant)
    first, second, third = report["versions"]
    assert [c["status"] for c in first["claims"]] == ["ok", "ok"]
    assert second["certificate"] is False
    by_site = {c["site"]: c for c in third["claims"]}
    assert by_site["site-a"]["recomputed_epsilon"] == 2.0 and by_site["site-a"]["status"] == "ok"
    assert by_site["site-b"]["status"] == "under-claimed"  # claims 0.5, the phases give 2.0
    assert report["under_claimed_sites"] == ["site-b"] and report["ok"] is False
    assert report["sites"]["site-a"]["latest_version"] == 3


def test_accountant_errors_are_reported_not_raised(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "r", signing_key_path=tmp_path / "k.pem") as reg:
        publish_sample(reg, dp_certificate=sample_certificate({"site-a": 1, "site-b": 1}, accountant="gdp"))
    claims = privacy_report(tmp_path / "r", epsilon_fn=_fake_accountant)["versions"][0]["claims"]
    assert claims[0]["recomputed_epsilon"] is None and "gdp under-reports" in claims[0]["status"]


def test_version_filter_and_missing_registry(registry_path: Path, tmp_path: Path) -> None:
    report = privacy_report(registry_path, versions=[2], epsilon_fn=_fake_accountant)
    assert [v["version"] for v in report["versions"]] == [2]
    with pytest.raises(RegistryError, match="not an flsuite registry"):
        privacy_report(tmp_path / "nowhere")


def test_default_accountant_is_flsuite_privacy_when_present(registry_path: Path) -> None:
    report = privacy_report(registry_path, versions=[1])
    try:
        import flsuite.privacy.accounting  # noqa: F401
    except ImportError:
        assert report["accounting"].startswith("unavailable")
        assert report["versions"][0]["claims"][0]["status"] == "not recomputed"
    else:
        assert report["accounting"] == "flsuite.privacy.accounting.epsilon"
        assert report["versions"][0]["claims"][0]["recomputed_epsilon"] is not None


def test_report_recomputes_with_flsuite_privacy(tmp_path: Path) -> None:
    pytest.importorskip("flsuite.privacy.accounting")
    honest = sample_certificate({"site-a": 7.33}, q=0.04, sigma=1.5, steps=2250)
    low = sample_certificate({"site-a": 6.0}, q=0.04, sigma=1.5, steps=2250)
    with Registry.open(tmp_path / "r", signing_key_path=tmp_path / "k.pem") as reg:
        publish_sample(reg, sites=["site-a"], dp_certificate=honest)
        publish_sample(reg, round=1, sites=["site-a"], dp_certificate=low)
    report = privacy_report(tmp_path / "r")
    first, second = (v["claims"][0] for v in report["versions"])
    assert first["recomputed_epsilon"] == pytest.approx(7.329, abs=0.01)  # Opacus' RDP value
    assert (first["status"], second["status"]) == ("ok", "under-claimed")
    assert report["under_claimed_sites"] == ["site-a"]
