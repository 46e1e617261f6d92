"""What a train reply must be before the coordinator averages it, and what a site weighs.

``update_problem`` checks a plain round's reply against the global model: the same array
names, shapes and dtypes, every value finite, and the update norm ||w_site - w_global||
within ``federation.max_update_norm``. ``reply_weight_problem`` holds a reply to the record
count its site declared: its num-examples (and the count in its status, when it sends
one) must equal the declaration, which is the site's aggregation weight.

``DeclaredSizes`` is where those declarations come from: each node's status reply
(``planning.status_replies``), asked once, the first time the node is available, or the
privacy plan's counts in a DP study. A count must be a whole number from 1 to
``federation.max_site_records``; a node that declares none or too many is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid

from flsuite import protocol
from flsuite.coordinator.planning import status_replies
from flsuite.coordinator.reply_records import ReplyRecords
from flsuite.models import array_values

__all__ = ["DeclaredSizes", "Declarations", "reply_weight_problem", "status_count_problem", "update_problem"]

_SHOWN = 3  # names listed in a message before "..."


def update_problem(global_arrays: Mapping[str, np.ndarray], content: RecordDict, *, max_update_norm: float | None) -> str | None:
    """Why the reply's model cannot be averaged with ``global_arrays`` (the global model, decoded once a round), or None."""
    local = content.array_records.get(protocol.ARRAYS)
    if local is None:
        return f"the reply carries no model (ArrayRecord {protocol.ARRAYS!r})"
    missing = [key for key in global_arrays if key not in local]
    extra = [key for key in local if key not in global_arrays]
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(extra)}"] if extra else [])
        return "the reply's arrays are not the global model's: " + ", ".join(parts)
    squared = 0.0
    for key in global_arrays:
        try:
            got = array_values(local[key])
        except Exception as error:  # bytes that do not decode as the array they claim to be
            return f"array {key!r} cannot be read ({type(error).__name__}: {error})"
        expected = global_arrays[key]
        if got.shape != expected.shape:
            return f"array {key!r} has shape {tuple(got.shape)}, the global model's is {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"array {key!r} has dtype {got.dtype}, the global model's is {expected.dtype}"
        if got.dtype.kind in "fc" and not np.all(np.isfinite(got)):
            bad = int(np.count_nonzero(~np.isfinite(got)))
            return f"array {key!r} has {bad} value(s) that are not finite (NaN or inf)"
        diff = got.astype(np.float64) - expected.astype(np.float64)
        squared += float(np.dot(diff.ravel(), diff.ravel()))
    norm = math.sqrt(squared)
    if not math.isfinite(norm) or (max_update_norm is not None and norm > max_update_norm):
        return (f"the update norm ||w_site - w_global|| = {norm:.4g} is beyond federation.max_update_norm={max_update_norm:g} "
                "(raise it if honest sites move this far)")
    return None


def reply_weight_problem(content: RecordDict, records: ReplyRecords, *, declared: int | None) -> str | None:
    """Why the reply's example count is not its site's declared count (or, undeclared, not a count), or None."""
    metrics = content.metric_records.get(protocol.METRICS)
    if metrics is None or protocol.NUM_EXAMPLES not in metrics:
        return f"the reply carries no {protocol.NUM_EXAMPLES!r} in its MetricRecord {protocol.METRICS!r}"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f"metric {key!r} is not finite ({value!r})"
    count = metrics[protocol.NUM_EXAMPLES]
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return f"{protocol.NUM_EXAMPLES}={count!r} is not a positive whole number"
    if declared is not None and count != declared:
        return f"{protocol.NUM_EXAMPLES}={count} disagrees with the {declared} records its site declared (its aggregation weight)"
    if declared is not None and records.has_status:
        return status_count_problem(records, declared=declared)
    return None


def status_count_problem(records: ReplyRecords, *, declared: int) -> str | None:
    """Why a reply's site status (sent: ``records.has_status``) disagrees with the declared record count, or None."""
    if records.status is None:
        return f"the reply's site status is unusable ({records.status_error})"
    if records.status.records != declared:
        return f"the reply's status declares {records.status.records} records, the site declared {declared} (its aggregation weight)"
    return None


@dataclass
class Declarations:
    """One status query's outcome: who declared a usable count, who was rejected, who did not answer."""

    declared: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    silent: dict[int, str] = field(default_factory=dict)


class DeclaredSizes:
    """Each node's declared record count: the weight its updates are averaged with."""

    def __init__(self, grid: Grid, *, timeout_s: float, max_records: int, known: Mapping[int, int] | None = None) -> None:
        self.grid = grid
        self.timeout_s = timeout_s
        self.max_records = max_records
        self.known = known if known is not None else {}  # e.g. a DP plan's counts (a live mapping)
        self.records: dict[int, int] = {}

    def get(self, node: int) -> int | None:
        if node in self.records:
            return self.records[node]
        return self.known.get(node)

    def declare(self, nodes: list[int]) -> Declarations:
        """Ask the nodes without a declaration for their status; record the usable counts."""
        answers = Declarations()
        unknown = [n for n in nodes if self.get(n) is None]
        if not unknown:
            return answers
        replies = status_replies(self.grid, unknown, timeout=self.timeout_s)
        for node in unknown:
            status = replies.statuses.get(node)
            if status is None:
                why = replies.failures.get(node, "no status reply")
                if why.startswith("an unusable status reply"):
                    answers.rejected[node] = why
                else:
                    answers.silent[node] = why
                continue
            answers.names[node] = status.name
            why = self.count_problem(status.records)
            if why is not None:
                answers.rejected[node] = why
                continue
            self.records[node] = answers.declared[node] = status.records
        return answers

    def count_problem(self, records: int) -> str | None:
        if records < 1:
            return f"the site declares {records} training records: it needs at least 1 to be averaged"
        if records > self.max_records:
            return (f"the site declares {records} training records, more than federation.max_site_records={self.max_records} "
                    "(its declared count is its aggregation weight)")
        return None


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")
