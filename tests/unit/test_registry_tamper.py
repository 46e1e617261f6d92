"""The tamper matrix of issue 5: each attack makes `verify_registry` fail and name the entry."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flsuite.audit.canonical import canonical_json, canonical_sha256
from flsuite.audit.keys import key_id, public_key_pem, sign
from flsuite.audit.log import AuditEntry, seal
from flsuite.errors import IntegrityError
from flsuite.registry import Registry, verify_registry
from flsuite.registry.manifest import MANIFEST_DOMAIN
from flsuite.registry.testing import StepClock, publish_sample


@pytest.fixture()
def registry_path(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "coordinator.pem", clock=StepClock()) as reg:
        for round_ in range(3):
            publish_sample(reg, round=round_)
        reg.record("study.finished", {"rounds": 3})
        reg.promote(3, "production")
    return path


def _lines(path: Path) -> list[bytes]:
    return (path / "audit.jsonl").read_bytes().splitlines(keepends=True)


def _write_lines(path: Path, lines: list[bytes]) -> None:
    (path / "audit.jsonl").write_bytes(b"".join(lines))


def _first_problem(path: Path):
    report = verify_registry(path)
    assert not report.ok, "tampering went unnoticed"
    return report.problems[0]


def test_untouched_registry_verifies(registry_path: Path) -> None:
    report = verify_registry(registry_path)
    assert report.ok, report.problems
    assert (report.entries, report.versions, report.head_seq) == (6, 3, 6)
    assert report.verdict().startswith("VERIFIED")


def test_edited_log_line_is_named(registry_path: Path) -> None:
    lines = _lines(registry_path)
    lines[2] = lines[2].replace(b'"accuracy":0.9', b'"accuracy":0.99')
    _write_lines(registry_path, lines)
    problem = _first_problem(registry_path)
    assert problem.where == "audit entry 3" and problem.check == "hash"


def test_edit_with_recomputed_hash_fails_signature(registry_path: Path) -> None:
    lines = _lines(registry_path)
    data = json.loads(lines[2])
    data["payload"]["manifest"]["metrics"]["accuracy"] = 0.99
    entry = AuditEntry.from_dict(data)
    data["hash"] = entry.computed_hash()
    lines[2] = canonical_json(data) + b"\n"
    _write_lines(registry_path, lines)
    report = verify_registry(registry_path)
    checks = {(p.where, p.check) for p in report.problems}
    assert ("audit entry 3", "signature") in checks


def test_reordered_lines_are_named(registry_path: Path) -> None:
    lines = _lines(registry_path)
    lines[2], lines[3] = lines[3], lines[2]
    _write_lines(registry_path, lines)
    problem = _first_problem(registry_path)
    assert problem.where == "audit entry 4 (line 3)" and problem.check == "sequence"


def test_deleted_line_is_named(registry_path: Path) -> None:
    lines = _lines(registry_path)
    del lines[4]  # the study.finished entry
    _write_lines(registry_path, lines)
    problem = _first_problem(registry_path)
    assert problem.where == "audit entry 6 (line 5)" and problem.check == "sequence"


def test_inserted_line_is_named(registry_path: Path, tmp_path: Path) -> None:
    lines = _lines(registry_path)
    before = json.loads(lines[1])
    forged = seal(seq=3, time=before["time"], kind="study.note", payload={"x": 1},
                  prev=before["hash"], signing_key=Ed25519PrivateKey.generate())
    lines.insert(2, forged.to_line())
    _write_lines(registry_path, lines)
    report = verify_registry(registry_path)
    assert report.problems[0].where == "audit entry 3"
    assert report.problems[0].check == "signature"  # signed by a stranger's key
    assert any(p.check == "sequence" for p in report.problems)


def test_truncated_tail_is_caught_against_the_signed_head(registry_path: Path) -> None:
    lines = _lines(registry_path)
    _write_lines(registry_path, lines[:-2])
    problem = _first_problem(registry_path)
    assert problem.where == "audit entry 5" and problem.check == "truncation"


def test_flipped_bit_in_a_blob_is_named(registry_path: Path) -> None:
    with Registry.open(registry_path) as reg:
        blob = registry_path / "blobs" / "sha256" / reg.version(2).blob_sha256
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    problem = _first_problem(registry_path)
    assert problem.where == "version 2 (audit entry 3)" and problem.check == "blob"
    with Registry.open(registry_path) as reg, pytest.raises(IntegrityError, match="version 2"):
        reg.load_weights(2)


def test_manifest_swapped_between_versions_in_the_catalogue(registry_path: Path) -> None:
    db = sqlite3.connect(registry_path / "catalogue.sqlite")
    rows = {n: r for n, *r in db.execute(
        "SELECT number, manifest, manifest_hash, manifest_sig FROM versions WHERE number IN (1, 2)")}
    db.execute("DROP TRIGGER versions_immutable")
    for number, other in ((1, 2), (2, 1)):
        db.execute("UPDATE versions SET manifest=?, manifest_hash=?, manifest_sig=? WHERE number=?",
                   (*rows[other], number))
    db.commit()
    db.close()
    problem = _first_problem(registry_path)
    assert problem.where == "version 1 (audit entry 2)" and problem.check == "catalogue"


def test_manifest_swapped_between_versions_in_the_log(registry_path: Path) -> None:
    lines = _lines(registry_path)
    first, second = json.loads(lines[1]), json.loads(lines[2])
    first["payload"], second["payload"] = second["payload"], first["payload"]
    lines[1], lines[2] = canonical_json(first) + b"\n", canonical_json(second) + b"\n"
    _write_lines(registry_path, lines)
    problem = _first_problem(registry_path)
    assert problem.where == "audit entry 2" and problem.check == "hash"


def test_signature_made_with_another_key(registry_path: Path) -> None:
    """A stranger re-signs an edited manifest and entry and plants their public key."""
    stranger = Ed25519PrivateKey.generate()
    (registry_path / "keys" / f"{key_id(stranger)}.pub").write_bytes(public_key_pem(stranger))
    lines = _lines(registry_path)
    data = json.loads(lines[2])
    manifest = data["payload"]["manifest"]
    manifest["metrics"]["accuracy"] = 0.99
    data["payload"]["manifest_hash"] = canonical_sha256(manifest)
    data["payload"]["manifest_sig"] = sign(stranger, MANIFEST_DOMAIN, data["payload"]["manifest_hash"].encode())
    resealed = seal(seq=3, time=data["time"], kind=data["kind"], payload=data["payload"],
                    prev=data["prev"], signing_key=stranger)
    lines[2] = resealed.to_line()
    _write_lines(registry_path, lines)
    report = verify_registry(registry_path)
    assert (report.problems[0].where, report.problems[0].check) == ("audit entry 3", "signature")
    assert "not a key of this registry" in report.problems[0].message


def test_replaced_public_key_file_is_named(registry_path: Path) -> None:
    key_file = next((registry_path / "keys").glob("*.pub"))
    key_file.write_bytes(public_key_pem(Ed25519PrivateKey.generate()))
    problem = _first_problem(registry_path)
    assert problem.where == f"keys/{key_file.name}" and problem.check == "keys"


def test_whole_registry_re_signed_by_a_stranger_fails_expected_key(registry_path: Path, tmp_path: Path) -> None:
    own_key = verify_registry(registry_path).key_ids[0]
    forged = tmp_path / "forged"
    with Registry.open(forged, signing_key_path=tmp_path / "stranger.pem") as reg:
        publish_sample(reg)
    assert verify_registry(forged).ok  # self-consistent: only pinning the key catches it
    report = verify_registry(forged, expected_key=own_key[:16])
    assert report.problems[0].check == "genesis"


def test_rewritten_head_is_named(registry_path: Path) -> None:
    head = json.loads((registry_path / "head.json").read_text())
    head["seq"] = 2
    (registry_path / "head.json").write_text(json.dumps(head))
    problem = _first_problem(registry_path)
    assert problem.where == "head.json" and problem.check == "head"


def test_deleted_catalogue_row_is_named(registry_path: Path) -> None:
    db = sqlite3.connect(registry_path / "catalogue.sqlite")
    db.execute("DROP TRIGGER versions_kept")
    db.execute("DELETE FROM versions WHERE number = 2")
    db.commit()
    db.close()
    problem = _first_problem(registry_path)
    assert problem.where == "version 2 (audit entry 3)" and "missing" in problem.message


def test_catalogue_refuses_updates_and_deletes(registry_path: Path) -> None:
    db = sqlite3.connect(registry_path / "catalogue.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db.execute("UPDATE versions SET round = 9 WHERE number = 1")
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        db.execute("DELETE FROM versions")
    db.close()


# -- the writer refuses to publish onto a tampered log (it checks the log's last entry every time) --

def _forged_after(previous: bytes, seq: int) -> bytes:
    """A line chained to ``previous`` (its hash links), claiming the registry's key, signed by a stranger."""
    prev = json.loads(previous)
    forged = seal(seq=seq, time=prev["time"], kind="study.note", payload={"forged": True}, prev=prev["hash"],
                  signing_key=Ed25519PrivateKey.generate())
    record = {**forged.to_dict(), "key": prev["key"]}
    entry = AuditEntry.from_dict(record)
    return canonical_json({**record, "hash": entry.computed_hash()}) + b"\n"


