"""Publishing versions, recording events, opening registries: what a coordinator sees."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from flsuite.errors import UserError
from flsuite.registry import (
    ReadOnlyRegistry,
    Registry,
    RegistryError,
    code_digest,
    config_hash,
    load_or_create_signing_key,
    verify_registry,
)
from flsuite.registry.testing import StepClock, publish_sample, sample_certificate, sample_weights


@pytest.fixture()
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "registry", signing_key_path=tmp_path / "keys" / "coordinator.pem",
                       clock=StepClock()) as reg:
        yield reg


def test_publish_round_trips_weights_and_lineage(registry: Registry) -> None:
    first = publish_sample(registry, round=1)
    second = publish_sample(registry, round=2)
    other_run = publish_sample(registry, round=1, run_id="run-2")
    assert (first.number, second.number, other_run.number) == (1, 2, 3)
    assert (first.parent, second.parent, other_run.parent) == (None, 1, None)  # latest of same run
    weights = registry.load_weights(2)
    assert set(weights) == {"layer.weight", "layer.bias"}
    np.testing.assert_array_equal(weights["layer.weight"], sample_weights(2.0)["layer.weight"])
    assert second.manifest["blob"]["tensors"]["layer.bias"] == {"dtype": "float32", "shape": [16]}
    assert second.created_at == registry.version(2).created_at
    assert [v.number for v in registry.versions("run-1")] == [1, 2]
    assert registry.latest("run-1").number == 2


def test_explicit_parent_and_unknown_parent(registry: Registry) -> None:
    publish_sample(registry)
    publish_sample(registry, round=1)
    assert publish_sample(registry, round=2, parent=1).parent == 1
    with pytest.raises(RegistryError, match="parent=9"):
        publish_sample(registry, round=3, parent=9)


def test_manifest_carries_the_facts_and_a_signature(registry: Registry) -> None:
    info = publish_sample(registry, round=4, metrics={"accuracy": 0.91, "loss": 0.3}, epsilon=1.5)
    manifest = info.manifest
    assert manifest["round"] == 4 and manifest["sites"] == ["site-a", "site-b"]
    assert manifest["metrics"] == {"accuracy": 0.91, "loss": 0.3}
    assert manifest["dp_certificate"]["sites"]["site-a"]["epsilon"] == 1.5
    assert manifest["config_hash"] == "c" * 64 and manifest["code_digest"] == "d" * 64
    assert manifest["blob"]["encryption"] is None
    assert len(info.manifest_sig) > 40


def test_identical_weights_share_one_blob(registry: Registry) -> None:
    a = publish_sample(registry, round=1, weights=sample_weights(5.0))
    b = publish_sample(registry, round=2, weights=sample_weights(5.0))
    assert a.blob_sha256 == b.blob_sha256
    assert len(list((registry.path / "blobs" / "sha256").iterdir())) == 1
    assert verify_registry(registry.path).ok


@pytest.mark.parametrize(("override", "field"), [
    ({"run_id": ""}, "run_id"),
    ({"round": -1}, "round"),
    ({"config_hash": "abc"}, "config_hash"),
    ({"sites": "site-a"}, "sites"),
    ({"sites": ["a", "a"]}, "sites"),
    ({"metrics": {"accuracy": float("nan")}}, "accuracy"),
    ({"dp_certificate": {"unit_of_privacy": "record", "accountant": "rdp", "sites": {}}}, "sites"),
    ({"dp_certificate": sample_certificate({"site-a": 1.0})}, "site-b"),
    ({"dp_certificate": sample_certificate({"site-a": 1.0, "site-b": -1.0})}, "epsilon"),
    ({"dp_certificate": sample_certificate({"site-a": 1.0, "site-b": 1.0}, delta=1.5)}, "delta"),
    ({"dp_certificate": sample_certificate({"site-a": 1.0, "site-b": 1.0}, q=0.0)}, "'q'"),
])
def test_bad_publish_arguments_name_the_field_and_store_nothing(registry: Registry, override, field) -> None:
    with pytest.raises(RegistryError, match=field):
        publish_sample(registry, **override)
    assert registry.versions() == []
    assert verify_registry(registry.path).ok


def test_bad_weights_are_refused(registry: Registry) -> None:
    with pytest.raises(UserError, match="numpy.ndarray"):
        publish_sample(registry, weights={"w": [1.0, 2.0]})
    with pytest.raises(UserError, match="dtype object"):
        publish_sample(registry, weights={"w": np.array([object()])})
    with pytest.raises(UserError, match="non-empty"):
        publish_sample(registry, weights={})


def test_record_appends_study_events(registry: Registry) -> None:
    entry = registry.record("site.refused", {"site": "site-a", "reason": "budget"})
    assert entry.seq == 2 and entry.kind == "site.refused"
    with pytest.raises(RegistryError, match="dotted"):
        registry.record("version.published", {})
    with pytest.raises(RegistryError, match="dotted"):
        registry.record("Bad Kind", {})
    with pytest.raises(RegistryError, match="not plain JSON"):
        registry.record("study.note", {"x": object()})
    assert verify_registry(registry.path).ok


def test_read_only_open_refuses_writes_and_changes_nothing(registry: Registry) -> None:
    publish_sample(registry)
    before = {p: p.read_bytes() for p in registry.path.rglob("*") if p.is_file() and "sqlite" not in p.name}
    with Registry.open(registry.path) as reader:
        assert reader.version(1).round == 0
        with pytest.raises(ReadOnlyRegistry, match="signing key"):
            publish_sample(reader)
        with pytest.raises(ReadOnlyRegistry):
            reader.record("study.note", {})
    after = {p: p.read_bytes() for p in registry.path.rglob("*") if p.is_file() and "sqlite" not in p.name}
    assert before == after


def test_open_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no registry at"):
        Registry.open(tmp_path / "missing")
    (tmp_path / "not-a-registry").mkdir()
    (tmp_path / "not-a-registry" / "x").write_text("x")
    with pytest.raises(RegistryError, match="not an flsuite registry"):
        Registry.open(tmp_path / "not-a-registry", signing_key_path=tmp_path / "k.pem")
    with pytest.raises(RegistryError, match="inside the registry folder"):
        Registry.open(tmp_path / "reg", signing_key_path=tmp_path / "reg" / "k.pem")
    with pytest.raises(RegistryError, match="version 7"):
        with Registry.open(tmp_path / "reg2", signing_key_path=tmp_path / "k2.pem") as reg:
            reg.version(7)


def test_another_key_cannot_write(tmp_path: Path) -> None:
    Registry.open(tmp_path / "reg", signing_key_path=tmp_path / "a.pem").close()
    with pytest.raises(RegistryError, match="not a key of registry"):
        Registry.open(tmp_path / "reg", signing_key_path=tmp_path / "b.pem")


def test_signing_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    assert load_or_create_signing_key(path).public_key() == key.public_key()
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="chmod 600"):
        load_or_create_signing_key(path)


def test_registry_folder_holds_no_private_key(registry: Registry) -> None:
    publish_sample(registry)
    for file in registry.path.rglob("*"):
        if file.is_file():
            assert b"PRIVATE KEY" not in file.read_bytes()


def test_head_and_checkpoints(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "reg", signing_key_path=tmp_path / "k.pem", checkpoint_every=4) as reg:
        publish_sample(reg)
        for i in range(5):
            reg.record("study.note", {"i": i})
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "reg" / "audit.jsonl").read_bytes().splitlines()]
    assert kinds.count("log.checkpoint") == 2
    head = json.loads((tmp_path / "reg" / "head.json").read_text())
    assert head["seq"] == len(kinds)
    assert verify_registry(tmp_path / "reg").ok


def test_config_hash_is_canonical() -> None:
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    with pytest.raises(UserError, match="not plain JSON"):
        config_hash({"a": float("inf")})


def test_code_digest_changes_with_source_only(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    first = code_digest([package])
    (package / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert code_digest([package]) == first
    (package / "a.py").write_text("x = 2\n")
    assert code_digest([package]) != first
    with pytest.raises(UserError, match="does not exist"):
        code_digest([tmp_path / "nope"])


def test_lost_catalogue_is_rebuilt_from_the_log(registry: Registry) -> None:
    publish_sample(registry, round=1)
    publish_sample(registry, round=2)
    registry.promote(2, "production")
    path, key_path = registry.path, registry.path.parent / "keys" / "coordinator.pem"
    registry.close()
    for file in path.glob("catalogue.sqlite*"):
        file.unlink()
    assert not verify_registry(path).ok  # an auditor notices the missing catalogue
    with Registry.open(path, signing_key_path=key_path) as rebuilt:
        assert [v.round for v in rebuilt.versions()] == [1, 2]
        assert rebuilt.aliases() == {"production": 2}
    assert verify_registry(path).ok


def test_a_publish_decodes_as_many_log_lines_in_a_long_registry_as_in_a_new_one(registry: Registry, monkeypatch) -> None:
    """A registry serves many studies, and its writer publishes every round: what a publish reads
    of the audit log must not grow with the log (each publish decoded every line before, so the
    rounds of a long-lived registry slowed without bound)."""
    import flsuite.storage.chain as chain

    decodes = [0]
    real = chain._json_object

    def counting(line):
        decodes[0] += 1
        return real(line)

    def decodes_of_one_publish(round: int) -> int:
        monkeypatch.setattr(chain, "_json_object", counting)
        decodes[0] = 0
        publish_sample(registry, round=round)
        registry.record("study.round_ended", {"round": round})
        monkeypatch.setattr(chain, "_json_object", real)
        return decodes[0]

    for round in range(1, 4):
        publish_sample(registry, round=round)
    early = decodes_of_one_publish(4)
    for round in range(5, 45):
        publish_sample(registry, round=round)
    assert decodes_of_one_publish(45) == early <= 4, early
    assert verify_registry(registry.path).ok
