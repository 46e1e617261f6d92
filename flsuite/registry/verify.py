"""The offline audit of a registry folder: every blob hash, signature, link, and the signed head.

`verify_registry` needs no private key and changes nothing on disk. It returns a
`VerifyReport` listing each problem (naming the entry, version or file and the check
that failed) and notes about harmless leftovers of interrupted writes.

What counts as committed: an audit log line (with its newline). The catalogue is a cache
of the log: its rows are rebuilt from the log and compared one by one. It may lag behind
the log only for entries past the signed head (a writer killed between its append and its
head update: noted, replayed by the next writer), never lead it, and never lag the signed
head (a writer applies an entry to the catalogue before it signs the head naming it). A
torn last line without newline and blobs no version names are leftovers, not versions.

`expected_key` pins the coordinator's key: every entry, every manifest and the signed
head must then be signed by that key. `since` is a head the auditor verified before: the
log must be that log or a continuation of it (not older, not diverging).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flsuite.audit.canonical import canonical_sha256, sha256_hex
from flsuite.audit.chain import Problem, check_pin, verify_chain
from flsuite.audit.head import SignedHead, continuation_problem, read_head
from flsuite.audit.keys import key_id, load_public_key_pem, signature_valid
from flsuite.audit.log import AuditEntry, AuditLog
from flsuite.errors import FlsuiteError
from flsuite.registry.aliases import alias_stack
from flsuite.registry.catalogue import (
    ALIAS_KIND,
    VERSION_KIND,
    Catalogue,
    differences,
    expected_state,
)
from flsuite.registry.integrity import open_blob, public_keys
from flsuite.registry.layout import Layout
from flsuite.registry.manifest import MANIFEST_DOMAIN
from flsuite.storage.durable import TEMP_PREFIX

__all__ = ["VerifyReport", "verify_registry", "catalogue_disagreement"]

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
    pinned_key: str | None = None  # the genesis key the pin matched (None: no pin, or it matched none)
    pin: str | None = None  # the expected key this verification was made under, as given (lower case)
    since_seq: int | None = None
    signed_head: SignedHead | None = None  # the verified head.json (None when it did not verify)
    published: dict[int, dict[str, Any]] = field(default_factory=dict)  # number -> logged payload + seq

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
                "pinned_key": self.pinned_key, "since_seq": self.since_seq,
                "blobs_checked": self.blobs_checked, "blobs_decrypted": self.blobs_decrypted,
                "problems": [p.to_dict() for p in self.problems], "notes": self.notes}


def verify_registry(path: str | Path, *, encryption_key: bytes | None = None,
                    expected_key: str | None = None, since: SignedHead | None = None,
                    check_blobs: bool = True) -> VerifyReport:
    """Audit the registry at `path` offline; with `encryption_key` also decrypt and check blobs.

    ConfigError for a malformed `expected_key`; everything else is a problem in the report.
    """
    pin = None if expected_key is None else check_pin(expected_key)
    layout = Layout(Path(path).absolute())
    report = VerifyReport(registry=str(layout.root), pin=pin)
    if not layout.is_registry():
        report.problems.append(Problem(str(layout.root), "layout", "not an flsuite registry "
                                       "(registry.json or audit.jsonl missing)"))
        return report
    keys = _load_keys(layout, report)
    lines, torn = AuditLog(layout.log).read_lines()
    if torn:
        report.notes.append(f"a torn, uncommitted last line ({len(torn)} bytes) follows entry "
                            f"{len(lines)}: an interrupted write; the next writer removes it")
    chain = verify_chain(lines, public_keys=keys, expected_key=pin)
    report.problems.extend(chain.problems)
    report.entries = len(lines)
    report.key_ids = sorted(chain.trusted_keys)
    if pin is not None and chain.trusted_keys:
        report.pinned_key = min(chain.trusted_keys)
    trusted = {k: v for k, v in keys.items() if k in chain.trusted_keys}
    head = _check_head(layout, chain.entries, trusted, report)
    report.signed_head = head
    state = _replay(chain.entries, trusted, report)
    report.versions = len(state.versions)
    report.published = state.versions
    _check_catalogue(layout, chain.entries, head, report)
    if since is not None:
        _check_since(since, chain.entries, state.registry_id, trusted, report)
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
                report: VerifyReport) -> SignedHead | None:
    """The signed head when its signature verifies with a trusted (under a pin: the pinned) key."""
    try:
        head = read_head(layout.head)
    except ValueError as exc:
        report.problems.append(Problem("head.json", "head", f"malformed ({exc})"))
        return None
    if head is None:
        report.problems.append(Problem("head.json", "head", "the signed head is missing"))
        return None
    report.head_seq, report.head_hash = head.seq, head.hash
    key = keys.get(head.key)
    if key is None or not head.signature_valid(key):
        which = "the expected key" if report.pinned_key else "a key of this registry"
        report.problems.append(Problem("head.json", "head", f"signature does not verify with {which}"))
        return None
    if head.seq < 1:
        report.problems.append(Problem("head.json", "head", f"names entry {head.seq}"))
        return None
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
    return head


def _check_since(saved: SignedHead, entries: list[AuditEntry | None], registry_id: str | None,
                 keys: dict[str, Any], report: VerifyReport) -> None:
    """Rollback detection: the log must be the one of `saved` (a head verified before) or
    continue it."""
    report.since_seq = saved.seq
    key = keys.get(saved.key)
    if key is None or not saved.signature_valid(key):
        which = "the expected key" if report.pinned_key else "a key of this registry"
        report.problems.append(Problem("saved head", "since", f"its signature does not verify "
                                       f"with {which} (another registry's head, or edited)"))
        return
    problem = continuation_problem(saved, entries, registry_id)
    if problem is not None:
        report.problems.append(Problem(problem[0], "since", problem[1]))


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


def _check_catalogue(layout: Layout, entries: list[AuditEntry | None], head: SignedHead | None,
                     report: VerifyReport) -> None:
    """Rebuild the catalogue from the log up to its applied_seq and compare every row."""
    try:
        catalogue = Catalogue(layout.catalogue, writable=False)
        try:
            actual = catalogue.state()
        finally:
            catalogue.close()
    except (sqlite3.Error, ValueError) as exc:
        report.problems.append(Problem("catalogue.sqlite", "catalogue", f"cannot be read ({exc})"))
        return
    applied, log_length = actual.applied_seq, len(entries)
    if applied > log_length:
        report.problems.append(Problem(f"audit entry {log_length + 1}", "truncation", f"missing: the "
                                       f"catalogue has applied entry {applied} (the log was truncated)"))
    if head is not None and applied < head.seq <= log_length:
        report.problems.append(Problem("catalogue applied_seq", "catalogue", f"is {applied}, behind "
                                       f"the signed head (entry {head.seq}): committed entries were "
                                       "removed from the catalogue or applied_seq was lowered"))
    try:
        expected = expected_state(e for e in entries[:applied] if e is not None)
    except (KeyError, TypeError, AttributeError):
        return  # a malformed payload: _replay has named the entry
    if applied <= log_length:
        expected.applied_seq = applied
    for where, message in differences(expected, actual):
        if where == "catalogue applied_seq" and applied > log_length:
            continue  # reported as truncation above
        report.problems.append(Problem(where, "catalogue", message))
    for entry in entries[applied:]:
        if entry is not None and entry.kind in (VERSION_KIND, ALIAS_KIND):
            what = (f"version {entry.payload.get('version')}" if entry.kind == VERSION_KIND
                    else f"alias move of {entry.payload.get('alias')!r}")
            report.notes.append(f"{what} (audit entry {entry.seq}) is committed in the log, not yet "
                                "in the catalogue (an interrupted write; the next writer replays it)")


def catalogue_disagreement(layout: Layout, catalogue: Catalogue, *, thorough: bool = True) -> str | None:
    """Why `catalogue` is not a faithful cache of the registry's audit log, or None when it is.

    Always: the signed head verifies with a key the genesis names, and the catalogue's
    applied_seq lies between that head and the log's end (an empty catalogue, which a
    writer rebuilds, is allowed when not `thorough`). `thorough` (readers) also checks the
    log's chain and signatures and that the catalogue holds exactly the rows the log gives
    up to applied_seq; writers skip that O(log) work before each write, `flsuite audit
    verify` and every reader do it. Reads head, catalogue and log in the reverse of a
    writer's order (log, catalogue, head), so a concurrent writer never makes a sound
    registry look inconsistent.
    """
    try:
        head = read_head(layout.head)
    except ValueError as exc:
        return f"head.json: malformed ({exc})"
    try:
        actual = catalogue.state() if thorough else None
        applied = actual.applied_seq if actual is not None else catalogue.applied_seq()
    except (sqlite3.Error, ValueError) as exc:
        return f"catalogue.sqlite: cannot be read ({exc})"
    lines, _ = AuditLog(layout.log).read_lines()
    keys = public_keys(layout)
    if thorough:
        chain = verify_chain(lines, public_keys=keys)
        if chain.problems:
            return str(chain.problems[0])
        trusted = chain.trusted_keys
    else:
        try:
            trusted = frozenset(json.loads(lines[0])["payload"]["keys"]) if lines else frozenset()
        except (ValueError, KeyError, TypeError):
            return "audit entry 1: unreadable genesis entry"
    if head is None or head.key not in trusted or head.key not in keys \
            or not head.signature_valid(keys[head.key]):
        return "head.json: missing, or its signature does not verify with a key of this registry"
    if not thorough and applied == 0 and catalogue.latest_number() is None and not catalogue.alias_moves():
        return None  # an empty catalogue: the writer rebuilds it from the log
    if applied > len(lines):
        return f"catalogue applied_seq: is {applied}, but the log ends at entry {len(lines)}"
    if applied < head.seq:
        return (f"catalogue applied_seq: is {applied}, behind the signed head (entry {head.seq}): "
                "committed entries were removed from the catalogue or applied_seq was lowered")
    if actual is None:
        return None
    try:
        expected = expected_state(e for e in chain.entries[:applied] if e is not None)
    except (KeyError, TypeError, AttributeError) as exc:
        return f"audit log: a malformed entry ({exc!r})"
    found = differences(expected, actual)
    return None if not found else f"{found[0][0]}: {found[0][1]}"


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
