"""`flsuite launch --resume FOLDER`: the folder's study goes to the ServerApp with ``resume`` set
in its run_config, after the same checks as `flsuite run --resume` (registry verified first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from flsuite.config import compose_study, from_run_config
from flsuite.coordinator.launch import plan_launch
from flsuite.coordinator.resume import ResumeState
from flsuite.errors import ConfigError, IntegrityError
from flsuite.registry import Registry


def killed_study(tmp_path: Path, engine: str = "deployment") -> Path:
    """The folder of a 3-round study whose coordinator died after publishing round 1."""
    folder = tmp_path / "out"
    folder.mkdir()
    raw = compose_study(["federation.rounds=3", "federation.num_sites=3"]).model_dump(mode="json", exclude={"resume"})
    raw["engine"]["name"], raw["output_dir"] = engine, str(folder)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    ResumeState("run1", raw["name"], 1, 1).write(folder)
    with Registry.open(folder / "registry", signing_key_path=folder / "coordinator-signing.key") as registry:
        registry.publish({"w": np.ones(3, np.float32)}, run_id="run1", study_id=raw["name"], round=1, config_hash="0" * 64,
                         code_digest="0" * 64, sites=["hospital-a"], metrics={}, dp_certificate=None)
    return folder


def test_launch_resume_sends_the_folders_study_with_resume_set(files, tmp_path):
    folder = killed_study(tmp_path)
    plan = plan_launch([], coordinator=files.coordinator(), resume=folder)
    study = from_run_config(plan.run_config())
    assert study.resume and study.engine.name == "deployment" and study.federation.rounds == 3
    assert plan.output_dir == folder and study.output_dir == str(folder)
    assert plan.resumed_after == 1  # resume.json: round 1 was published; the launch shows it as an earlier round


def test_launch_resume_refuses_what_run_resume_refuses(files, tmp_path):
    folder = killed_study(tmp_path)
    with pytest.raises(ConfigError, match="federation.rounds=5"):
        plan_launch(["federation.rounds=5"], coordinator=files.coordinator(), resume=folder)
    with pytest.raises(ConfigError, match="drop --output-dir"):
        plan_launch([], coordinator=files.coordinator(), resume=folder, output_dir=tmp_path / "elsewhere")
    log = folder / "registry" / "audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"round":1', b'"round":2', 1))
    with pytest.raises(IntegrityError, match="does not verify"):
        plan_launch([], coordinator=files.coordinator(), resume=folder)


def test_a_simulated_study_is_resumed_with_run_not_launch(files, tmp_path):
    folder = killed_study(tmp_path, engine="inline")
    with pytest.raises(ConfigError, match="flsuite run --resume"):
        plan_launch([], coordinator=files.coordinator(), resume=folder)
