"""Secure rounds end to end through Flower Messages: secagg_mod on the sites, secure_train_round
on the coordinator, the in-process Grid in between (contents pass Flower's protobuf encoding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from flsuite.coordinator.secure_round import secure_train_round
from flsuite.flower import InProcessGrid, new_run, stage_of
from flsuite.secagg import SecAggAborted, SecAggSettings
from flsuite.site.testing import build_sites

torch.set_num_threads(1)
RUN_ID = 7


class Federation:
    """Sites whose 'training' returns global + a fixed per-site update."""

    def __init__(self, tmp_path, n_sites: int, *, updates=None, examples=None, base=1000) -> None:
        self.nodes = [base + 17 * i for i in range(n_sites)]
        self.updates: dict[int, dict[str, np.ndarray]] = updates or {}
        self.examples: dict[int, int] = examples or {}
        self.train_calls: list[int] = []
        self.handlers, self.contexts = build_sites(tmp_path, self.nodes, self.train, run_id=RUN_ID)

    def train(self, msg: Message, context: Context) -> Message:
        self.train_calls.append(context.node_id)
        assert set(msg.content.keys()) == {"arrays", "config"}  # the mod passes a plain train message on
        glob = msg.content.array_records["arrays"]
        local = {k: glob[k].numpy() + self.updates[context.node_id][k] for k in glob}
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v.astype(glob[k].numpy().dtype)) for k, v in local.items()}),
            "metrics": MetricRecord({"num-examples": self.examples[context.node_id], "train-loss": 0.5}),
            "dp-event": ConfigRecord({"noise-multiplier": 1.1, "steps": 3}),
        })
        return Message(content, reply_to=msg)

    def grid(self, **kwargs) -> InProcessGrid:
        return InProcessGrid(self.handlers, self.contexts, run=new_run(RUN_ID), wire=True, **kwargs)


def run_round(fed: Federation, grid: InProcessGrid, global_arrays: ArrayRecord, settings: SecAggSettings, server_round: int = 1):
    with grid:
        return secure_train_round(grid, node_ids=fed.nodes, server_round=server_round, global_arrays=global_arrays,
                                  train_configs={n: ConfigRecord({"lr": 0.1}) for n in fed.nodes},
                                  settings=settings, timeout_s=5.0)


def plain_average(fed: Federation, nodes, cap: int) -> dict[str, np.ndarray]:
    weights = {n: min(fed.examples[n], cap) / cap for n in nodes}
    total = sum(weights.values())
    keys = fed.updates[nodes[0]].keys()
    return {k: sum(weights[n] * fed.updates[n][k] for n in nodes) / total for k in keys}


def random_model(rng, shapes, dtype=np.float64) -> ArrayRecord:
    return ArrayRecord({f"layer{i}.weight": Array(rng.uniform(-1, 1, size=s).astype(dtype)) for i, s in enumerate(shapes)})


# --- correctness -------------------------------------------------------------------------

STAGES = ["setup", "share-keys", "train", "unmask"]


@pytest.mark.parametrize("stage, dropouts", [("none", "none")] + [(s, d) for s in STAGES for d in ("one", "limit")])
@hsettings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_secure_average_equals_plain_weighted_average_within_bound(tmp_path, stage, dropouts, data):
    n = data.draw(st.integers(3, 7) if dropouts != "limit" else st.integers(5, 7), label="sites")
    neighbours = data.draw(st.sampled_from([None] + [k for k in (2, 4) if k < n - 1]), label="neighbours")
    group = n if neighbours is None else neighbours + 1
    lowest = group // 2 + 1
    threshold = lowest if dropouts == "limit" else data.draw(st.integers(lowest, group), label="threshold")
    if dropouts == "one" and threshold == group:
        threshold = max(lowest, group - 1)
    clip = data.draw(st.sampled_from([0.05, 1.0, 30.0]), label="clip_range")
    settings = SecAggSettings(cohort_size=n, threshold=threshold, neighbours=neighbours, clip_range=clip, weight_cap=500,
                              mask_cipher=data.draw(st.sampled_from(["aes-256-ctr", "chacha20"])))
    drops = {"none": 0, "one": 1, "limit": settings.tolerated_dropouts}[dropouts]
    assert drops <= settings.tolerated_dropouts
    shapes = data.draw(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=2).map(tuple), min_size=1, max_size=3))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    fed = Federation(tmp_path, n)
    global_arrays = random_model(rng, shapes)
    for node in fed.nodes:
        fed.updates[node] = {k: rng.uniform(-clip, clip, size=global_arrays[k].numpy().shape) for k in global_arrays}
        fed.examples[node] = int(rng.integers(1, 1000))
    dropped = set(rng.choice(fed.nodes, size=drops, replace=False).tolist())
    event(f"{drops} dropout(s)")
    grid = fed.grid(drop=lambda m: stage_of(m) == stage and m.metadata.dst_node_id in dropped)

    result = run_round(fed, grid, global_arrays, settings)

    expected_survivors = [x for x in fed.nodes if not (x in dropped and stage != "unmask")]
    assert list(result.survivors) == expected_survivors
    assert set(result.dropped) == set(fed.nodes) - set(expected_survivors)
    expected = plain_average(fed, expected_survivors, cap=500)
    for key in global_arrays:
        got = result.arrays[key].numpy() - global_arrays[key].numpy()
        assert np.max(np.abs(got - expected[key])) <= result.error_bound + 1e-12
    assert result.error_bound <= 1.5 * n * clip / (settings.levels * result.total_weight) * 1.01


def test_float32_model_keeps_names_dtypes_and_passes_clear_records(tmp_path):
    rng = np.random.default_rng(1)
    fed = Federation(tmp_path, 4)
    global_arrays = random_model(rng, [(3, 2), (5,)], dtype=np.float32)
    for node in fed.nodes:
        fed.updates[node] = {k: rng.uniform(-0.5, 0.5, size=global_arrays[k].numpy().shape) for k in global_arrays}
        fed.examples[node] = 200
    settings = SecAggSettings(cohort_size=4, threshold=3, weight_cap=100)
    result = run_round(fed, fed.grid(), global_arrays, settings)
    assert list(result.arrays.keys()) == list(global_arrays.keys())
    expected = plain_average(fed, fed.nodes, cap=100)
    for key in global_arrays:
        got = result.arrays[key].numpy()
        assert got.dtype == np.float32
        want = global_arrays[key].numpy().astype(np.float64) + expected[key]
        assert np.allclose(got, want, atol=result.error_bound + 1e-6, rtol=0)
    assert result.total_weight == pytest.approx(4.0)  # 200 examples capped at 100 -> weight 1 each
    for node in fed.nodes:  # metrics and the DP event travel in clear, the weight does not
        reply = result.replies[node]
        assert dict(reply.metric_records["metrics"]) == {"train-loss": 0.5}
        assert dict(reply.config_records["dp-event"]) == {"noise-multiplier": 1.1, "steps": 3}
        assert not reply.array_records


# --- what the coordinator sees -------------------------------------------------------------

def test_coordinator_receives_only_masked_vectors_independent_of_the_update(tmp_path):
    d = 40_000
    fed = Federation(tmp_path, 3)
    global_arrays = ArrayRecord({"w": Array(np.zeros(d))})
    ramp = np.linspace(-1.0, 1.0, d)  # a strongly structured update
    for i, node in enumerate(fed.nodes):
        fed.updates[node] = {"w": ramp if i == 0 else np.full(d, 0.25)}
        fed.examples[node] = 10_000
    settings = SecAggSettings(cohort_size=3, threshold=2, clip_range=1.0)
    grid = fed.grid()
    result = run_round(fed, grid, global_arrays, settings)
    assert np.allclose(result.arrays["w"].numpy(), (ramp + 0.5) / 3, atol=result.error_bound)

    train_replies = [r for r in grid.log if r.stage == "train"]
    assert len(train_replies) == 3
    for received in grid.log:  # nothing but uint32 masked vectors ever arrives as an array
        content = received.message.content
        assert set(content.array_records) <= {"secagg-masked"}
        for record in content.array_records.values():
            assert [a.numpy().dtype for a in record.values()] == [np.uint32]
        assert all("num-examples" not in m for m in content.metric_records.values())
    masked = next(r for r in train_replies if r.node == fed.nodes[0]).message.content["secagg-masked"]["masked"].numpy()
    assert masked.shape == (d + 1,)  # the update and the weight, nothing else
    masked = masked[:-1]
    levels = settings.levels
    quantised = np.rint((ramp + 1.0) * levels / 2.0)
    # uniform over [0, 2**32): chi-square over the top 4 bits, 15 dof, p < 1e-6 needs > 53.0
    counts = np.bincount(masked >> np.uint32(28), minlength=16)
    chi2 = float(((counts - d / 16) ** 2 / (d / 16)).sum())
    assert chi2 < 53.0
    # uncorrelated with the true (quantised) update: |r| < 6 / sqrt(d)
    r = np.corrcoef(masked.astype(np.float64), quantised)[0, 1]
    assert abs(r) < 6 / np.sqrt(d)
    assert np.count_nonzero(masked == quantised) < 5


def test_same_update_is_masked_differently_each_round(tmp_path):
    fed = Federation(tmp_path, 3)
    global_arrays = ArrayRecord({"w": Array(np.zeros(64))})
    for node in fed.nodes:
        fed.updates[node] = {"w": np.full(64, 0.1)}
        fed.examples[node] = 5
    settings = SecAggSettings(cohort_size=3, threshold=2)
    seen = []
    for server_round in (1, 2):
        grid = fed.grid()
        run_round(fed, grid, global_arrays, settings, server_round=server_round)
        seen.append(next(r for r in grid.log if r.stage == "train").message.content["secagg-masked"]["masked"].numpy())
    assert np.count_nonzero(seen[0] == seen[1]) < 3


# --- dropouts and aborts ----------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_too_many_dropouts_abort_and_nothing_is_unmasked(tmp_path, stage):
    fed = Federation(tmp_path, 5)
    global_arrays = ArrayRecord({"w": Array(np.zeros(8))})
    for node in fed.nodes:
        fed.updates[node] = {"w": np.full(8, 0.1)}
        fed.examples[node] = 5
    settings = SecAggSettings(cohort_size=5, threshold=3)  # tolerates 2 dropouts
    lost = set(fed.nodes[:3])
    grid = fed.grid(drop=lambda m: stage_of(m) == stage and m.metadata.dst_node_id in lost)
    with pytest.raises(SecAggAborted) as info:
        run_round(fed, grid, global_arrays, settings)
    assert info.value.stage == stage
    assert "Nothing was unmasked" in str(info.value) or stage == "unmask"
    shares_out = [r for r in grid.log if r.stage == "unmask"]
    if stage == "unmask":  # two answers, each with shares of no more than 2 < threshold holders
        assert len(shares_out) == 2
    else:
        assert shares_out == []
        assert not any(m.content.config_records["secagg"]["stage"] == "unmask" for m in grid.sent)


def test_sites_that_drop_before_training_are_never_trained(tmp_path):
    fed = Federation(tmp_path, 4)
    global_arrays = ArrayRecord({"w": Array(np.zeros(4))})
    for node in fed.nodes:
        fed.updates[node] = {"w": np.full(4, 0.2)}
        fed.examples[node] = 10
    lost = fed.nodes[0]
    grid = fed.grid(drop=lambda m: stage_of(m) == "setup" and m.metadata.dst_node_id == lost)
    result = run_round(fed, grid, global_arrays, SecAggSettings(cohort_size=4, threshold=3))
    assert lost not in fed.train_calls and lost in result.dropped
    assert np.allclose(result.arrays["w"].numpy(), 0.2, atol=result.error_bound)


def test_round_rejects_wrong_cohort_size_and_infinite_timeout(tmp_path):
    from flsuite.errors import ConfigError

    fed = Federation(tmp_path, 3)
    global_arrays = ArrayRecord({"w": Array(np.zeros(2))})
    grid = fed.grid()
    with grid, pytest.raises(ConfigError, match="cohort_size"):
        secure_train_round(grid, node_ids=fed.nodes, server_round=1, global_arrays=global_arrays,
                           train_configs={n: ConfigRecord() for n in fed.nodes},
                           settings=SecAggSettings(cohort_size=4, threshold=3), timeout_s=5)
    with grid, pytest.raises(ConfigError, match="timeout"):
        secure_train_round(grid, node_ids=fed.nodes, server_round=1, global_arrays=global_arrays,
                           train_configs={n: ConfigRecord() for n in fed.nodes},
                           settings=SecAggSettings(cohort_size=3, threshold=2), timeout_s=float("inf"))
