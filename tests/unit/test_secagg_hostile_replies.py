"""One hostile site cannot crash a secure round, nor make it publish a wrong average, by what it replies.

Found by fuzzing the coordinator with one site that rewrites its own replies: a signature that is
text, a status record whose numbers do not parse, a metric that is a list, a garbage DP record made
exceptions escape the round; a forged setup signature made every honest neighbour refuse (and be
counted as missing); a garbage masked vector without declared weights was published. Now the site
is dropped and the round goes on with the others, or the round aborts and publishes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flsuite import protocol
from flsuite.coordinator.rounds import RoundRules
from flsuite.coordinator.secure_round import SecureTrainRound, secure_train_round
from flsuite.flower import InProcessGrid, new_run
from flsuite.secagg import SecAggAborted, SecAggSettings, load_pinned_identities
from flsuite.site.testing import build_sites

RUN_ID = 7
UPDATE = 0.1


class Federation:
    """Five honest sites behind the real secagg mod, one of which (``hostile``) may rewrite its replies at a stage."""

    def __init__(self, tmp_path, *, stage: str | None = None, rewrite=None, n: int = 5) -> None:
        self.nodes = [2000 + 3 * i for i in range(n)]
        self.hostile = self.nodes[0]
        handlers, self.contexts = build_sites(tmp_path, self.nodes, self.train, run_id=RUN_ID)
        self.pinned = load_pinned_identities(tmp_path / "identities.json")
        honest = handlers[self.hostile]

        def hostile(msg: Message, context: Context) -> Message:
            reply = honest(msg, context)
            record = reply.content.config_records.get(protocol.SECAGG_RECORD) if reply.has_content() else None
            if record is not None and record.get("stage") == stage:
                rewrite(reply, dict(record))
            return reply
        self.handlers = {**handlers, self.hostile: hostile}

    def train(self, msg: Message, context: Context) -> Message:
        w = msg.content["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w + UPDATE)}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    def grid(self) -> InProcessGrid:
        return InProcessGrid(self.handlers, self.contexts, run=new_run(RUN_ID), wire=True)

    def secure_round(self, *, declared: bool = True, pinned: bool = True, size: int = 6):
        with self.grid() as grid:
            return secure_train_round(grid, node_ids=self.nodes, server_round=1,
                                      global_arrays=ArrayRecord({"w": Array(np.zeros(size))}),
                                      train_configs={n: ConfigRecord() for n in self.nodes},
                                      settings=SecAggSettings(cohort_size=len(self.nodes), threshold=3), timeout_s=30,
                                      declared={n: 10 for n in self.nodes} if declared else None,
                                      pinned=self.pinned if pinned else None)

    def study_round(self):
        """The round as the study's loop calls it (records parsed for the site reports)."""
        initial = ArrayRecord({"w": Array(np.zeros(6))})
        with self.grid() as grid:
            round_ = SecureTrainRound(grid, FedAvg(), settings_for=lambda n: SecAggSettings(cohort_size=n, threshold=3),
                                      timeout_s=30, pinned=self.pinned)
            return round_(1, self.nodes, {n: ConfigRecord({protocol.SERVER_ROUND: 1}) for n in self.nodes}, initial,
                          RoundRules(declared={n: 10 for n in self.nodes}))


def assert_dropped_and_averaged_without(result, fed: Federation, words: str) -> None:
    assert fed.hostile not in result.survivors and len(result.survivors) == len(fed.nodes) - 1
    assert words in result.refusals[fed.hostile]
    np.testing.assert_allclose(result.arrays["w"].numpy(), UPDATE, atol=result.error_bound + 1e-9)
    assert set(result.missed) <= {fed.hostile}  # no honest site is counted as missing the round


def setup_field(field: str, value):
    def rewrite(reply: Message, record: dict) -> None:
        record[field] = value
        reply.content[protocol.SECAGG_RECORD] = ConfigRecord(record)
    return rewrite


