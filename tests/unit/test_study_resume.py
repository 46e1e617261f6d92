"""Resume's refusals and bookkeeping, played as attacks without training: a folder that is not
a study, a completed study, overrides that change the study, a tampered registry, a site whose
ledger no longer fits the rest of the plan, torn and unpublished rows in the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.coordinator.resume import (
    RESUME_FILE,
    ResumedPlan,
    ResumePoint,
    ResumeState,
    prepare_resume,
    read_round_rows,
)
from flsuite.errors import ConfigError, IntegrityError, PlanError, StudyOverBudget
from flsuite.privacy import PlanRow
from flsuite.registry import Registry

ROUNDS = 4


def study_folder(tmp_path: Path, *, rounds: int = ROUNDS, summary: dict | None = None) -> Path:
    """A study's output folder as a killed coordinator leaves it: config.yaml and resume.json."""
    folder = tmp_path / "out"
    folder.mkdir()
    study = compose_study([f"federation.rounds={rounds}", "secagg=none"])
    (folder / "config.yaml").write_text(yaml.safe_dump(study.model_dump(mode="json", exclude={"resume"})))
    ResumeState("run1", study.name).write(folder)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def publish(folder: Path, rounds: int) -> list[int]:
    """Versions 1..rounds of run1, as the study's publisher signs them."""
    numbers = []
    with Registry.open(folder / "registry", signing_key_path=folder / "coordinator-signing.key") as registry:
        for r in range(1, rounds + 1):
            info = registry.publish({"linear.weight": np.full((2, 3), r, np.float32), "linear.bias": np.zeros(2, np.float32)},
                                    run_id="run1", study_id="default", round=r, config_hash="0" * 64, code_digest="0" * 64,
                                    sites=["site-0"], metrics={"accuracy": 0.5}, dp_certificate=None)
            numbers.append(info.number)
    return numbers


def test_a_folder_that_is_not_a_study_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not a study folder"):
        prepare_resume(tmp_path, [])
    with pytest.raises(ConfigError, match="no such folder"):
        prepare_resume(tmp_path / "missing", [])


def test_a_completed_study_is_not_resumed(tmp_path):
    folder = study_folder(tmp_path, summary={"status": "completed", "rounds_completed": ROUNDS, "rounds_planned": ROUNDS})
    publish(folder, ROUNDS)
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare_resume(folder, [])


def test_overrides_that_change_the_study_are_refused_by_name(tmp_path):
    folder = study_folder(tmp_path)
    publish(folder, 1)
    with pytest.raises(ConfigError, match=r"federation\.rounds=9 \(the study has 4\)"):
        prepare_resume(folder, ["federation.rounds=9"])
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        prepare_resume(folder, ["privacy.target_epsilon=8"])
    with pytest.raises(ConfigError, match="sites_dir"):
        prepare_resume(folder, ["sites_dir=/elsewhere"])
    # Setting a key to the study's own value changes nothing; how the engine runs may change.
    study = prepare_resume(folder, ["federation.rounds=4", "engine.parallel_sites=2"])
    assert study.resume and study.engine.parallel_sites == 2 and study.federation.rounds == ROUNDS


