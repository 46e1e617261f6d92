"""Per-message work outside training, at a site and at the coordinator, before / after, in one run, alternating.

Two things every site did on every train message, whatever the study:
- encoding its trained weights into the reply's ArrayRecord: Flower's ``from_torch_state_dict``
  (``np.save`` into a buffer for each array, as ``model_to_arrays`` did before) against
  ``flsuite.models.array_codec.array_of`` (the cached header and the values' bytes: the same
  bytes, checked here);
- reading the study from the message's run_config: ``from_run_config`` validating it anew (before)
  against the cached result for an identical run_config (after).

And what the coordinator did with each DP site's reply, whose status lists the site's whole DP history
(one event per round it trained, growing through a study):
- parsing that history (``SiteStatus.from_record``, three times per reply): every event validated
  anew (before: ``protocol._event`` as it was, patched in) against events seen before served from
  the cache of parsed events (after);
- the DP certificate of each published version, which compares each site's history by the events'
  canonical JSON: ``json.dumps(dataclasses.asdict(event))`` for every event every time (before)
  against the JSON kept with each event (after).

Each figure is the best of 7 repeats of 200 calls (20 for the history), before and after alternating repeat by repeat.
Run: PYTHONPATH=. python -m experiments.site_reply_cost
"""

from __future__ import annotations

import dataclasses
import json
import platform
import timeit
from unittest import mock

import torch
from flwr.app import ArrayRecord

from flsuite import protocol
from flsuite.config import bridge, compose_study, to_run_config
from flsuite.config.schema import ModelConfig
from flsuite.models import build_model, model_to_arrays

CALLS, REPEATS = 200, 7
#: label -> (model, features, classes): the default study's (breast cancer) and the secure-aggregation bench's (digits)
MODELS = {
    "default study's model (logreg 30-2, 62 params)": (ModelConfig(), 30, 2),
    "MLP 64-280-280-10 (99,690 params)": (ModelConfig(name="mlp", hidden_units=280), 64, 10),
}


HISTORY = 40  # events in a site's status: a site 40 rounds into a DP study


def best_of(before, after, calls: int = CALLS) -> tuple[float, float]:
    """Milliseconds per call of each, the best of REPEATS, alternating."""
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(REPEATS):
        for name, call in (("before", before), ("after", after)):
            times[name].append(timeit.timeit(call, number=calls) / calls * 1e3)
    return min(times["before"]), min(times["after"])


def site_status(events: int) -> dict:
    """The status record of a DP site whose ledger holds ``events`` training events."""
    history = tuple(protocol.DpEvent(study_id="study", run_id="run", round=r, site="site-1", dataset="site-1", sample_rate=0.1,
                                     noise_multiplier=1.1, steps=30, max_grad_norm=1.0, delta=1e-5, accountant="prv", rng="os",
                                     recorded_at="2026-12-01T00:00:00+00:00") for r in range(1, events + 1))
    return dict(protocol.SiteStatus(name="site-1", records=100, max_epsilon=8.0, delta=1e-5, spent_epsilon=1.0,
                                    prior_events=history).to_record())


def old_event(record: dict, *, what: str) -> protocol.DpEvent:
    """protocol._event as it was: every event validated anew."""
    for field in ("round", "steps"):
        if isinstance(record.get(field), float) and float(record[field]).is_integer():
            record[field] = int(record[field])
    return protocol.DpEvent.from_dict(record)


def parse_before(record: dict) -> protocol.SiteStatus:
    with mock.patch.object(protocol, "_event", old_event):
        return protocol.SiteStatus.from_record(record)


def old_json(event: protocol.DpEvent) -> str:
    """DpEvent.to_json as it was: dataclasses.asdict, then json.dumps, on every call."""
    record = dataclasses.asdict(event)
    if event.mechanism == "dp-sgd":
        del record["mechanism"]
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def main() -> None:
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}, one torch thread\n")
    print("| what, per train message | before (ms) | after (ms) | after / before |")
    print("|---|---|---|---|")
    for label, (config, features, classes) in MODELS.items():
        model = build_model(config, num_features=features, num_classes=classes, image_shape=None, seed=1)
        ours, flowers = model_to_arrays(model), ArrayRecord.from_torch_state_dict(model.state_dict())
        assert all(ours[key].data == flowers[key].data for key in flowers), "array_of must give Flower's bytes"
        before, after = best_of(lambda m=model: ArrayRecord.from_torch_state_dict(m.state_dict()),
                                lambda m=model: model_to_arrays(m))
        print(f"| trained weights into the reply, {label} | {before:.3f} | {after:.3f} | {after / before:.2f} |")
    run_config = to_run_config(compose_study([]))
    before, after = best_of(lambda: bridge._validated(run_config), lambda: bridge.from_run_config(run_config))
    print(f"| the study from the run_config (default study) | {before:.3f} | {after:.3f} | {after / before:.3f} |")
    record = site_status(HISTORY)
    before, after = best_of(lambda: parse_before(record), lambda: protocol.SiteStatus.from_record(record), calls=20)
    print(f"| coordinator: a DP site's status with {HISTORY} events in its history, parsed | {before:.3f} | {after:.3f} | "
          f"{after / before:.2f} |")
    events = protocol.SiteStatus.from_record(record).prior_events
    assert all(old_json(event) == event.to_json() for event in events), "to_json must keep its text"
    before, after = best_of(lambda: [old_json(e) for e in events], lambda: [e.to_json() for e in events], calls=20)
    print(f"| coordinator: the canonical JSON of those {HISTORY} events (the certificate's comparison) | {before:.3f} | "
          f"{after:.3f} | {after / before:.3f} |")


if __name__ == "__main__":
    main()