@pytest.mark.parametrize(("field", "value"), [("signature", "x" * 64), ("signature", list(range(64))), ("site-name", 7)])
def test_a_setup_reply_of_the_wrong_types_drops_its_site(tmp_path, field, value):
    fed = Federation(tmp_path, stage="setup", rewrite=setup_field(field, value))
    assert_dropped_and_averaged_without(fed.secure_round(), fed, "malformed setup reply")


@pytest.mark.parametrize(("field", "value"), [("signature", bytes(64)), ("site-name", "site-1"), ("site-name", "mallory")],
                         ids=["forged signature", "another site's name", "an unpinned name"])
def test_a_setup_reply_not_signed_by_its_pinned_identity_drops_its_site_and_no_honest_one(tmp_path, field, value):
    """Forwarded, it made every honest neighbour refuse the round, and those honest sites counted as missing."""
    fed = Federation(tmp_path, stage="setup", rewrite=setup_field(field, value))
    assert_dropped_and_averaged_without(fed.secure_round(), fed, "pinned identity")


def test_without_pinned_identities_a_forged_signature_aborts_the_round_and_publishes_nothing(tmp_path):
    fed = Federation(tmp_path, stage="setup", rewrite=setup_field("signature", bytes(64)))
    with pytest.raises(SecAggAborted, match="unsigned-peer-key"):
        fed.secure_round(pinned=False)


def add_record(name: str, record):
    def rewrite(reply: Message, _: dict) -> None:
        reply.content[name] = record
    return rewrite


STATUS = {"name": "site-0", "records": 10, "max-epsilon": 1.0, "delta": 1e-5, "spent-epsilon": 0.0,
          **{f"prior-{field}": [] for field in ("study_id", "run_id", "round", "site", "dataset", "sample_rate", "noise_multiplier",
                                                  "steps", "max_grad_norm", "delta", "accountant", "rng", "recorded_at", "mechanism")}}


@pytest.mark.parametrize("status", [{**STATUS, "max-epsilon": "abc"}, {**STATUS, "max-epsilon": [1.0]}, {**STATUS, "prior-round": 5}],
                         ids=["text epsilon", "list epsilon", "prior rounds not a list"])
def test_a_status_record_whose_values_do_not_parse_drops_its_site_before_unmasking(tmp_path, status):
    fed = Federation(tmp_path, stage="train", rewrite=add_record(protocol.SITE, ConfigRecord(status)))
    assert_dropped_and_averaged_without(fed.secure_round(), fed, "site status")


def test_a_garbage_dp_record_drops_its_site_and_a_list_metric_is_left_out_of_the_report(tmp_path):
    fed = Federation(tmp_path, stage="train", rewrite=add_record(protocol.DP_EVENT, ConfigRecord({"x": 1})))
    outcome = fed.study_round()
    assert outcome.aborted is None and fed.hostile not in {site.node_id for site in outcome.sites}
    assert any(r.node_id == fed.hostile and "DP event" in r.reason for r in outcome.refusals)

    fed = Federation(tmp_path / "metrics", stage="train",
                     rewrite=add_record(protocol.METRICS, MetricRecord({"loss": [1.0, 2.0], "accuracy": 0.5})))
    outcome = fed.study_round()
    assert outcome.aborted is None and len(outcome.sites) == len(fed.nodes)
    hostile = next(site for site in outcome.sites if site.node_id == fed.hostile)
    assert hostile.metrics == {"accuracy": 0.5}


def test_a_garbage_masked_vector_is_not_published_even_without_declared_weights(tmp_path):
    def garbage(reply: Message, _: dict) -> None:
        masked = reply.content.array_records[protocol.MASKED_RECORD][protocol.MASKED_VECTOR].numpy()
        noise = np.random.default_rng(0).integers(0, 2**32, size=masked.size, dtype=np.uint64).astype(np.uint32)
        reply.content[protocol.MASKED_RECORD] = ArrayRecord({protocol.MASKED_VECTOR: Array(noise)})
    fed = Federation(tmp_path, stage="train", rewrite=garbage)
    with pytest.raises(SecAggAborted, match="beyond the clip range"):  # each of 1,000 coordinates lands beyond it at random
        fed.secure_round(declared=False, size=1000)
