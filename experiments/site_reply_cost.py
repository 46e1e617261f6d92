"""A site's per-message work outside training, before / after, in one run, alternating.

Two things every site did on every train message, whatever the study:
- encoding its trained weights into the reply's ArrayRecord: Flower's ``from_torch_state_dict``
  (``np.save`` into a buffer for each array, as ``model_to_arrays`` did before) against
  ``flsuite.models.array_codec.array_of`` (the cached header and the values' bytes: the same
  bytes, checked here);
- reading the study from the message's run_config: ``from_run_config`` validating it anew (before)
  against the cached result for an identical run_config (after).

Each figure is the best of 7 repeats of 200 calls, before and after alternating repeat by repeat.
Run: PYTHONPATH=. python -m experiments.site_reply_cost
"""

from __future__ import annotations

import platform
import timeit

import torch
from flwr.app import ArrayRecord

from flsuite.config import bridge, compose_study, to_run_config
from flsuite.config.schema import ModelConfig
from flsuite.models import build_model, model_to_arrays

CALLS, REPEATS = 200, 7
#: label -> (model, features, classes): the default study's (breast cancer) and the secure-aggregation bench's (digits)
MODELS = {
    "default study's model (logreg 30-2, 62 params)": (ModelConfig(), 30, 2),
    "MLP 64-280-280-10 (99,690 params)": (ModelConfig(name="mlp", hidden_units=280), 64, 10),
}


def best_of(before, after) -> tuple[float, float]:
    """Milliseconds per call of each, the best of REPEATS, alternating."""
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(REPEATS):
        for name, call in (("before", before), ("after", after)):
            times[name].append(timeit.timeit(call, number=CALLS) / CALLS * 1e3)
    return min(times["before"]), min(times["after"])


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


if __name__ == "__main__":
    main()