def test_a_study_whose_registry_does_not_publish_every_round_is_not_resumed(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    study = compose_study(["registry.publish=final"])
    (folder / "config.yaml").write_text(yaml.safe_dump(study.model_dump(mode="json", exclude={"resume"})))
    ResumeState("run1", study.name).write(folder)
    with pytest.raises(ConfigError, match="registry.publish=every_round"):
        prepare_resume(folder, [])


def test_the_resume_point_is_the_last_published_version_of_the_run(tmp_path):
    folder = study_folder(tmp_path)
    assert publish(folder, 2) == [1, 2]
    study = prepare_resume(folder, [])
    point = ResumePoint.load(study, folder)
    assert (point.round, point.version, point.first_round, point.published) == (2, 2, 3, [1, 2])
    assert np.array_equal(point.weights["linear.weight"], np.full((2, 3), 2, np.float32))
    # FedAvgM's momentum comes back from the two last published models, in the seeded model's key order
    seeded = ArrayRecord({"linear.weight": Array(np.zeros((2, 3), np.float32)), "linear.bias": Array(np.zeros(2, np.float32))})
    previous = point.previous_arrays(seeded)
    assert list(previous.keys()) == list(seeded.keys())
    assert np.array_equal(previous["linear.weight"].numpy(), np.full((2, 3), 1, np.float32))


def test_a_study_resumed_after_its_first_version_takes_the_seeded_model_as_the_one_before(tmp_path):
    folder = study_folder(tmp_path)
    publish(folder, 1)
    point = ResumePoint.load(prepare_resume(folder, []), folder)
    seeded = ArrayRecord({"linear.weight": Array(np.zeros((2, 3), np.float32)), "linear.bias": Array(np.zeros(2, np.float32))})
    assert point.previous_arrays(seeded) is seeded


@pytest.mark.parametrize("target", ["audit.jsonl", "blob"])
def test_a_tampered_registry_fails_closed(tmp_path, target):
    folder = study_folder(tmp_path)
    publish(folder, 2)
    registry = folder / "registry"
    if target == "blob":
        blob = next(path for path in (registry / "blobs").rglob("*") if path.is_file())
        data = bytearray(blob.read_bytes())
        data[-1] ^= 1
        blob.write_bytes(bytes(data))
    else:
        log = registry / "audit.jsonl"
        log.write_text(log.read_text().replace('"round":2', '"round":1', 1))
    with pytest.raises(IntegrityError, match="does not verify, so the study is not resumed"):
        prepare_resume(folder, [])
    study = compose_study([f"federation.rounds={ROUNDS}", "secagg=none"]).model_copy(update={"resume": True, "output_dir": str(folder)})
    with pytest.raises(IntegrityError):  # the ServerApp checks again: it never trusts the command's check
        ResumePoint.load(study, folder)


def test_a_registry_signed_by_another_key_fails_closed(tmp_path):
    folder = study_folder(tmp_path)
    publish(folder, 1)
    (folder / "coordinator-signing.key").unlink()
    Registry.open(tmp_path / "other", signing_key_path=folder / "coordinator-signing.key").close()  # a new key, same path
    with pytest.raises(IntegrityError, match="does not verify"):
        prepare_resume(folder, [])


def test_rows_of_unpublished_rounds_and_a_torn_last_line_are_dropped(tmp_path):
    path = tmp_path / "site_metrics.csv"
    path.write_text("round,site,train_loss,num-examples\n1,site-0,withheld,40\n2,site-0,withheld,40.5\n3,site-0,withheld,40\n4,site-0,with")
    rows, dropped = read_round_rows(path, last_round=2)
    assert rows == [{"round": 1, "site": "site-0", "train_loss": "withheld", "num-examples": 40},
                    {"round": 2, "site": "site-0", "train_loss": "withheld", "num-examples": 40.5}]
    assert dropped == 2
    assert read_round_rows(tmp_path / "absent.csv", last_round=2) == ([], 0)


def _plan_file(folder: Path) -> PlanRow:
    row = PlanRow(site="site-0", records=200, sample_rate=0.16, steps_per_round=6, total_steps=24, noise_multiplier=1.5,
                  prior_epsilon=0.0, study_epsilon=2.9, projected_epsilon=2.9, max_epsilon=10.0, remaining=7.1)
    header = ",".join(vars(row))
    (folder / "privacy_plan.csv").write_text(header + "\n" + ",".join("" if v is None else str(v) for v in vars(row).values()) + "\n")
    return row


def _status(prior_rounds: int, *, cap: float, sigma: float = 1.5) -> protocol.SiteStatus:
    events = tuple(protocol.DpEvent(study_id="default", run_id="1", round=r, site="site-0", dataset="records", sample_rate=0.16,
                                    noise_multiplier=sigma, steps=6, max_grad_norm=1.0, delta=1e-5, accountant="prv", rng="torch",
                                    recorded_at="2026-01-01T00:00:00Z")
                   for r in range(1, prior_rounds + 1))
    return protocol.SiteStatus(name="site-0", records=200, max_epsilon=cap, delta=1e-5, spent_epsilon=0.0, prior_events=events)


def test_a_resumed_plan_keeps_the_stored_sigma_when_the_rest_fits(tmp_path):
    row = _plan_file(tmp_path)
    study = compose_study([f"federation.rounds={ROUNDS}"])
    plan = ResumedPlan(tmp_path, first_round=3)(study, {11: _status(3, cap=10.0)})  # rounds 1, 2 and an interrupted 3
    assert plan.rows == [row] and plan.sigma_by_node == {11: 1.5}


def test_a_resumed_plan_that_no_longer_fits_a_site_is_refused_naming_it(tmp_path):
    _plan_file(tmp_path)
    study = compose_study([f"federation.rounds={ROUNDS}"])
    # Spent elsewhere since (a noisier past): the remaining rounds would pass the cap.
    with pytest.raises(StudyOverBudget, match=r"site 'site-0' has spent epsilon .* over its cap 4"):
        ResumedPlan(tmp_path, first_round=3)(study, {11: _status(3, cap=4.0, sigma=0.6)})


def test_resume_state_is_written_whole_and_a_malformed_one_is_refused(tmp_path):
    ResumeState("abc", "default", 2, 2).write(tmp_path)
    assert ResumeState.read(tmp_path) == ResumeState("abc", "default", 2, 2)
    (tmp_path / RESUME_FILE).write_text('{"run_id": "abc", "study": "default", "round": -1, "version": null}')
    with pytest.raises(ConfigError, match="malformed"):
        ResumeState.read(tmp_path)


def test_a_resumed_plan_refuses_a_site_whose_data_or_privacy_changed(tmp_path):
    _plan_file(tmp_path)
    study = compose_study([f"federation.rounds={ROUNDS}"])
    grown = protocol.SiteStatus(name="site-0", records=260, max_epsilon=10.0, delta=1e-5, spent_epsilon=0.0)
    with pytest.raises(PlanError, match="now declares 260 records; the study's plan was made for 200"):
        ResumedPlan(tmp_path, first_round=2)(study, {11: grown})
    with pytest.raises(PlanError, match="no privacy status"):
        ResumedPlan(tmp_path, first_round=2)(study, {11: protocol.SiteStatus(name="site-0", records=200)})


def test_site_names_are_kept_as_text(tmp_path):
    path = tmp_path / "privacy.csv"
    path.write_text("round,site,epsilon\n1,1e5,0.5\n")
    assert read_round_rows(path, last_round=1)[0] == [{"round": 1, "site": "1e5", "epsilon": 0.5}]


def test_a_resumed_plan_keeps_a_numeric_looking_site_name_as_text(tmp_path):
    row = _plan_file(tmp_path)
    plan = tmp_path / "privacy_plan.csv"
    plan.write_text(plan.read_text().replace(row.site, "1e5"))
    assert list(ResumedPlan(tmp_path, first_round=3).rows) == ["1e5"]  # read as the float 100000.0 before


def test_a_resume_whose_remaining_evaluation_releases_pass_the_cap_is_refused_before_anything_is_sent(tmp_path):
    """The resumed projection counted the remaining training only: rounds 3 and 4 fit a cap of 5 (epsilon 2.95),
    but with their two private evaluation releases at sigma 0.8 the site would reach 9.2. A fresh plan of the
    same study at the same site refuses it; the resumed one let it through to round 3."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from flsuite.coordinator.admission import DpAdmission, HeadVerifier
    from flsuite.coordinator.planning import plan_site
    from flsuite.flower import InProcessGrid, new_run

    _plan_file(tmp_path)
    study = compose_study([f"federation.rounds={ROUNDS}", "monitoring.every=1", "monitoring.noise_multiplier=0.8",
                           "privacy.target_epsilon=null", "privacy.noise_multiplier=1.5"])
    status = _status(2, cap=5.0)  # rounds 1 and 2 done
    without_evaluation = compose_study([f"federation.rounds={ROUNDS}", "monitoring=none", "privacy.target_epsilon=null",
                                        "privacy.noise_multiplier=1.5"])
    assert ResumedPlan(tmp_path, first_round=3)(without_evaluation, {11: status}).sigma_by_node == {11: 1.5}  # training fits
    assert plan_site(study, status)[1] is False  # a fresh plan refuses it

    def site(msg: Message, context: Context) -> Message:
        return Message(RecordDict({protocol.SITE: ConfigRecord(status.to_record())}), reply_to=msg)

    grid = InProcessGrid({11: site}, {11: Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})},
                         run=new_run(1), wire=True)
    admission = DpAdmission(study, grid, verifier=HeadVerifier(None), planner=ResumedPlan(tmp_path, first_round=3))
    with grid, pytest.raises(StudyOverBudget, match=r"site 'site-0' has spent epsilon .* its remaining 2 round\(s\) and its "
                                                    r"2 evaluation or drift release\(s\) would take it to .* over its cap 5"):
        admission.plan()
    assert {m.metadata.message_type for m in grid.sent} == {protocol.QUERY}  # asked for its status, nothing else


def test_the_resumed_releases_are_the_plan_s_from_the_first_resumed_round():
    from flsuite.coordinator.planning import study_evaluation_phases

    study = compose_study(["federation.rounds=5", "monitoring.every=2", "monitoring.noise_multiplier=0.8", "monitoring.drift=true"])
    assert study_evaluation_phases(study) == ((1.0, 0.8, 3), (1.0, 5.0, 1))  # after rounds 2, 4 and 5; drift once
    assert study_evaluation_phases(study, first_round=3) == ((1.0, 0.8, 2), (1.0, 5.0, 1))
    assert study_evaluation_phases(study, first_round=5) == ((1.0, 0.8, 1), (1.0, 5.0, 1))
    assert study_evaluation_phases(compose_study(["federation.rounds=5", "monitoring=none"]), first_round=3) == ()
