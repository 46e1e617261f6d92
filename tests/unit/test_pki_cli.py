"""`flsuite pki` as an operator uses it: files appear, --force is needed to replace, list warns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from flsuite.cli.pki_commands import pki_app
from flsuite.pki import OverwriteRefused, init_authority, issue_coordinator

runner = CliRunner()


def test_operator_journey(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    assert runner.invoke(pki_app, ["init", "--dir", pki]).exit_code == 0
    result = runner.invoke(pki_app, ["issue-coordinator", "--host", "localhost", "--ip", "127.0.0.1", "--dir", pki])
    assert result.exit_code == 0, result.output
    assert runner.invoke(pki_app, ["issue-site", "hospital-a", "--dir", pki]).exit_code == 0
    result = runner.invoke(pki_app, ["issue-site", "hospital-b", "--dir", pki])
    assert "send the new copy to hospital-a" in result.output
    listing = runner.invoke(pki_app, ["list", "--dir", pki])
    assert listing.exit_code == 0
    assert "coordinator.crt" in listing.output and "localhost, 127.0.0.1" in listing.output
    assert "WARNING" not in listing.output

    again = runner.invoke(pki_app, ["issue-site", "hospital-a", "--dir", pki])
    assert isinstance(again.exception, OverwriteRefused)
    assert "--force" in str(again.exception)
    assert runner.invoke(pki_app, ["issue-site", "hospital-a", "--dir", pki, "--force"]).exit_code == 0


def test_list_warns_for_a_certificate_expiring_within_30_days(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    init_authority(tmp_path, now=now - timedelta(days=30))
    issue_coordinator(tmp_path, hosts=["localhost"], valid_days=10, now=now)
    result = runner.invoke(pki_app, ["list", "--dir", str(tmp_path)])
    assert "WARNING" in result.output and "coordinator.crt" in result.output
    issue_coordinator(tmp_path, hosts=["localhost"], valid_days=1, force=True, now=now - timedelta(days=5))
    result = runner.invoke(pki_app, ["list", "--dir", str(tmp_path)])
    assert "EXPIRED" in result.output


def test_list_of_an_empty_folder_says_how_to_start(tmp_path: Path) -> None:
    result = runner.invoke(pki_app, ["list", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "flsuite pki init" in result.output


def test_help_texts_explain_each_command() -> None:
    result = runner.invoke(pki_app, ["--help"])
    for command in ("init", "issue-coordinator", "issue-site", "list"):
        assert command in result.output
    assert "0600" in runner.invoke(pki_app, ["init", "--help"]).output
