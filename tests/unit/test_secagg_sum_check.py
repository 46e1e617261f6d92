"""Under secure aggregation the coordinator checks the unmasked sum (issue 12.2): its total weight
is the survivors' declared weights and every coordinate lies in the range honest updates fill;
a round whose sum fails is aborted and publishes nothing. Played as attacks: a site mod that
replaces or shifts its masked vector, a site that reports another example count; and a round
with fewer valid replies than federation.min_sites (12.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hypothesis import given, settings
from hypothesis import strategies as st

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.coordinator.rounds import RoundLoop
from flsuite.coordinator.strategies import build_strategy
from flsuite.coordinator.study import train_round
from flsuite.flower import InProcessGrid, new_run
from flsuite.secagg import generate_identity, write_pinned_identities
from flsuite.secagg.quantize import quantise_vector, site_weight, sum_problem
from flsuite.site import secagg_mod

RUN_ID = 3
LEVELS = (2**32 - 1) // 4


class Federation:
    """Sites behind the real secagg mod; ``attack`` (node -> how) is a mod around it or a lie in training.

    Attacks: "garbage" (a random masked vector), "undecodable" (bytes that are no array), "shift-all" (+2**31 on every coordinate),
    "shift-update" (+2**30 on the update coordinates only), "examples-1e9", "examples--5",
    "crash" (the site fails to train). ``rounds``: the rounds in which attackers attack.
    """

    def __init__(self, tmp_path: Path, records: dict[int, int], *, attack: dict[int, str] | None = None, rounds=(1,)) -> None:
        self.records, self.attack, self.rounds = records, attack or {}, set(rounds)
        self.names = {node: f"site-{i}" for i, node in enumerate(sorted(records))}
        folder = self.folder = tmp_path / "ids"
        write_pinned_identities(folder / "identities.json",
                                {name: generate_identity(folder / f"{name}.pem") for name in self.names.values()})
        self.handlers, self.contexts = {}, {}
        for node in records:
            app = ClientApp(mods=[self.tamper, secagg_mod])
            app.train()(self.train)
            app.query()(self.query)
            self.handlers[node] = app
            self.contexts[node] = Context(run_id=RUN_ID, node_id=node, state=RecordDict(), run_config={}, node_config={
                protocol.SITE_NAME: self.names[node], protocol.IDENTITY_KEY: str(folder / f"{self.names[node]}.pem"),
                protocol.IDENTITIES_FILE: str(folder / "identities.json")})

    def how(self, node: int, server_round: int) -> str | None:
        return self.attack.get(node) if server_round in self.rounds else None

    def status(self, node: int) -> ConfigRecord:
        return ConfigRecord(protocol.SiteStatus(name=self.names[node], records=self.records[node]).to_record())

    def query(self, msg: Message, context: Context) -> Message:
        return Message(RecordDict({protocol.SITE: self.status(context.node_id)}), reply_to=msg)

    def train(self, msg: Message, context: Context) -> Message:
        node, server_round = context.node_id, int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
        how = self.how(node, server_round)
        if how == "crash":
            raise RuntimeError("the site broke")
        arrays = msg.content[protocol.ARRAYS]
        examples = {"examples-1e9": 1_000_000_000, "examples--5": -5}.get(how or "", self.records[node])
        return Message(RecordDict({
            protocol.ARRAYS: ArrayRecord({k: Array(arrays[k].numpy() + np.float32(1.0)) for k in arrays}),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: examples}),
            protocol.SITE: self.status(node),
        }), reply_to=msg)

    def tamper(self, msg: Message, context: Context, call_next) -> Message:
        """A dishonest site's hand on its masked reply, after the honest mod masked it."""
        request = msg.content.config_records.get(protocol.SECAGG_RECORD)  # read first: the mod replaces the content
        how = self.how(context.node_id, int(request.get("round", 0))) if request is not None else None
        reply = call_next(msg, context)
        if how not in ("garbage", "shift-all", "shift-update", "undecodable") or reply.has_error() \
                or protocol.MASKED_RECORD not in reply.content.array_records:
            return reply
        if how == "undecodable":  # bytes that are no npy file at all, under a plausible declaration
            declared = reply.content.array_records[protocol.MASKED_RECORD][protocol.MASKED_VECTOR]
            reply.content[protocol.MASKED_RECORD] = ArrayRecord({protocol.MASKED_VECTOR: Array(
                dtype=declared.dtype, shape=tuple(declared.shape), stype=declared.stype, data=b"\x93NUMPY garbage")})
            return reply
        vector = reply.content.array_records[protocol.MASKED_RECORD][protocol.MASKED_VECTOR].numpy().copy()
        if how == "garbage":
            vector = np.random.default_rng(0).integers(0, 2**32, size=vector.size, dtype=np.uint64).astype(np.uint32)
        elif how == "shift-all":
            vector += np.uint32(2**31)
        else:
            vector[:-1] += np.uint32(2**30)
        reply.content[protocol.MASKED_RECORD] = ArrayRecord({protocol.MASKED_VECTOR: Array(vector)})
        return reply

    def grid(self) -> InProcessGrid:
        return InProcessGrid(self.handlers, self.contexts, run=new_run(RUN_ID), wire=True)


