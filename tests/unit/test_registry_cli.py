"""The `flsuite registry` and `flsuite audit` sub-apps, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flsuite.cli.registry_commands import audit_app, registry_app
from flsuite.errors import UserError
from flsuite.registry import Registry, read_weights_file
from flsuite.registry.testing import publish_sample, sample_weights

app = typer.Typer()
app.add_typer(registry_app, name="registry")
app.add_typer(audit_app, name="audit")
runner = CliRunner()


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, key = tmp_path / "registry", tmp_path / "coordinator.pem"
    with Registry.open(path, signing_key_path=key) as reg:
        publish_sample(reg, round=0, metrics={"accuracy": 0.8}, epsilon=1.0)
        publish_sample(reg, round=1, metrics={"accuracy": 0.9}, epsilon=4.0)
    monkeypatch.setenv("FLSUITE_REGISTRY", str(path))
    monkeypatch.delenv("FLSUITE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("FLSUITE_ENCRYPTION_KEY", raising=False)
    return path, key


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_list_and_show(setup) -> None:
    result = _run("registry", "list")
    assert result.exit_code == 0 and "run-1" in result.output
    data = json.loads(_run("registry", "list", "--json").output)
    assert [v["number"] for v in data["versions"]] == [1, 2]
    shown = json.loads(_run("registry", "show", "2", "--json").output)
    assert shown["parent"] == 1 and shown["manifest"]["metrics"] == {"accuracy": 0.9}


def test_promote_gate_rollback_and_json(setup) -> None:
    path, key = setup
    refused = _run("registry", "promote", "2", "--alias", "production", "--max-epsilon", "2",
                   "--signing-key", str(key))
    assert isinstance(refused.exception, UserError) and "epsilon 4 > max 2" in str(refused.exception)
    ok = _run("registry", "promote", "1", "--alias", "production", "--max-epsilon", "2",
              "--min-accuracy", "0.75", "--signing-key", str(key), "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["to_version"] == 1
    assert _run("registry", "promote", "2", "--alias", "production", "--signing-key", str(key)).exit_code == 0
    back = _run("registry", "rollback", "--alias", "production", "--signing-key", str(key), "--json")
    assert json.loads(back.output)["to_version"] == 1
    assert json.loads(_run("registry", "show", "production", "--json").output)["number"] == 1


def test_promote_without_key_is_a_user_error(setup) -> None:
    result = _run("registry", "promote", "1", "--alias", "production")
    assert isinstance(result.exception, UserError) and "signing key" in str(result.exception)
    bad = _run("registry", "promote", "1", "--alias", "p", "--min-metric", "auc", "--signing-key", "x")
    assert isinstance(bad.exception, UserError) and "NAME=VALUE" in str(bad.exception)


def test_export_writes_weights_and_signed_manifest(setup, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = _run("registry", "export", "2", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    weights = read_weights_file(out)
    assert (weights["layer.bias"] == sample_weights(1.0)["layer.bias"]).all()
    sidecar = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert sidecar["manifest"]["version"] == 2 and sidecar["public_keys"]
    again = _run("registry", "export", "2", "--out", str(out))
    assert isinstance(again.exception, UserError) and "exists" in str(again.exception)


def test_audit_verify_exit_codes(setup) -> None:
    path, _ = setup
    good = _run("audit", "verify", str(path))
    assert good.exit_code == 0 and good.output.startswith("VERIFIED")
    lines = (path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (path / "audit.jsonl").write_bytes(b"".join(lines[:1] + lines[2:]))
    bad = _run("audit", "verify", str(path), "--json")
    assert bad.exit_code == 1
    verdict = json.loads(bad.output)
    assert not verdict["ok"] and verdict["problems"][0]["where"] == "audit entry 3 (line 2)"
    text = _run("audit", "verify", str(path))
    assert text.exit_code == 1 and text.output.startswith("FAILED: audit entry 3 (line 2)")


def test_audit_verify_of_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    result = _run("audit", "verify", str(tmp_path / "nowhere"))
    assert isinstance(result.exception, UserError)


def test_audit_report_lists_claims(setup) -> None:
    path, _ = setup
    result = _run("audit", "report", str(path), "--json")
    data = json.loads(result.output)
    assert [c["claimed_epsilon"] for c in data["versions"][1]["claims"]] == [4.0, 4.0]
    assert "site-a" in _run("audit", "report", str(path)).output
