"""The offline audit of a registry folder: every blob hash, signature, link, and the signed head.

`verify_registry` needs no private key and changes nothing on disk. It returns a
`VerifyReport` listing each problem (naming the entry, version or file and the check
that failed) and notes about harmless leftovers of interrupted writes.

What counts as committed: an audit log line (with its newline). The catalogue may lag
behind the log after a crash (noted, replayed by the next writer) but never lead it; a
torn last line without newline and blobs no version names are leftovers, not versions.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flsuite.audit.canonical import canonical_sha256, sha256_hex
from flsuite.audit.chain import Problem, verify_chain
from flsuite.audit.head import read_head
from flsuite.audit.keys import key_id, load_public_key_pem, signature_valid
from flsuite.audit.log import AuditEntry, AuditLog
from flsuite.errors import FlsuiteError
from flsuite.registry.aliases import alias_stack
from flsuite.registry.catalogue import ALIAS_KIND, VERSION_KIND, Catalogue
from flsuite.registry.integrity import open_blob
from flsuite.registry.layout import Layout
from flsuite.registry.manifest import MANIFEST_DOMAIN
from flsuite.storage.durable import TEMP_PREFIX

__all__ = ["VerifyReport", "verify_registry"]

CHECKPOINT_KIND = "log.checkpoint"


@dataclass
class VerifyReport:
    """The verdict of one audit: ok only when `problems` is empty."""

    registry: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    registry_id: str | None = None
    key_ids: list[str] = field(default_factory=list)
    entries: int = 0
    versions: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    blobs_checked: int = 0
    blobs_decrypted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self) -> str:
        if self.ok:
            return (f"VERIFIED: {self.entries} audit entries, {self.versions} versions, "
                    f"{self.blobs_checked} blobs; signed by key {', '.join(k[:16] for k in self.key_ids)}")
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"FAILED: {self.problems[0]}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "verdict": self.verdict(), "registry": self.registry,
                "registry_id": self.registry_id, "key_ids": self.key_ids, "entries": self.entries,
                "versions": self.versions, "head": {"seq": self.head_seq, "hash": self.head_hash},
                "blobs_checked": self.blobs_checked, "blobs_decrypted": self.blobs_decrypted,
                "problems": [p.to_dict() for p in self.problems], "notes": self.notes}


def verify_registry(path: str | Path, *, encryption_key: bytes | None = None,
                    expected_key: str | None = None, check_blobs: bool = True) -> VerifyReport:
    """Audit the registry at `path` offline; with `encryption_key` also decrypt and check blobs."""
    layout = Layout(Path(path).absolute())
    report = VerifyReport(registry=str(layout.root))
    if not layout.is_registry():
        report.problems.append(Problem(str(layout.root), "layout", "not an flsuite registry "
                                       "(registry.json or audit.jsonl missing)"))
        return report
    keys = _load_keys(layout, report)
    lines, torn = AuditLog(layout.log).read_lines()
    if torn:
        report.notes.append(f"a torn, uncommitted last line ({len(torn)} bytes) follows entry "
                            f"{len(lines)}: an interrupted write; the next writer removes it")
    chain = verify_chain(lines, public_keys=keys, expected_key=expected_key)
    report.problems.extend(chain.problems)
    report.entries = len(lines)
    report.key_ids = sorted(chain.trusted_keys)
    trusted = {k: v for k, v in keys.items() if k in chain.trusted_keys}
    _check_head(layout, chain.entries, trusted, report)
    state = _replay(chain.entries, trusted, report)
    report.versions = len(state.versions)
    _check_catalogue(layout, state, len(lines), report)
    if check_blobs:
        _check_blobs(layout, state, encryption_key, report)
    return report


@dataclass
class _State:
    registry_id: str | None = None
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)  # number -> payload + seq
    moves: list[dict[str, Any]] = field(default_factory=list)


def _load_keys(layout: Layout, report: VerifyReport) -> dict[str, Any]:
    keys = {}
    for file in sorted(layout.keys.glob("*.pub")):
        key = load_public_key_pem(file.read_bytes())
        if key is None:
            report.problems.append(Problem(f"keys/{file.name}", "keys", "not an Ed25519 public key"))
        elif key_id(key) != file.stem:
            report.problems.append(Problem(f"keys/{file.name}", "keys", "file name is not the "
                                           "key's id (the key was replaced)"))
        else:
            keys[file.stem] = key
    return keys


def _check_head(layout: Layout, entries: list[AuditEntry | None], keys: dict[str, Any],
                report: VerifyReport) -> None:
    try:
        head = read_head(layout.head)
    except ValueError as exc:
        report.problems.append(Problem("head.json", "head", f"malformed ({exc})"))
        return
    if head is None:
        report.problems.append(Problem("head.json", "head", "the signed head is missing"))
        return
    report.head_seq, report.head_hash = head.seq, head.hash
    key = keys.get(head.key)
    if key is None or not head.signature_valid(key):
        report.problems.append(Problem("head.json", "head", "signature does not verify with a "
                                       "key of this registry"))
        return
    genesis = entries[0] if entries else None
    if genesis is not None and genesis.payload.get("registry_id") != head.registry_id:
        report.problems.append(Problem("head.json", "head", "names another registry"))
    if head.seq > len(entries):
        report.problems.append(Problem(f"audit entry {len(entries) + 1}", "truncation",
                                       f"missing: the signed head names entry {head.seq} but the "
                                       f"log ends at entry {len(entries)} (truncated)"))
    elif (entry := entries[head.seq - 1]) is not None and entry.hash != head.hash:
        report.problems.append(Problem(f"audit entry {head.seq}", "head", "does not match the "
                                       "signed head (the log was rewritten)"))
    elif head.seq < len(entries):
        report.notes.append(f"the log runs {len(entries) - head.seq} entries past the signed head "
                            "(a writer stopped before re-signing it; the next writer does)")


def _replay(entries: list[AuditEntry | None], keys: dict[str, Any], report: VerifyReport) -> _State:
    state = _State()
    for index, entry in enumerate(entries):
        if entry is None:
            continue
        where = f"audit entry {entry.seq}"
        try:
            if entry.kind == "registry.created":
                state.registry_id = entry.payload.get("registry_id")
                report.registry_id = state.registry_id
            elif entry.kind == VERSION_KIND:
                _replay_version(entry, where, state, keys, report)
            elif entry.kind == ALIAS_KIND:
                _replay_move(entry, where, state, report)
            elif entry.kind == CHECKPOINT_KIND:
                before = entries[index - 1] if index else None
                p = entry.payload
                if before is None or p.get("through_seq") != before.seq or p.get("through_hash") != before.hash:
                    report.problems.append(Problem(where, "checkpoint", "does not name the entry before it"))
                elif p.get("versions") != len(state.versions):
                    report.problems.append(Problem(where, "checkpoint", f"records {p.get('versions')} "
                                                   f"versions, the log holds {len(state.versions)}"))
        except (KeyError, TypeError, AttributeError) as exc:
            report.problems.append(Problem(where, "format", f"malformed {entry.kind} payload ({exc!r})"))
    return state


def _replay_version(entry: AuditEntry, where: str, state: _State, keys: dict[str, Any],
                    report: VerifyReport) -> None:
    p, manifest = entry.payload, entry.payload["manifest"]
    expected = max(state.versions, default=0) + 1
    if canonical_sha256(manifest) != p["manifest_hash"]:
        report.problems.append(Problem(where, "manifest", "manifest does not match its hash"))
    elif not any(signature_valid(k, MANIFEST_DOMAIN, p["manifest_hash"].encode(), p["manifest_sig"])
                 for k in keys.values()):
        report.problems.append(Problem(where, "signature", "manifest signature does not verify"))
    if p["version"] != expected or manifest["version"] != expected:
        report.problems.append(Problem(where, "manifest", f"publishes version {p['version']} "
                                       f"(manifest: {manifest['version']}), expected {expected}"))
    if manifest["registry_id"] != state.registry_id:
        report.problems.append(Problem(where, "manifest", "manifest belongs to another registry"))
    if manifest["parent"] is not None and manifest["parent"] not in state.versions:
        report.problems.append(Problem(where, "lineage", f"parent {manifest['parent']} is not an "
                                       "earlier version"))
    state.versions[p["version"]] = {**p, "seq": entry.seq}


def _replay_move(entry: AuditEntry, where: str, state: _State, report: VerifyReport) -> None:
    p = entry.payload
    stack = alias_stack(state.moves, p["alias"])
    expected_to = stack[-2] if p["action"] == "rollback" and len(stack) >= 2 else p["to_version"]
    if p["action"] not in ("promote", "rollback") or p["to_version"] not in state.versions \
            or p["from_version"] != (stack[-1] if stack else None) or p["to_version"] != expected_to:
        report.problems.append(Problem(where, "alias", f"move of alias {p['alias']!r} is not "
                                       "consistent with its history"))
    state.moves.append({**p, "seq": entry.seq, "time": entry.time})


def _check_catalogue(layout: Layout, state: _State, log_length: int, report: VerifyReport) -> None:
    try:
        catalogue = Catalogue(layout.catalogue, writable=False)
        try:
            applied, rows, moves = catalogue.applied_seq(), catalogue.rows(), catalogue.alias_moves()
        finally:
            catalogue.close()
    except (sqlite3.Error, ValueError) as exc:
        report.problems.append(Problem("catalogue.sqlite", "catalogue", f"cannot be read ({exc})"))
        return
    if applied > log_length:
        report.problems.append(Problem(f"audit entry {log_length + 1}", "truncation", f"missing: the "
                                       f"catalogue has applied entry {applied} (the log was truncated)"))
    by_number = {row["number"]: row for row in rows}
    for number, logged in sorted(state.versions.items()):
        row = by_number.pop(number, None)
        where = f"version {number} (audit entry {logged['seq']})"
        if row is None:
            if logged["seq"] <= applied:
                report.problems.append(Problem(where, "catalogue", "missing from the catalogue"))
            else:
                report.notes.append(f"{where} is committed in the log, not yet in the catalogue "
                                    "(an interrupted publish; the next writer replays it)")
            continue
        if (json.loads(row["manifest"]) != logged["manifest"] or row["manifest_hash"] != logged["manifest_hash"]
                or row["manifest_sig"] != logged["manifest_sig"] or row["seq"] != logged["seq"]
                or row["blob_sha256"] != logged["manifest"]["blob"]["sha256"]
                or row["stored_sha256"] != logged["manifest"]["blob"]["stored_sha256"]):
            report.problems.append(Problem(where, "catalogue", "the catalogue's manifest differs "
                                           "from the signed audit entry (edited or swapped)"))
    for number in sorted(by_number):
        report.problems.append(Problem(f"version {number}", "catalogue", "in the catalogue but "
                                       "not published in the audit log"))
    logged_moves = [(m["seq"], m["alias"], m["action"], m["from_version"], m["to_version"])
                    for m in state.moves if m["seq"] <= applied]
    rows_moves = [(m["seq"], m["alias"], m["action"], m["from_version"], m["to_version"]) for m in moves]
    if logged_moves != rows_moves:
        report.problems.append(Problem("catalogue.sqlite", "catalogue", "alias moves differ from "
                                       "the audit log"))


def _check_blobs(layout: Layout, state: _State, encryption_key: bytes | None,
                 report: VerifyReport) -> None:
    referenced: set[str] = set()
    for number, logged in sorted(state.versions.items()):
        manifest = logged["manifest"]
        blob = manifest["blob"]
        referenced.add(blob["sha256"])
        where = f"version {number} (audit entry {logged['seq']})"
        path = layout.blob(blob["sha256"])
        if not path.is_file():
            report.problems.append(Problem(where, "blob", f"blob {blob['sha256'][:16]} is missing"))
            continue
        if blob["encryption"] is not None and encryption_key is not None:
            try:
                open_blob(layout, manifest, encryption_key=encryption_key)
                report.blobs_decrypted += 1
            except FlsuiteError as exc:
                report.problems.append(Problem(where, "blob", str(exc)))
                continue
        elif sha256_hex(path.read_bytes()) != blob["stored_sha256"]:
            report.problems.append(Problem(where, "blob", f"blob {blob['sha256'][:16]} does not "
                                           "match its signed hash (altered)"))
            continue
        report.blobs_checked = len(referenced)
    for file in sorted(layout.blobs.iterdir()) if layout.blobs.is_dir() else []:
        if file.name.startswith(TEMP_PREFIX):
            report.notes.append(f"blobs/sha256/{file.name}: temporary file of an interrupted publish")
        elif file.name not in referenced:
            report.notes.append(f"blobs/sha256/{file.name[:16]}: no version names this blob (an "
                                "interrupted publish)")
