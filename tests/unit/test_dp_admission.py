"""Only planned sites train in a DP study, and only replies that match the plan are averaged
(issue 11.7), played as attacks on the in-process Grid by small site handlers, with secure
aggregation on and off: an unplanned node that appears after planning, a planned site that
comes online late, a site whose reply carries a lower sigma, no DP event, or a forged ledger
head. Also: a DP site's withheld training loss in the outputs (11.6)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flsuite import protocol
from flsuite.config import compose_study, to_run_config
from flsuite.coordinator.admission import PINNED_IDENTITIES, UNVERIFIED, DpAdmission, HeadVerifier
from flsuite.coordinator.rounds import REJECTED_REPLY, RoundLoop
from flsuite.coordinator.strategies import build_strategy
from flsuite.coordinator.study import run_study, train_round
from flsuite.flower import InProcessGrid, new_run
from flsuite.privacy import poisson_schedule, utc_now_iso
from flsuite.secagg import generate_identity, load_identity, write_pinned_identities
from flsuite.site import secagg_mod

RUN_ID = 7
RECORDS = 120
DELTA = 1e-4


class Site:
    """A site that answers status queries honestly and trains honestly unless told to lie in its
    train replies.

    ``lie``: None (honest), "low-sigma" (trains and reports half the planned sigma),
    "no-event" (no DP event), "forged-head" (a head signed with another key), "no-head".
    """

    def __init__(self, folder: Path, name: str, *, shift: float, private: bool = True, send_head: bool = True, lie: str | None = None,
                 cap: float = 10.0) -> None:
        self.name, self.shift, self.private, self.send_head, self.lie, self.cap = name, shift, private, send_head, lie, cap
        self.key = load_identity(folder / name / "identity.key")
        self.events: list[protocol.DpEvent] = []
        self.trained: list[int] = []

    def status(self, *, lying: bool = False) -> protocol.SiteStatus:
        if not self.private:
            return protocol.SiteStatus(name=self.name, records=RECORDS)
        head = self.head(lying=lying) if self.send_head and not (lying and self.lie == "no-head") else None
        return protocol.SiteStatus(name=self.name, records=RECORDS, max_epsilon=self.cap, delta=DELTA, spent_epsilon=0.0,
                                   prior_events=tuple(self.events), ledger_head=head)

    def head(self, *, lying: bool) -> protocol.LedgerHead:
        unsigned = protocol.LedgerHead(site=self.name, dataset="records", entries=len(self.events), hash="ab" * 32, signature="00")
        key = self.key
        if lying and self.lie == "forged-head":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            key = Ed25519PrivateKey.generate()
        return protocol.LedgerHead(site=self.name, dataset="records", entries=len(self.events), hash="ab" * 32,
                                   signature=key.sign(unsigned.payload()).hex())

    def records(self, *, lying: bool = False) -> dict[str, ConfigRecord]:
        return {protocol.SITE: ConfigRecord(self.status(lying=lying).to_record())}

    def query(self, msg: Message, context: Context) -> Message:
        return Message(RecordDict(self.records()), reply_to=msg)

    def train(self, msg: Message, context: Context) -> Message:
        config = msg.content[protocol.CONFIG]
        server_round = int(config[protocol.SERVER_ROUND])
        self.trained.append(server_round)
        study = compose_study_from(context)
        sigma = float(config[protocol.NOISE_MULTIPLIER]) * (0.5 if self.lie == "low-sigma" else 1.0)
        schedule = poisson_schedule(records=RECORDS, batch_size=study.training.batch_size, local_epochs=study.training.local_epochs)
        event = protocol.DpEvent(
            study_id=study.name, run_id=str(RUN_ID), round=server_round, site=self.name, dataset="records",
            sample_rate=schedule.sample_rate, noise_multiplier=sigma, steps=schedule.steps_per_round,
            max_grad_norm=study.privacy.max_grad_norm, delta=DELTA, accountant=study.privacy.accountant, rng="test", recorded_at=utc_now_iso(),
        ) if self.private else None
        if event is not None:
            self.events.append(event)
        arrays = msg.content[protocol.ARRAYS]
        content = RecordDict({
            protocol.ARRAYS: ArrayRecord({k: Array(arrays[k].numpy() + np.asarray(self.shift, dtype=arrays[k].numpy().dtype)) for k in arrays}),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: RECORDS}),  # a DP site releases no training loss
            **self.records(lying=True),
        })
        if event is not None and self.lie != "no-event":
            content[protocol.DP_EVENT] = ConfigRecord(protocol.dp_event_to_record(event))
        return Message(content, reply_to=msg)


def old_event(site: str, index: int) -> protocol.DpEvent:
    """An event of an earlier study."""
    return protocol.DpEvent(study_id="earlier", run_id=str(index), round=1, site=site, dataset="records", sample_rate=0.1,
                            noise_multiplier=5.0, steps=10, max_grad_norm=2.0, delta=DELTA, accountant="prv", rng="test",
                            recorded_at=utc_now_iso())


def compose_study_from(context: Context):
    from flsuite.config.bridge import from_run_config

    return from_run_config(context.run_config)


def dp_study(tmp_path: Path, secagg: str, *overrides: str):
    return compose_study([
        f"secagg={secagg}", "registry.enabled=false", "federation.num_sites=4", "federation.min_sites=3", "federation.rounds=2",
        "federation.strategy=fedavg",  # the weights below are plain averages
        f"sites_dir={tmp_path / 'sites'}", f"privacy.delta={DELTA}", *overrides,
    ])


def federation(tmp_path: Path, study, sites: dict[int, Site]) -> InProcessGrid:
    run_config = to_run_config(study.model_copy(update={"output_dir": str(tmp_path / "out")}))
    handlers, contexts = {}, {}
    for node, site in sites.items():
        app = ClientApp(mods=[secagg_mod])
        app.train()(site.train)
        app.query()(site.query)
        handlers[node] = app
        contexts[node] = Context(run_id=RUN_ID, node_id=node, state=RecordDict(), run_config=dict(run_config), node_config={
            protocol.SITE_NAME: site.name,
            protocol.IDENTITY_KEY: str(tmp_path / "sites" / site.name / "identity.key"),
            protocol.IDENTITIES_FILE: str(tmp_path / "sites" / PINNED_IDENTITIES),
        })
    return InProcessGrid(handlers, contexts, run=new_run(RUN_ID, run_config), wire=True)


def identities(tmp_path: Path, names: list[str]) -> None:
    folder = tmp_path / "sites"
    write_pinned_identities(folder / PINNED_IDENTITIES, {name: generate_identity(folder / name / "identity.key") for name in names})


def sites_of(tmp_path: Path, count: int, **liars: dict) -> dict[int, Site]:
    names = [f"site-{i}" for i in range(count)]
    identities(tmp_path, names)
    return {100 + i: Site(tmp_path / "sites", name, shift=1.0, **liars.get(name, {})) for i, name in enumerate(names)}


def run_loop(study, grid: InProcessGrid):
    """The coordinator as run_study wires it, on a three-number model: plan, admit, check, average."""
    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    strategy = build_strategy(study.federation, initial)
    with grid:
        admission = DpAdmission(study, grid, verifier=HeadVerifier.for_study(study))
        admission.plan()
        loop = RoundLoop(study, grid, strategy=strategy, train_round=train_round(study, grid, strategy, reply_check=admission.check_reply),
                         initial_arrays=initial, evaluator=None, site_configs=admission.site_configs, admit=admission.admit)
        result = loop.run()
    result.planning = admission.events
    return result, admission


def trains_sent(grid: InProcessGrid) -> list[tuple[int, int]]:
    """(round, node) of every train request the coordinator sent."""
    return sorted({(int(m.content[protocol.CONFIG][protocol.SERVER_ROUND]), m.metadata.dst_node_id)
                   for m in grid.sent if m.metadata.message_type == protocol.TRAIN})


# -- replies that do not match the plan are not averaged -----------------------------------------


@pytest.mark.parametrize("secagg", ["none", "secure"])
@pytest.mark.parametrize("lie", ["low-sigma", "no-event", "forged-head", "no-head"])
def test_a_reply_that_does_not_match_the_plan_is_left_out_of_the_average_and_recorded(tmp_path, secagg, lie):
    sites = sites_of(tmp_path, 4, **{"site-2": {"lie": lie}})
    sites[102].shift = 5.0  # its update would show in the average (within secure aggregation's clip range 8)
    study = dp_study(tmp_path, secagg)
    grid = federation(tmp_path, study, sites)
    result, _ = run_loop(study, grid)
    assert result.status == "completed", result.message
    (rejected,) = [r for r in result.refusals if r.name == "site-2"]
    assert rejected.kind == REJECTED_REPLY and rejected.round == 1
    expected = {"low-sigma": "sigma", "no-event": "no DP event", "forged-head": "signature does not verify", "no-head": "no signed ledger head"}[lie]
    assert expected in rejected.reason
    assert rejected.to_summary()["kind"] == "rejected-reply"
    # each round moved the model by the honest sites' 1.0 only
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2.0, 2.0, 2.0], atol=1e-3)
    assert all("site-2" not in [s.name for s in record.sites] for record in result.rounds)
    assert (2, 102) not in trains_sent(grid)  # a site whose reply was rejected is not asked again


def test_an_honest_federation_is_accepted_and_its_heads_verified(tmp_path):
    sites = sites_of(tmp_path, 4)
    study = dp_study(tmp_path, "none")
    result, admission = run_loop(study, federation(tmp_path, study, sites))
    assert result.status == "completed" and result.refusals == []
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2.0, 2.0, 2.0], atol=1e-6)
    assert admission.require_head and {admission.head_check(name) for name in admission.heads} == {"verified"}
    assert all(entry["action"] == "planned" and entry["round"] == 0 for entry in result.planning)


def test_without_pinned_identities_a_head_is_recorded_as_unverified_not_verified(tmp_path):
    sites = sites_of(tmp_path, 4)
    (tmp_path / "sites" / PINNED_IDENTITIES).unlink()  # a deployment whose coordinator has no pinned identities file
    study = dp_study(tmp_path, "none")
    result, admission = run_loop(study, federation(tmp_path, study, sites))
    assert result.refusals == [] and admission.head_check("site-0") == UNVERIFIED
    assert "unverified" in UNVERIFIED


def test_sites_that_never_send_a_head_are_accepted_until_heads_are_expected(tmp_path):
    """Before the sites sign their ledger heads, a study works without them (the flag comes from planning)."""
    names = [f"site-{i}" for i in range(4)]
    identities(tmp_path, names)
    sites = {100 + i: Site(tmp_path / "sites", name, shift=1.0, send_head=False) for i, name in enumerate(names)}
    study = dp_study(tmp_path, "none")
    result, admission = run_loop(study, federation(tmp_path, study, sites))
    assert result.refusals == [] and not admission.require_head and admission.heads == {}


def test_a_ledger_head_that_shrinks_is_rejected(tmp_path):
    sites = sites_of(tmp_path, 4)
    study = dp_study(tmp_path, "none")
    sites[101].events = [old_event("site-1", i) for i in range(3)]  # it signed 3 entries at planning, 4 in round 1
    original = sites[101].train

    def cut(msg, context):
        reply = original(msg, context)
        sites[101].events.clear()  # the site's ledger was cut: its next head has fewer entries
        return reply

    sites[101].train = cut
    result, _ = run_loop(study, federation(tmp_path, study, sites))
    (rejected,) = [r for r in result.refusals if r.name == "site-1"]
    assert rejected.round == 2 and "fewer than" in rejected.reason


# -- only planned sites train ---------------------------------------------------------------------


@pytest.mark.parametrize("secagg", ["none", "secure"])
def test_an_unplanned_node_that_appears_after_planning_is_never_sent_a_train_request(tmp_path, secagg):
    sites = sites_of(tmp_path, 4)
    intruder = Site(tmp_path / "sites", "site-3", shift=5.0, private=False)  # no cap: it would train without DP
    sites[103] = intruder
    study = dp_study(tmp_path, secagg, "federation.rounds=3")
    grid = federation(tmp_path, study, sites)
    grid.offline.add(103)

    def connect_after_round_1(message):
        if message.metadata.message_type == protocol.TRAIN and int(message.content[protocol.CONFIG][protocol.SERVER_ROUND]) == 1:
            grid.offline.discard(103)
        return message

    grid.tamper = connect_after_round_1
    result, admission = run_loop(study, grid)
    assert result.status == "completed"
    assert not [node for _, node in trains_sent(grid) if node == 103] and intruder.trained == []
    np.testing.assert_allclose(result.arrays["w"].numpy(), [3.0, 3.0, 3.0], atol=1e-3)
    (left_out,) = [e for e in result.planning if e["action"] == "left-out"]
    assert left_out["node_id"] == 103 and left_out["round"] == 2 and ("no privacy status" in left_out["reason"] or "ledger head" in left_out["reason"])
    assert 103 not in admission.planned


@pytest.mark.parametrize("secagg", ["none", "secure"])
def test_a_planned_site_that_comes_online_late_is_planned_then_trains(tmp_path, secagg):
    sites = sites_of(tmp_path, 4)
    study = dp_study(tmp_path, secagg, "federation.rounds=3")
    grid = federation(tmp_path, study, sites)
    grid.offline.add(103)
    grid.tamper = lambda m: (grid.offline.discard(103), m)[1] if m.metadata.message_type == protocol.TRAIN else m
    result, admission = run_loop(study, grid)
    assert result.status == "completed", result.message
    late = [e for e in result.planning if e["node_id"] == 103]
    assert [(e["action"], e["round"]) for e in late] == [("planned", 2)]
    assert admission.planned[103].noise_multiplier == admission.planned[100].noise_multiplier  # same records, same rules
    assert [r for r, node in trains_sent(grid) if node == 103] == [2, 3] and result.refusals == []


def test_a_late_site_whose_budget_the_study_would_pass_is_left_out_with_its_reason(tmp_path):
    names = [f"site-{i}" for i in range(4)]
    identities(tmp_path, names)
    sites = {100 + i: Site(tmp_path / "sites", name, shift=1.0, cap=10.0 if i < 3 else 0.5) for i, name in enumerate(names)}
    study = dp_study(tmp_path, "none", "federation.rounds=3")
    grid = federation(tmp_path, study, sites)
    grid.offline.add(103)
    grid.tamper = lambda m: (grid.offline.discard(103), m)[1] if m.metadata.message_type == protocol.TRAIN else m
    result, _ = run_loop(study, grid)
    assert result.status == "completed"
    (late,) = [e for e in result.planning if e["node_id"] == 103]
    assert late["action"] == "left-out" and "remaining privacy budget" in late["reason"] and "site-3" in late["reason"]
    assert not [node for _, node in trains_sent(grid) if node == 103]


# -- the whole ServerApp body: outputs ------------------------------------------------------------


def test_run_study_records_rejections_late_sites_and_withheld_training_loss(tmp_path):
    sites = sites_of(tmp_path, 5, **{"site-2": {"lie": "low-sigma"}})
    study = dp_study(tmp_path, "none", "federation.num_sites=5", "federation.rounds=3", "experiment=smoke", "federation.rounds=3")
    study = study.model_copy(update={"output_dir": str(tmp_path / "out")})
    for site in sites.values():
        site.shift = 0.0
    grid = federation(tmp_path, study, sites)
    grid.offline.add(104)
    grid.tamper = lambda m: (grid.offline.discard(104), m)[1] if m.metadata.message_type == protocol.TRAIN else m
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config=to_run_config(study))
    with grid:
        summary = run_study(grid, context)
    out = tmp_path / "out"
    assert summary["status"] == "completed", summary["message"]
    (rejected,) = summary["refusals"]
    assert rejected["kind"] == "rejected-reply" and rejected["name"] == "site-2" and "sigma" in rejected["reason"]
    planning = summary["privacy"]["planning"]
    assert [(e["site"], e["round"]) for e in planning if e["node_id"] == 104] == [("site-4", 2)]
    assert "site-4" in (out / "privacy_plan.csv").read_text()  # the late site's plan row is written too
    rounds = list(csv.DictReader((out / "metrics.csv").open()))
    assert {row["train_loss"] for row in rounds} == {"withheld"} and summary["final_train_loss"] == "withheld"
    site_rows = list(csv.DictReader((out / "site_metrics.csv").open()))
    assert site_rows and {row["train-loss"] for row in site_rows} == {"withheld"}
    assert "site-2" not in {row["site"] for row in site_rows}
    assert json.loads((out / "metrics.json").read_text())[0]["train_loss"] == "withheld"


def test_the_coordinator_reads_the_identities_file_simulated_sites_write():
    from flsuite.site.simulated import PINNED_FILE

    assert PINNED_IDENTITIES == PINNED_FILE


@pytest.mark.parametrize("secagg", ["none", "secure"])
def test_each_train_reply_s_status_and_dp_event_are_parsed_once(tmp_path, monkeypatch, secagg):
    """A DP site's status lists its whole history; its train reply was parsed by every check (the
    declared count, the plan, the round's record): four times a reply, more with each round. Now once."""
    sites = sites_of(tmp_path, 4)
    study = dp_study(tmp_path, secagg, "federation.rounds=3")
    grid = federation(tmp_path, study, sites)
    parses = {"status": 0, "event": 0}
    status_parse, event_parse = protocol.SiteStatus.from_record.__func__, protocol.dp_event_from_record

    def counting_status(cls, record):
        parses["status"] += 1
        return status_parse(cls, record)

    def counting_event(record):
        parses["event"] += 1
        return event_parse(record)

    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    strategy = build_strategy(study.federation, initial)
    with grid:
        admission = DpAdmission(study, grid, verifier=HeadVerifier.for_study(study))
        admission.plan()
        monkeypatch.setattr(protocol.SiteStatus, "from_record", classmethod(counting_status))
        monkeypatch.setattr(protocol, "dp_event_from_record", counting_event)
        loop = RoundLoop(study, grid, strategy=strategy, train_round=train_round(study, grid, strategy, reply_check=admission.check_reply),
                         initial_arrays=initial, evaluator=None, site_configs=admission.site_configs, admit=admission.admit,
                         declared=admission.declared)  # as run_study wires it
        result = loop.run()
    replies = sum(len(record.sites) for record in result.rounds)
    assert result.status == "completed" and replies == 12
    assert parses == {"status": replies, "event": replies}
