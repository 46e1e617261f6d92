"""The model registry: publish signed versions, record study events, promote and roll back.

`Registry.open(path, signing_key_path=...)` gives a writer; without a signing key it is
read-only (what an auditor or a reader needs). Every write takes the folder's fcntl lock,
brings the catalogue up to the log, appends one signed log entry (the commit point),
applies it to the catalogue and re-signs the head. See `flsuite.registry.layout`.

The catalogue is a cache of the log: a reader opening the registry checks it row by row
against the verified log, a writer before each write checks that it is neither behind the
signed head nor ahead of the log; both refuse (IntegrityError) a catalogue that disagrees,
so that no alias or version is read from an edited cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from flsuite.audit.canonical import canonical_json, canonical_sha256, sha256_hex
from flsuite.audit.head import read_head, write_head
from flsuite.audit.keys import (
    key_id,
    load_or_create_signing_key,
    load_signing_key,
    public_key_pem,
    sign,
)
from flsuite.audit.log import AuditEntry, AuditLog
from flsuite.errors import IntegrityError, PromotionRefused, ReadOnlyRegistry, RegistryError
from flsuite.registry import integrity
from flsuite.registry.aliases import alias_stack, check_alias_name, current_aliases
from flsuite.registry.catalogue import ALIAS_KIND, VERSION_KIND, Catalogue
from flsuite.registry.encryption import ALGORITHM, encrypt_blob, encryption_key_id
from flsuite.registry.layout import REGISTRY_FORMAT, Layout
from flsuite.registry.manifest import MANIFEST_DOMAIN, VersionInfo, build_manifest
from flsuite.registry.policy import PromotionPolicy
from flsuite.registry.verify import catalogue_disagreement
from flsuite.registry.weights import parse_weights, serialise_weights, tensor_summary
from flsuite.storage.durable import TEMP_PREFIX, write_atomic

__all__ = ["Registry", "AuditRecord"]

GENESIS_KIND = "registry.created"
CHECKPOINT_KIND = "log.checkpoint"
REFUSED_KIND = "promotion.refused"
_RESERVED = {GENESIS_KIND, VERSION_KIND, ALIAS_KIND, CHECKPOINT_KIND, REFUSED_KIND}
_KIND = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
AuditRecord = AuditEntry


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """A registry folder; use `Registry.open`, and close it (or use `with`)."""

    def __init__(self, layout: Layout, *, signing_key: Any, encryption_key: bytes | None,
                 clock: Callable[[], datetime], checkpoint_every: int) -> None:
        self._layout = layout
        self._key = signing_key
        self._encryption_key = encryption_key
        self._clock = clock
        self._checkpoint_every = checkpoint_every
        self._log = AuditLog(layout.log)
        self._catalogue = Catalogue(layout.catalogue, writable=signing_key is not None)
        self._fault_hook: Callable[[str], None] | None = None  # tests: crash at named steps
        info = json.loads(layout.info.read_text())
        self.registry_id: str = info["registry_id"]

    # -- opening --
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, signing_key_path: str | os.PathLike[str] | None = None,
             encryption_key: bytes | None = None, create: bool = True,
             clock: Callable[[], datetime] | None = None, checkpoint_every: int = 1000) -> Registry:
        """Open (with a signing key: create if absent) the registry at `path`.

        Without `signing_key_path` the registry is read-only and nothing on disk changes.
        With `create=False` neither the registry nor the key file is created.
        `encryption_key` (32 bytes) encrypts new blobs and opens encrypted ones.
        """
        layout = Layout(Path(path).absolute())
        if encryption_key is not None:
            encryption_key_id(encryption_key)  # validates length and type
        if not isinstance(checkpoint_every, int) or checkpoint_every < 2:
            raise RegistryError(f"checkpoint_every={checkpoint_every!r} must be an integer >= 2")
        clock = clock or _utc_now
        signing_key = None
        if signing_key_path is not None:
            key_path = Path(signing_key_path).absolute()
            if key_path.is_relative_to(layout.root):
                raise RegistryError(f"signing key {key_path} lies inside the registry folder; keep "
                                    "the private key outside it (the folder is handed to auditors)")
            signing_key = load_or_create_signing_key(key_path) if create else load_signing_key(key_path)
            if create and not layout.root.exists() or (layout.root.is_dir() and not any(layout.root.iterdir())):
                _create(layout, signing_key, clock)
        if not layout.root.exists():
            raise RegistryError(f"no registry at {layout.root}; check --registry (or "
                                "FLSUITE_REGISTRY), or publish to it with a signing key first")
        if not layout.is_registry():
            raise RegistryError(f"{layout.root} is not an flsuite registry (no registry.json and "
                                "audit.jsonl); point --registry at a registry folder")
        registry = cls(layout, signing_key=signing_key, encryption_key=encryption_key, clock=clock,
                       checkpoint_every=checkpoint_every)
        try:
            if signing_key is not None:
                registry._check_signing_key()
                with registry._locked():
                    registry._reconcile()
            else:
                registry._check_cache(thorough=True)
        except BaseException:
            registry.close()
            raise
        return registry

    def close(self) -> None:
        self._catalogue.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._layout.root

    @property
    def key_id(self) -> str | None:
        """The signing key's id (None when read-only)."""
        return None if self._key is None else key_id(self._key)

    # -- publishing --
    def publish(self, weights: Mapping[str, np.ndarray], *, run_id: str, study_id: str, round: int,
                config_hash: str, code_digest: str, sites: Sequence[str], metrics: Mapping[str, float],
                dp_certificate: Mapping[str, Any] | None, parent: int | None = None) -> VersionInfo:
        """Store `weights` as the next version and sign its manifest; returns the new version.

        `parent` defaults to the latest version of the same run. The whole version is
        committed by one audit log line; a crash before it leaves no version.
        """
        self._require_writer("publish")
        plaintext = serialise_weights(weights)
        address = sha256_hex(plaintext)
        tensors = tensor_summary(weights)
        with self._locked():
            self._reconcile()
            if parent is None:
                parent = self._catalogue.latest_number(run_id) if isinstance(run_id, str) else None
            elif self._catalogue.version(parent) is None:
                raise RegistryError(f"publish: parent={parent} is not a version of this registry")
            blob = self._store_blob(plaintext, address)
            blob["tensors"] = tensors
            number = (self._catalogue.latest_number() or 0) + 1
            manifest = build_manifest(
                registry_id=self.registry_id, version=number, parent=parent, run_id=run_id,
                study_id=study_id, round=round, config_hash=config_hash, code_digest=code_digest,
                sites=sites, metrics=metrics, dp_certificate=dp_certificate, blob=blob,
                created_at=self._now())
            manifest_hash = canonical_sha256(manifest)
            payload = {"version": number, "manifest": manifest, "manifest_hash": manifest_hash,
                       "manifest_sig": sign(self._key, MANIFEST_DOMAIN, manifest_hash.encode())}
            entry = self._append(VERSION_KIND, payload)
        return self.version(number) or VersionInfo.from_manifest(
            manifest, manifest_hash=manifest_hash, manifest_sig=payload["manifest_sig"], seq=entry.seq)

    def record(self, kind: str, payload: Mapping[str, Any]) -> AuditEntry:
        """Append a study event (e.g. 'study.started', 'site.refused') to the audit log."""
        self._require_writer("record")
        if not isinstance(kind, str) or not _KIND.match(kind) or kind in _RESERVED:
            raise RegistryError(f"record: kind {kind!r} must be a dotted lower-case name such as "
                                f"'study.started', and not one of {sorted(_RESERVED)}")
        try:
            body = json.loads(canonical_json(dict(payload)))
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"record {kind}: payload is not plain JSON ({exc})") from None
        with self._locked():
            return self._append(kind, body)

    # -- reading --
    def versions(self, run_id: str | None = None) -> list[VersionInfo]:
        return self._catalogue.versions(run_id)

    def version(self, ref: int | str) -> VersionInfo:
        """A version by number, or by alias name."""
        number = self.resolve(ref)
        info = self._catalogue.version(number)
        if info is None:
            raise RegistryError(f"version {ref!r} does not exist; `flsuite registry list` shows them")
        return info

    def latest(self, run_id: str | None = None) -> VersionInfo | None:
        number = self._catalogue.latest_number(run_id)
        return None if number is None else self.version(number)

    def resolve(self, ref: int | str) -> int:
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref
        if isinstance(ref, str) and ref.strip().isdigit():
            return int(ref)
        aliases = self.aliases()
        if isinstance(ref, str) and ref in aliases:
            return aliases[ref]
        raise RegistryError(f"version {ref!r} is neither a version number nor an alias "
                            f"(aliases: {sorted(aliases) or 'none'})")

    def aliases(self) -> dict[str, int]:
        return current_aliases(self._catalogue.alias_moves())

    def alias_history(self, alias: str) -> list[dict[str, Any]]:
        return self._catalogue.alias_moves(alias)

    def load_weights(self, ref: int | str) -> dict[str, np.ndarray]:
        """The weights of a version, after checking every hash (and decrypting if needed)."""
        info = self.version(ref)
        plaintext = integrity.open_blob(self._layout, info.manifest, encryption_key=self._encryption_key)
        return parse_weights(plaintext, source=f"version {info.number}")

    def export(self, ref: int | str, out: str | os.PathLike[str]) -> Path:
        """Write the version's plaintext safetensors to `out` and its signed manifest beside it."""
        info = self.version(ref)
        out = Path(out)
        sidecar = out.with_name(out.name + ".manifest.json")
        for target in (out, sidecar):
            if target.exists():
                raise RegistryError(f"export: {target} exists; choose another --out or remove it")
        plaintext = integrity.open_blob(self._layout, info.manifest, encryption_key=self._encryption_key)
        write_atomic(out, plaintext)
        write_atomic(sidecar, canonical_json({
            "manifest": info.manifest, "manifest_hash": info.manifest_hash,
            "manifest_sig": info.manifest_sig, "signature_domain": MANIFEST_DOMAIN,
            "public_keys": self._signer_pem()}) + b"\n")
        return out

    # -- aliases --
    def promote(self, ref: int | str, alias: str, policy: PromotionPolicy | None = None) -> dict[str, Any]:
        """Point `alias` at a version that verifies and meets `policy`; returns the move."""
        self._require_writer("promote")
        check_alias_name(alias)
        policy = policy or PromotionPolicy()
        with self._locked():
            self._reconcile()
            info = self.version(ref)
            integrity.check_version(self._layout, info, log=self._log,
                                    encryption_key=self._encryption_key)
            reasons = policy.unmet(info.manifest)
            if reasons:
                self._append(REFUSED_KIND, {"alias": alias, "version": info.number,
                                            "policy": policy.to_dict(), "reasons": reasons})
                raise PromotionRefused(f"promote version {info.number} to {alias!r} refused: "
                                       + "; ".join(reasons), reasons=reasons)
            stack = alias_stack(self._catalogue.alias_moves(), alias)
            if stack and stack[-1] == info.number:
                raise RegistryError(f"alias {alias!r} already points at version {info.number}")
            move = {"alias": alias, "action": "promote", "from_version": stack[-1] if stack else None,
                    "to_version": info.number, "policy": policy.to_dict()}
            entry = self._append(ALIAS_KIND, move)
        return {**move, "seq": entry.seq, "time": entry.time}

    def rollback(self, alias: str) -> dict[str, Any]:
        """Move `alias` back to the version it pointed at before its last promotion."""
        self._require_writer("rollback")
        check_alias_name(alias)
        with self._locked():
            self._reconcile()
            stack = alias_stack(self._catalogue.alias_moves(), alias)
            if len(stack) < 2:
                raise RegistryError(f"alias {alias!r} has no earlier version to roll back to "
                                    f"(history: {stack or 'never promoted'})")
            target = self.version(stack[-2])
            integrity.check_version(self._layout, target, log=self._log,
                                    encryption_key=self._encryption_key)
            move = {"alias": alias, "action": "rollback", "from_version": stack[-1],
                    "to_version": stack[-2], "policy": None}
            entry = self._append(ALIAS_KIND, move)
        return {**move, "seq": entry.seq, "time": entry.time}

    # -- internals --
    def _require_writer(self, action: str) -> None:
        if self._key is None:
            raise ReadOnlyRegistry(f"{action}: registry {self.path} was opened read-only; give the "
                                   "coordinator's signing key (--signing-key or FLSUITE_SIGNING_KEY)")

    def _check_signing_key(self) -> None:
        first = self._log.read_lines()[0][:1]
        keys = json.loads(first[0])["payload"]["keys"] if first else []
        if self.key_id not in keys:
            raise RegistryError(f"signing key {self.key_id[:16]} is not a key of registry {self.path} "
                                f"(its keys: {[k[:16] for k in keys]}); use the key it was created with")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _now(self) -> str:
        return self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _step(self, name: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(name)

    def _append(self, kind: str, payload: dict[str, Any]) -> AuditEntry:
        """Under the lock: log append (commit point), catalogue, head, checkpoint if due."""
        entry = self._log.append(kind=kind, payload=payload, time=self._now(), signing_key=self._key)
        self._step("log-appended")
        self._catalogue.apply([entry])
        self._step("catalogue-applied")
        if entry.seq % self._checkpoint_every == 0:
            checkpoint = {"through_seq": entry.seq, "through_hash": entry.hash,
                          "versions": len(self._catalogue.rows()), "aliases": self.aliases()}
            last = self._log.append(kind=CHECKPOINT_KIND, payload=checkpoint, time=self._now(),
                                    signing_key=self._key)
            self._catalogue.apply([last])
        else:
            last = entry
        write_head(self._layout.head, last, registry_id=self.registry_id, time=self._now(),
                   signing_key=self._key)
        self._step("head-written")
        return entry

    def _check_cache(self, *, thorough: bool) -> None:
        problem = catalogue_disagreement(self._layout, self._catalogue, thorough=thorough)
        if problem is not None:
            raise IntegrityError(
                f"registry {self.path}: the catalogue is not the audit log's cache ({problem}); run "
                f"`flsuite audit verify {self.path}`. To rebuild the catalogue from a log that "
                "verifies, remove catalogue.sqlite* and open the registry with its signing key")

    def _reconcile(self) -> None:
        """Under the lock: cut a torn log tail, check the catalogue against the log, check the
        log's last entry (its seq is its line number, this key signed it), replay committed
        entries the catalogue lacks, re-sign a stale head (refuse one that names the last entry
        with another hash), remove temporary files of interrupted writes."""
        self._log.repair_torn_tail()
        self._check_cache(thorough=False)
        for folder in (self._layout.root, self._layout.blobs):
            for leftover in folder.glob(f"{TEMP_PREFIX}*"):
                leftover.unlink(missing_ok=True)
        try:
            last = self._log.last()
            if last is not None:
                integrity.check_signed(last, self._key)
        except IntegrityError as error:
            raise IntegrityError(f"registry {self.path}: {error}; its audit log was changed outside flsuite: "
                                 f"nothing was written. Run `flsuite audit verify {self.path}`") from None
        if last is None:
            return
        applied = self._catalogue.applied_seq()
        if last.seq > applied:
            lines, _ = self._log.read_lines()
            self._catalogue.apply([integrity.trusted_entry(line, seq, self._key) for seq, line in
                                   enumerate(lines[applied:], start=applied + 1)])
        head = read_head(self._layout.head) if self._layout.head.exists() else None
        if head is not None and head.seq == last.seq and head.hash != last.hash:
            raise IntegrityError(f"registry {self.path}: head.json names audit entry {last.seq} with another hash "
                                 f"than the log's last entry (it was replaced); run `flsuite audit verify {self.path}`")
        if head is None or head.seq != last.seq:
            write_head(self._layout.head, last, registry_id=self.registry_id, time=self._now(),
                       signing_key=self._key)

    def _store_blob(self, plaintext: bytes, address: str) -> dict[str, Any]:
        """Under the lock: write the blob (or reuse an identical committed one); its manifest part."""
        existing = self._catalogue.stored_hash_of_blob(address)
        path = self._layout.blob(address)
        if existing is not None:
            stored_sha256, blob = existing
            if not path.is_file() or sha256_hex(path.read_bytes()) != stored_sha256:
                raise IntegrityError(f"blob {address[:16]}: damaged or missing; run flsuite audit verify")
            return {key: blob[key] for key in ("sha256", "size", "stored_sha256", "stored_size",
                                               "encryption")}
        if self._encryption_key is not None:
            stored = encrypt_blob(plaintext, key=self._encryption_key, address=address)
            encryption = {"algorithm": ALGORITHM, "key_id": encryption_key_id(self._encryption_key)}
        else:
            stored, encryption = plaintext, None
        write_atomic(path, stored, mode=0o444)  # replaces any orphan of an interrupted publish
        self._step("blob-written")
        return {"sha256": address, "size": len(plaintext), "stored_sha256": sha256_hex(stored),
                "stored_size": len(stored), "encryption": encryption}

    def _signer_pem(self) -> dict[str, str]:
        return {path.stem: path.read_text() for path in sorted(self._layout.keys.glob("*.pub"))}


def _create(layout: Layout, signing_key: Any, clock: Callable[[], datetime]) -> None:
    """Build a new registry in a temporary folder and rename it into place (all or nothing)."""
    root = layout.root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.with_name(f".tmp-{root.name}.{uuid.uuid4().hex[:8]}")
    temp = Layout(staging)
    try:
        temp.blobs.mkdir(parents=True)
        temp.keys.mkdir()
        kid = key_id(signing_key)
        write_atomic(temp.key_file(kid), public_key_pem(signing_key))
        registry_id = str(uuid.uuid4())
        write_atomic(temp.info, canonical_json({"format": REGISTRY_FORMAT, "registry_id": registry_id}) + b"\n")
        now = clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entry = AuditLog(temp.log).append(kind=GENESIS_KIND, payload={
            "format": REGISTRY_FORMAT, "registry_id": registry_id, "keys": [kid]},
            time=now, signing_key=signing_key)
        catalogue = Catalogue(temp.catalogue, writable=True)
        catalogue.apply([entry])
        catalogue.close()
        write_head(temp.head, entry, registry_id=registry_id, time=now, signing_key=signing_key)
        try:
            if root.exists():
                root.rmdir()  # only an empty folder reaches here
            os.rename(staging, root)
        except OSError:
            if not layout.is_registry():  # lost a race to another creator: use theirs
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