@pytest.mark.parametrize("tamper", ["append-with-an-applied-seq", "append-with-seq-1", "append-with-the-next-seq",
                                    "replace-the-last-line"])
def test_the_writer_publishes_nothing_onto_a_log_tampered_without_its_key(registry_path: Path, tmp_path: Path,
                                                                          tamper: str) -> None:
    """Attack: with no signing key, add or replace the log's last line so that its hash chain holds. The
    writer (``Registry.open`` and every publish) checks the last entry's seq against its line and its
    signature, so it refuses, and neither re-signs the head onto the forged line nor publishes after it."""
    lines = _lines(registry_path)
    count = len(lines)
    if tamper == "replace-the-last-line":
        lines[-1] = _forged_after(lines[-2], seq=count)
    else:
        seq = {"append-with-an-applied-seq": count, "append-with-seq-1": 1, "append-with-the-next-seq": count + 1}[tamper]
        lines.append(_forged_after(lines[-1], seq=seq))
    _write_lines(registry_path, lines)
    tampered = (registry_path / "audit.jsonl").read_bytes(), (registry_path / "head.json").read_bytes()
    with pytest.raises(IntegrityError, match=r"(has seq \d+|signature does not verify); .*nothing was written\. Run `flsuite audit verify"):
        with Registry.open(registry_path, signing_key_path=tmp_path / "coordinator.pem", clock=StepClock()) as reg:
            publish_sample(reg, round=99)
    assert ((registry_path / "audit.jsonl").read_bytes(), (registry_path / "head.json").read_bytes()) == tampered


def test_the_writer_refuses_a_last_entry_replaced_after_its_head_was_signed(registry_path: Path, tmp_path: Path) -> None:
    """Attack: replace the log's last entry by another one, properly chained and signed (by someone who holds
    the key, or a writer that bypassed the lock), after the head was signed for the original. The seq still
    matches, the signature verifies; the head's hash does not, and the writer refuses rather than going on."""
    from flsuite.audit.keys import load_signing_key

    key = load_signing_key(tmp_path / "coordinator.pem")
    lines = _lines(registry_path)
    original = json.loads(lines[-1])
    replaced = seal(seq=original["seq"], time=original["time"], kind="study.note", payload={"replaced": True},
                    prev=original["prev"], signing_key=key)
    _write_lines(registry_path, [*lines[:-1], replaced.to_line()])
    with pytest.raises(IntegrityError, match="head.json names audit entry"):
        with Registry.open(registry_path, signing_key_path=tmp_path / "coordinator.pem", clock=StepClock()) as reg:
            publish_sample(reg, round=99)