def secure_study(*overrides: str):
    return compose_study(["privacy=none", "secagg=secure", "registry.enabled=false", "federation.num_sites=4",
                          "federation.min_sites=3", "federation.rounds=2",
                          "federation.strategy=fedavg", *overrides])  # the weights below are plain averages


def run(fed: Federation, config):
    config = config.model_copy(update={"sites_dir": str(fed.folder)})  # the coordinator checks setup keys against these pins
    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    strategy = build_strategy(config.federation, initial)
    grid = fed.grid()
    loop = RoundLoop(config, grid, strategy=strategy, train_round=train_round(config, grid, strategy), initial_arrays=initial,
                     evaluator=None)
    with grid:
        return loop.run()


RECORDS = {21: 100, 22: 200, 23: 300, 24: 400}


def test_an_honest_secure_round_passes_the_sum_check_weighted_by_the_declared_counts(tmp_path):
    result = run(Federation(tmp_path, RECORDS), secure_study())
    assert result.aborted_rounds == [] and [r.round for r in result.rounds] == [1, 2]
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 2.0), atol=1e-5)


@pytest.mark.parametrize("attack, reason", [
    ("garbage", "unmasked"),
    ("shift-all", "total weight"),
    ("shift-update", "outside the range"),
    ("examples-1e9", "total weight"),
])
def test_a_sum_that_honest_sites_cannot_produce_aborts_the_round_and_publishes_nothing(tmp_path, attack, reason):
    fed = Federation(tmp_path, RECORDS, attack={23: attack}, rounds=(1,))
    result = run(fed, secure_study())
    (aborted,) = result.aborted_rounds
    assert aborted["round"] == 1 and aborted["stage"] == "sum-check"
    assert "unmasked sum fails its check" in aborted["reason"] and reason in aborted["reason"]
    assert [r.round for r in result.rounds] == [2]  # round 1 published nothing; round 2 (no attack) moved the model by 1
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 1.0), atol=1e-5)


def test_a_negative_example_count_is_refused_and_the_round_goes_on_without_that_site(tmp_path):
    result = run(Federation(tmp_path, RECORDS, attack={23: "examples--5"}), secure_study("federation.rounds=1"))
    (record,) = result.rounds
    assert result.aborted_rounds == [] and record.secure["survivors"] == 3 and "site-2" not in [s.name for s in record.sites]
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 1.0), atol=1e-5)


def test_a_masked_vector_that_does_not_decode_drops_that_site_and_the_round_goes_on(tmp_path):
    """A site's unreadable bytes cost that site the round (its mask is rebuilt from the shares), not the study."""
    result = run(Federation(tmp_path, RECORDS, attack={23: "undecodable"}), secure_study("federation.rounds=1"))
    (record,) = result.rounds
    assert result.aborted_rounds == [] and record.secure["survivors"] == 3 and "site-2" not in [s.name for s in record.sites]
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, 1.0), atol=1e-5)


def test_a_site_that_declares_more_records_than_allowed_never_joins_a_secure_round(tmp_path):
    fed = Federation(tmp_path, {**RECORDS, 25: 1_000_000_000})
    result = run(fed, secure_study("federation.num_sites=5", "federation.rounds=1"))
    (rejected,) = result.refusals
    assert rejected.node_id == 25 and "max_site_records" in rejected.reason
    assert result.aborted_rounds == [] and len(result.rounds) == 1


def test_a_secure_round_with_fewer_valid_replies_than_min_sites_publishes_nothing(tmp_path):
    # 5 sites, threshold 3 of 5: secure aggregation could finish with 3 survivors, but min_sites is 4
    records = {**RECORDS, 25: 500}
    fed = Federation(tmp_path, records, attack={24: "crash", 25: "crash"})
    result = run(fed, secure_study("federation.num_sites=5", "federation.min_sites=4", "federation.rounds=1"))
    assert result.rounds == []
    (aborted,) = result.aborted_rounds
    assert "3 valid masked replies" in aborted["reason"] and "federation.min_sites=4" in aborted["reason"]


# -- the pure check -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20_000), st.floats(-1.0, 1.0)), min_size=1, max_size=4),
       st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_honest_sums_always_pass(sites, size, seed):
    rng = np.random.default_rng(seed)
    clip, cap = 8.0, 10_000
    total = np.zeros(size + 1, dtype=np.uint32)
    weights = []
    for count, scale in sites:
        weight = site_weight(count, cap)
        update = np.clip(rng.uniform(-clip, clip, size) * abs(scale) + np.sign(scale) * clip * (abs(scale) > 0.9), -clip, clip)
        total += quantise_vector(update, weight, clip_range=clip, levels=LEVELS)
        weights.append(weight)
    assert sum_problem(total, weights=weights, levels=LEVELS) is None
    assert sum_problem(total, weights=[None] * len(weights), levels=LEVELS) is None


def test_a_sum_off_by_one_weight_level_fails():
    total = quantise_vector(np.zeros(3), 0.5, clip_range=1.0, levels=LEVELS)
    total[-1] += np.uint32(1)
    assert "total weight" in sum_problem(total, weights=[0.5], levels=LEVELS)
