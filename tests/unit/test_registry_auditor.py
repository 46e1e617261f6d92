"""Issue 12 item 5, as an attacker and an auditor play it: a pin means every entry is signed by
the pinned key, the catalogue is only a cache of the log, and a kept head detects a rollback."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flsuite.audit import AuditEntry, key_id, public_key_pem, seal, sign, write_head
from flsuite.audit.canonical import canonical_sha256
from flsuite.cli.registry_commands import audit_app, registry_app
from flsuite.errors import ConfigError, IntegrityError, UserError
from flsuite.registry import Registry, privacy_report, read_weights_file, verify_registry
from flsuite.registry.catalogue import Catalogue
from flsuite.registry.manifest import MANIFEST_DOMAIN
from flsuite.registry.testing import StepClock, publish_sample

app = typer.Typer()
app.add_typer(registry_app, name="registry")
app.add_typer(audit_app, name="audit")
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, Path]:
    """Nine versions; production promoted to 5, then to 9 (the last entry of the log)."""
    path, key = tmp_path / "registry", tmp_path / "coordinator.pem"
    with Registry.open(path, signing_key_path=key, clock=StepClock()) as reg:
        for round_ in range(9):
            publish_sample(reg, round=round_)
        reg.promote(5, "production")
        reg.promote(9, "production")
    return path, key


def _genuine_key(path: Path) -> str:
    return verify_registry(path).key_ids[0]


# -- 1. the pin -------------------------------------------------------------------------------
def _re_sign_whole_log(path: Path, attacker: Ed25519PrivateKey) -> None:
    """Re-sign every entry, manifest and the head with `attacker`; the genesis lists both key
    ids; the attacker's public key is planted beside the genuine one; the catalogue rebuilt."""
    lines = (path / "audit.jsonl").read_bytes().splitlines()
    prev, entries = "0" * 64, []
    for line in lines:
        old = AuditEntry.from_dict(json.loads(line))
        payload = dict(old.payload)
        if old.kind == "registry.created":
            payload["keys"] = [key_id(attacker), *payload["keys"]]
        if old.kind == "version.published":
            payload["manifest_hash"] = canonical_sha256(payload["manifest"])
            payload["manifest_sig"] = sign(attacker, MANIFEST_DOMAIN, payload["manifest_hash"].encode())
        entry = seal(seq=old.seq, time=old.time, kind=old.kind, payload=payload, prev=prev,
                     signing_key=attacker)
        entries.append(entry)
        prev = entry.hash
    (path / "audit.jsonl").write_bytes(b"".join(e.to_line() for e in entries))
    (path / "keys" / f"{key_id(attacker)}.pub").write_bytes(public_key_pem(attacker))
    registry_id = entries[0].payload["registry_id"]
    write_head(path / "head.json", entries[-1], registry_id=registry_id, time=entries[-1].time,
               signing_key=attacker)
    for file in path.glob("catalogue.sqlite*"):
        file.unlink()
    catalogue = Catalogue(path / "catalogue.sqlite", writable=True)
    catalogue.apply(entries)
    catalogue.close()


def test_log_re_signed_by_an_attacker_listing_the_genuine_key_fails_the_pin(built) -> None:
    path, _ = built
    genuine = _genuine_key(path)
    assert verify_registry(path, expected_key=genuine).ok  # the untouched registry passes
    _re_sign_whole_log(path, Ed25519PrivateKey.generate())
    assert verify_registry(path).ok  # self-consistent: without a pin nothing tells
    report = verify_registry(path, expected_key=genuine)
    assert not report.ok
    first = report.problems[0]
    assert (first.where, first.check) == ("audit entry 1", "pin")
    assert f"not by the expected key {genuine[:16]}" in first.message
    assert any(p.where == "head.json" for p in report.problems)  # the head is not pinned-signed
    assert verify_registry(path, expected_key=genuine[:16]).problems[0].check == "pin"


