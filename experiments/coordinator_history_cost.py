"""The coordinator's work on the DP sites' histories through a long study, before / after, in one run.

A DP site's status, sent with every reply, lists the site's whole DP history (one event per round
it trained). The coordinator parsed it four times per reply (once since ``ReplyRecords``), and the
DP certificate of every published version compares each site's history by the events' canonical
JSON. Before: every event
validated anew on every parse (``protocol._event`` as it was) and its JSON made with
``dataclasses.asdict`` on every call (``DpEvent.to_json`` as it was), both patched in here. After:
the cache of parsed events and the JSON kept with each event.

The study: the 10-site DP + secure aggregation study of the bench's "parallel" section, ROUNDS
rounds (``privacy.max_epsilon=1000`` so that every round fits), run before / after / after / before
in this process. Reported: seconds summed over the study in the certificate, the status parses and
the publishing, and the median wall time of the last 10 rounds.
Run: PYTHONPATH=. python -m experiments.coordinator_history_cost
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from experiments.bench.harness import round_walls, run_study
from experiments.bench.parallel import STUDY, VARIANTS
from experiments.site_reply_cost import old_event, old_json
from flsuite import protocol
from flsuite.coordinator import publishing
from flsuite.privacy.events import DpEvent

ROUNDS = 40
TIMED = {"certificates": (publishing.RegistryPublisher, "_certificate"), "status parses": (protocol.SiteStatus, "from_record"),
         "publishing": (publishing.RegistryPublisher, "_publish")}


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    seconds: dict[str, float] = defaultdict(float)
    patches = []
    for label, (owner, name) in TIMED.items():
        function = owner.__dict__[name]
        inner = function.__func__ if isinstance(function, classmethod) else function

        def wrapper(*args, inner=inner, label=label, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started
        patches.append(mock.patch.object(owner, name, classmethod(wrapper) if isinstance(function, classmethod) else wrapper))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield seconds


def one_study(variant: str, root: Path) -> dict[str, float]:
    protocol._validated_event.cache_clear()
    with contextlib.ExitStack() as stack:
        if variant == "before":
            stack.enter_context(mock.patch.object(protocol, "_event", old_event))
            stack.enter_context(mock.patch.object(DpEvent, "to_json", old_json))
        seconds = stack.enter_context(timed())
        summary, output = run_study([*STUDY, f"federation.rounds={ROUNDS}", *VARIANTS["DP + secure aggregation"],
                                     "privacy.max_epsilon=1000"], root)
    if summary["status"] != "completed":
        raise RuntimeError(f"the study did not complete: {summary.get('reasons')}")
    return {**seconds, "last 10 rounds, median wall": statistics.median(round_walls(output)[-10:])}


def main() -> None:
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="coordinator-history-") as tmp:
        for variant in ("before", "after", "after", "before"):
            results[variant].append(one_study(variant, Path(tmp)))
    print(f"| over {ROUNDS} rounds (s) | before | after |")
    print("|---|---|---|")
    for label in [*TIMED, "last 10 rounds, median wall"]:
        runs = {variant: ", ".join(f"{run[label]:.2f}" for run in results[variant]) for variant in results}
        print(f"| {label} | {runs['before']} | {runs['after']} |")


if __name__ == "__main__":
    main()
