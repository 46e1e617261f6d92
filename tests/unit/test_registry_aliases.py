"""Aliases: gated promotion, rollback, and an audit entry for every move (and refusal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flsuite.errors import IntegrityError
from flsuite.registry import PromotionPolicy, PromotionRefused, Registry, RegistryError, verify_registry
from flsuite.registry.testing import publish_sample


@pytest.fixture()
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "registry", signing_key_path=tmp_path / "k.pem") as reg:
        publish_sample(reg, round=0, metrics={"accuracy": 0.80}, epsilon=1.0)
        publish_sample(reg, round=1, metrics={"accuracy": 0.90}, epsilon=3.0)
        publish_sample(reg, round=2, metrics={"accuracy": 0.95}, epsilon=None)
        yield reg


def _kinds(registry: Registry) -> list[str]:
    return [json.loads(line)["kind"] for line in (registry.path / "audit.jsonl").read_bytes().splitlines()]


def test_promote_and_rollback_walk_the_history(registry: Registry) -> None:
    registry.promote(1, "production")
    registry.promote(2, "production")
    registry.promote(3, "production")
    assert registry.aliases() == {"production": 3}
    assert registry.rollback("production")["to_version"] == 2
    assert registry.rollback("production")["to_version"] == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("production")
    assert registry.version("production").number == 1
    assert _kinds(registry).count("alias.moved") == 5
    assert len(registry.alias_history("production")) == 5
    assert verify_registry(registry.path).ok


def test_policy_is_enforced_and_refusals_are_audited(registry: Registry) -> None:
    with pytest.raises(PromotionRefused, match="site site-a: epsilon 3 > max 2") as refused:
        registry.promote(2, "production", PromotionPolicy(max_epsilon=2.0))
    assert len(refused.value.reasons) == 2  # both sites
    with pytest.raises(PromotionRefused, match="no DP certificate"):
        registry.promote(3, "production", PromotionPolicy(max_epsilon=2.0))
    with pytest.raises(PromotionRefused, match="'accuracy' = 0.8 < minimum 0.85"):
        registry.promote(1, "production", PromotionPolicy.with_min_accuracy(0.85))
    with pytest.raises(PromotionRefused, match="'auc' is not recorded"):
        registry.promote(1, "production", PromotionPolicy(min_metrics={"auc": 0.5}))
    assert registry.aliases() == {}
    assert _kinds(registry).count("promotion.refused") == 4
    move = registry.promote(2, "staging", PromotionPolicy(max_epsilon=3.0, min_metrics={"accuracy": 0.9}))
    assert move["policy"] == {"max_epsilon": 3.0, "min_metrics": {"accuracy": 0.9}}
    assert verify_registry(registry.path).ok


def test_version_that_does_not_verify_is_not_promoted(registry: Registry) -> None:
    blob = registry.path / "blobs" / "sha256" / registry.version(2).blob_sha256
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="version 2"):
        registry.promote(2, "production")
    assert registry.aliases() == {}


def test_bad_alias_and_version_names(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="lower-case name"):
        registry.promote(1, "Production!")
    with pytest.raises(RegistryError, match="neither a version number nor an alias"):
        registry.promote("nightly", "production")
    registry.promote(1, "production")
    with pytest.raises(RegistryError, match="already points at version 1"):
        registry.promote("production", "production")


def test_invalid_policy_values() -> None:
    with pytest.raises(RegistryError, match="max_epsilon"):
        PromotionPolicy(max_epsilon=-1.0)
    with pytest.raises(RegistryError, match="accuracy"):
        PromotionPolicy(min_metrics={"accuracy": float("nan")})


def test_nothing_is_overwritten(registry: Registry) -> None:
    manifests = [v.manifest for v in registry.versions()]
    registry.promote(1, "production")
    registry.promote(2, "production")
    registry.rollback("production")
    assert [v.manifest for v in registry.versions()] == manifests