def test_audit_commands_under_a_pin_fail_on_the_re_signed_log(built) -> None:
    path, _ = built
    genuine = _genuine_key(path)
    assert _run("audit", "verify", str(path), "--expect-key", genuine).exit_code == 0
    good_report = _run("audit", "report", str(path), "--expect-key", genuine, "--json")
    assert good_report.exit_code == 0 and json.loads(good_report.output)["verified"] is True
    _re_sign_whole_log(path, Ed25519PrivateKey.generate())
    bad = _run("audit", "verify", str(path), "--expect-key", genuine)
    assert bad.exit_code == 1 and bad.output.startswith("FAILED: audit entry 1: signed by key")
    bad_report = _run("audit", "report", str(path), "--expect-key", genuine, "--json")
    assert bad_report.exit_code == 1
    data = json.loads(bad_report.output)
    assert data["ok"] is False and data["verdict"].startswith("FAILED: audit entry 1")
    assert privacy_report(path, expected_key=genuine)["ok"] is False
    # with --html (one verification serves the auditor's report and the privacy table): FAILED, exit 1, no
    # crash, for a pin the genesis lists (the re-signed log) and for one it does not (a wrong key)
    for pin in (genuine, "ab" * 32):
        with_html = _run("audit", "report", str(path), "--expect-key", pin, "--html", str(path.parent / "report.html"))
        assert with_html.exit_code == 1 and isinstance(with_html.exception, SystemExit), with_html.exception
        assert "FAILED" in with_html.output


def test_a_malformed_pin_is_bad_input(built) -> None:
    path, _ = built
    with pytest.raises(ConfigError, match="at least its first 16"):
        verify_registry(path, expected_key="ab")
    result = _run("audit", "verify", str(path), "--expect-key", "not-hex-at-all-000000")
    assert isinstance(result.exception, UserError) and "--expect-key" in str(result.exception)


# -- 2. the catalogue is a cache of the log ---------------------------------------------------
def _drop_last_alias_move_and_lower_applied_seq(path: Path) -> None:
    db = sqlite3.connect(path / "catalogue.sqlite")
    last = db.execute("SELECT max(seq) FROM alias_moves").fetchone()[0]
    db.execute("DROP TRIGGER alias_moves_kept")
    db.execute("DELETE FROM alias_moves WHERE seq = ?", (last,))
    db.execute("UPDATE meta SET value = ? WHERE key = 'applied_seq'", (str(last - 1),))
    db.commit()
    db.close()


def test_deleted_alias_move_and_lowered_applied_seq_fail_verification(built) -> None:
    path, _ = built
    _drop_last_alias_move_and_lower_applied_seq(path)
    report = verify_registry(path)
    assert not report.ok
    assert report.problems[0].where == "catalogue applied_seq"
    assert "behind the signed head (entry 12)" in report.problems[0].message


def test_export_production_refuses_a_catalogue_that_disagrees_with_the_log(built, tmp_path: Path) -> None:
    path, key = built
    out = tmp_path / "model.safetensors"
    _drop_last_alias_move_and_lower_applied_seq(path)
    result = _run("registry", "export", "production", "--out", str(out), "--registry", str(path))
    assert isinstance(result.exception, IntegrityError)  # exit 1 under the main CLI
    assert "catalogue applied_seq" in str(result.exception) and not out.exists()
    with pytest.raises(IntegrityError, match="not the audit log's cache"):
        Registry.open(path, signing_key_path=key, create=False)  # a writer refuses too
    for file in path.glob("catalogue.sqlite*"):  # the documented way out: rebuild from the log
        file.unlink()
    Registry.open(path, signing_key_path=key, create=False).close()
    assert verify_registry(path).ok
    assert _run("registry", "export", "production", "--out", str(out), "--registry", str(path)).exit_code == 0
    assert (read_weights_file(out)["layer.bias"] == 8.0).all()  # version 9 (round 8), not 5


def test_edited_alias_move_row_is_named(built) -> None:
    path, _ = built
    db = sqlite3.connect(path / "catalogue.sqlite")
    db.execute("DROP TRIGGER alias_moves_immutable")
    db.execute("UPDATE alias_moves SET to_version = 5 WHERE seq = 12")
    db.commit()
    db.close()
    wheres = [p.where for p in verify_registry(path).problems]
    assert wheres == ["alias move at audit entry 12", "alias 'production'"]
    with pytest.raises(IntegrityError, match="alias move at audit entry 12"):
        Registry.open(path).close()


