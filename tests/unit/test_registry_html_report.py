"""The auditor's HTML report, attacked: a lower claim than the phases compose to, registry strings
that try to run script, a report that would fetch something. (The real study in a real browser
is tests/integration/test_report_browser.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flsuite.privacy import pld_epsilon_of_phases
from flsuite.registry import Registry
from flsuite.registry.auditor import auditor_report
from flsuite.registry.html_report import render_html
from flsuite.registry.testing import publish_sample, sample_certificate
from tests.conftest import run_cli

HOSTILE = "<script>window.pwned=1</script>"


def _registry(tmp_path: Path, *, epsilon: float, metrics: dict | None = None, run_id: str = "run-1") -> Path:
    path = tmp_path / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "k.pem") as reg:
        publish_sample(reg, round=1, run_id=run_id, metrics=metrics,
                       dp_certificate=sample_certificate({"site-a": epsilon, "site-b": epsilon}, q=0.02, sigma=1.1, steps=200))
    return path


def _honest() -> float:
    return pld_epsilon_of_phases([(0.02, 1.1, 200)], 1e-5)


def test_an_honest_claim_verifies_and_its_row_shows_the_pld_recomputation(tmp_path):
    claimed = _honest() * 1.05
    report = auditor_report(_registry(tmp_path, epsilon=claimed))
    assert report["ok"] and report["verification"]["ok"]
    row = report["sites"][0]
    assert row["status"] == "ok" and row["claimed_epsilon"] == claimed and row["pld_epsilon"] == pytest.approx(_honest())
    page = render_html(report)
    assert 'data-status="ok"' in page and f'data-field="pld_epsilon">{_honest():.4f}<' in page


def test_a_certificate_claiming_less_than_its_phases_compose_to_is_a_failure(tmp_path):
    registry = _registry(tmp_path, epsilon=_honest() / 2)
    report = auditor_report(registry)
    assert not report["ok"] and {row["status"] for row in report["sites"]} == {"FAILURE"}
    page = render_html(report)
    assert 'data-status="failure"' in page and "FAILURE" in page and "claims epsilon" in page
    result = run_cli("audit", "report", str(registry), "--html", str(tmp_path / "report.html"), timeout=180)
    assert result.returncode == 1, result.stderr
    assert "FAILURE" in result.stdout and 'data-status="failure"' in (tmp_path / "report.html").read_text()


def test_strings_from_the_registry_are_escaped_not_run(tmp_path):
    registry = _registry(tmp_path, epsilon=_honest() * 1.05, metrics={HOSTILE: 0.5, "accuracy": 0.9},
                         run_id='"><img src=x onerror=alert(1)>')
    report = auditor_report(registry)
    report["versions"][0]["metrics"]["note"] = HOSTILE  # a metric VALUE that is a string (a forged manifest)
    page = render_html(report)
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page and "&quot;&gt;&lt;img src=x" in page


def test_the_page_fetches_nothing(tmp_path):
    page = render_html(auditor_report(_registry(tmp_path, epsilon=_honest() * 1.05)))
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", s) for s in sources)
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', 'src=""', page)
    assert not re.search(r"https?:|//[a-z]|url\(|@import|<link|<script|<iframe|<object|<embed", text, re.IGNORECASE)


def test_a_ledger_folder_without_a_ledger_is_bad_input_and_nothing_is_written(tmp_path):
    registry = _registry(tmp_path, epsilon=1.0)
    (tmp_path / "empty").mkdir()
    result = run_cli("audit", "report", str(registry), "--html", str(tmp_path / "r.html"),
                     "--ledger", str(tmp_path / "empty"), timeout=180)
    assert result.returncode == 2 and "no privacy ledger" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_audit_report_verifies_the_registry_once(tmp_path, monkeypatch):
    """Was twice: once for the auditor's HTML report (blobs included) and again for the privacy table."""
    from typer.testing import CliRunner

    from flsuite.cli.registry_commands import audit_app
    from flsuite.registry import auditor, report, verify

    registry = _registry(tmp_path, epsilon=_honest() * 2)  # covers the RDP recomputation of the privacy table too
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("check_blobs", True))
        return verify.verify_registry(*args, **kwargs)

    for module in (auditor, report):
        monkeypatch.setattr(module, "verify_registry", counted)
    html = tmp_path / "report.html"
    result = CliRunner().invoke(audit_app, ["report", str(registry), "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert calls == [True]  # one verification, blobs checked, serving both reports
    assert "verifies" in result.output.lower() and html.is_file()


def test_a_verification_of_another_registry_is_refused_by_the_privacy_report(tmp_path):
    from flsuite.registry import privacy_report, verify_registry

    one = _registry(tmp_path / "one", epsilon=_honest() * 2)
    other = _registry(tmp_path / "other", epsilon=_honest() / 2)
    with pytest.raises(ValueError, match="the verification given is of .*other.*, not of .*one"):
        privacy_report(one, verification=verify_registry(other))


def test_a_verification_made_without_the_pin_is_refused_by_a_pinned_privacy_report(tmp_path):
    """The report took any verification of the same folder: one made unpinned silently dropped the pin."""
    from flsuite.registry import privacy_report, verify_registry

    one = _registry(tmp_path / "one", epsilon=_honest() * 2)
    unpinned = verify_registry(one)
    pin = unpinned.key_ids[0]
    with pytest.raises(ValueError, match="not made under this pin"):
        privacy_report(one, expected_key=pin, verification=unpinned)
    with pytest.raises(ValueError, match="not made under this pin"):
        privacy_report(one, expected_key="ab" * 32, verification=verify_registry(one, expected_key=pin))
    assert privacy_report(one, expected_key=pin, verification=verify_registry(one, expected_key=pin))["versions"]