def test_catalogue_behind_the_log_past_the_signed_head_is_a_note(built) -> None:
    """A writer killed between its log append and its catalogue update is not an attack."""
    path, key = built
    reg = Registry.open(path, signing_key_path=key, create=False)

    def crash(step: str) -> None:
        if step == "log-appended":
            raise KeyboardInterrupt

    reg._fault_hook = crash
    with pytest.raises(KeyboardInterrupt):
        reg.rollback("production")
    reg.close()
    report = verify_registry(path)
    assert report.ok, report.problems
    assert any("alias move of 'production' (audit entry 13)" in note for note in report.notes)
    Registry.open(path).close()  # readers accept it
    with Registry.open(path, signing_key_path=key, create=False) as writer:
        assert writer.aliases() == {"production": 5}  # the next writer replays it


# -- 3. rollback detection against a kept head ------------------------------------------------
def test_since_detects_an_older_copy_and_a_diverging_one(built, tmp_path: Path) -> None:
    path, key = built
    older = tmp_path / "older"
    shutil.copytree(path, older)
    with Registry.open(path, signing_key_path=key, create=False, clock=StepClock()) as reg:
        publish_sample(reg, round=9)
    head = tmp_path / "kept-head.json"
    saved = _run("audit", "verify", str(path), "--write-head", str(head))
    assert saved.exit_code == 0 and head.is_file()
    assert json.loads(head.read_text())["seq"] == 13

    same = _run("audit", "verify", str(path), "--since", str(head))
    assert same.exit_code == 0, same.output
    stale = _run("audit", "verify", str(older), "--since", str(head))
    assert stale.exit_code == 1
    assert stale.output.startswith("FAILED: audit entry 13: missing: the saved head names entry 13")
    assert _run("audit", "verify", str(older)).exit_code == 0  # only the kept head tells

    diverging = tmp_path / "diverging"
    shutil.copytree(older, diverging)
    with Registry.open(diverging, signing_key_path=key, create=False, clock=StepClock()) as reg:
        publish_sample(reg, round=42)
        publish_sample(reg, round=43)
    assert verify_registry(diverging).ok
    forked = _run("audit", "verify", str(diverging), "--since", str(head), "--json")
    assert forked.exit_code == 1
    assert json.loads(forked.output)["problems"][0] == {
        "where": "audit entry 13", "check": "since",
        "message": "differs from the saved head (this log diverges from the one verified before: rewritten)"}

    with Registry.open(path, signing_key_path=key, create=False) as reg:
        reg.promote(10, "staging")
    newer = _run("audit", "verify", str(path), "--since", str(head), "--write-head", str(head))
    assert newer.exit_code == 0, newer.output
    assert json.loads(head.read_text())["seq"] == 14  # the kept head moves forward


def test_since_refuses_a_head_of_another_registry_and_keeps_no_failed_head(built, tmp_path: Path) -> None:
    path, _ = built
    other = tmp_path / "other"
    with Registry.open(other, signing_key_path=tmp_path / "other.pem") as reg:
        publish_sample(reg)
    head = tmp_path / "other-head.json"
    assert _run("audit", "verify", str(other), "--write-head", str(head)).exit_code == 0
    result = _run("audit", "verify", str(path), "--since", str(head))
    assert result.exit_code == 1 and "saved head" in result.output
    lines = (path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (path / "audit.jsonl").write_bytes(b"".join(lines[:-1]))
    failed = tmp_path / "not-written.json"
    assert _run("audit", "verify", str(path), "--write-head", str(failed)).exit_code == 1
    assert not failed.exists()


def test_missing_or_malformed_saved_head_is_bad_input(built, tmp_path: Path) -> None:
    path, _ = built
    missing = _run("audit", "verify", str(path), "--since", str(tmp_path / "nope.json"))
    assert isinstance(missing.exception, ConfigError) and "no such file" in str(missing.exception)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    bad = _run("audit", "verify", str(path), "--since", str(garbage))
    assert isinstance(bad.exception, ConfigError) and "malformed" in str(bad.exception)
    assert isinstance(bad.exception, UserError)  # exit 2 under the main CLI

