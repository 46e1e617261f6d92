"""Deployed secure DP round time (issue 14.3): a coordinator and 3 sites as real processes.

Starts a TLS federation with node authentication on this machine (``flsuite.deployment.testing``),
launches a 2-round study with secure aggregation and DP with `flsuite launch --verbose`, and
reports the total wall time, each round's wall time (metrics.json), each exchange's duration
(the coordinator logs one line per send-and-receive, ``flsuite.coordinator.polling``) and the
cold start of a ClientApp process with and without torch. Every process it starts is stopped by
PID at the end.

Each exchange is also broken down into its steps (``breakdown``), from the trace every flsuite
process appends to when ``FLSUITE_TRACE_TIMING`` names a file (``flsuite.timing``; this script
sets it): the coordinator's push until the site's node has stored the message (push and the
node's idle poll), until the ClientApp process exists (the node pulls the message, SuperExec's
task poll, fork or exec), until the app module starts importing (Flower's runtime start: its
imports, pulling the task, installing the FAB), the app import, the handler, the reply's way
back to the node, the node's push, and the coordinator's pull. Steps are averaged over the
sites; ``total`` is the exchange's own duration (until its last reply). ``--profile DIR``
also profiles every handler call (``FLSUITE_TRACE_PROFILE``) and sums the train handler's
main steps (``train_profile``). A checkout without the trace (before issue 14.3) reports
no breakdown. The flsuite it measures is the one on PYTHONPATH (this checkout by default):
run it from an older checkout for a before/after comparison.

Run: PYTHONPATH=. python -m experiments.deployed_round [--rounds 2] [--out experiments/results/deployed_round.json]
     [--profile DIR]
     (about 1-3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXCHANGE = re.compile(r"exchange (\d+) \((\w+)\): (\d+) of (\d+) replies in ([0-9.]+) s")
COLD_START = {
    "clientapp, secure-aggregation stage (no torch)": "import clients.app, flsuite.site.secure_aggregation",
    "clientapp, train/evaluate (torch)": "import clients.app, flsuite.site.handlers, flsuite.site.privacy_guard",
}


def cold_start_s(statement: str, env: dict[str, str], repeats: int = 3) -> float:
    """Median wall time of a fresh Python process that runs `statement`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], env=env, check=True, cwd=REPO)  # noqa: S603
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


#: Steps of one message, as (name, from event, to event); see the module docstring.
STEPS = (
    ("push and node poll", "coordinator-push", "node-received"),
    ("to process start", "node-received", "process-started"),
    ("flower runtime start", "process-started", "clientapp-import"),
    ("app import", "clientapp-import", "clientapp-built"),
    ("to handler", "clientapp-built", "handler-start"),
    ("handler", "handler-start", "handler-end"),
    ("reply to node", "handler-end", "node-reply-stored"),
    ("node push", "node-reply-stored", "node-deleted"),
    ("coordinator pull", "node-deleted", "coordinator-reply"),
)
#: The train handler's main steps in a cProfile of it: (name, (file ending, function)) whose cumulative time counts.
TRAIN_STEPS = (
    ("site setup (config, data)", ("site/handlers.py", "site_setup")),
    ("model build (model shape)", ("site/handlers.py", "site_model")),
    ("privacy status (accounting)", ("site/privacy_guard.py", "status")),
    ("privacy check and reservation (accounting, ledger)", ("site/privacy_guard.py", "reserve")),
    ("DP-SGD training (Opacus)", ("privacy/dp_training.py", "train_dp")),
    ("ledger write (spend)", ("site/privacy_guard.py", "spend")),
    ("masking", ("secagg/site.py", "mask_update")),
)


def read_trace(path: Path) -> list[dict]:
    """The trace's JSON lines in time order (flsuite.timing's format), or [] without a trace.

    flsuite.timing.read_trace's twin, kept here because this script also measures older
    checkouts (the "before" of a comparison), which have no flsuite.timing to import."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return sorted(events, key=lambda event: event["t"])


def breakdown(events: list[dict]) -> list[dict]:
    """Per exchange: its kind, its duration and each step's time averaged over its messages."""
    def first(name: str, key: str) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for event in events:
            if event["event"] == name:
                found.setdefault(event[key], event)
        return found

    pushes = {event["exchange"]: event for event in events if event["event"] == "coordinator-push"}
    pushed = {event["exchange"]: event for event in events if event["event"] == "coordinator-pushed"}
    received, started, ended = first("node-received", "message_id"), first("handler-start", "message_id"), first("handler-end", "message_id")
    imported, built = first("clientapp-import", "pid"), first("clientapp-built", "pid")
    stored, replied = first("node-reply-stored", "reply_to"), first("coordinator-reply", "reply_to")
    sent: dict[str, dict] = {}
    for event in events:
        if event["event"] == "node-deleted":
            for message_id in event["message_ids"]:
                sent.setdefault(message_id, event)
    rows = []
    for number in sorted(pushed):
        times: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
        ends = []
        for message_id in pushed[number]["message_ids"]:
            try:
                pid = started[message_id]["pid"]
                at = {"coordinator-push": pushes[number]["t"], "node-received": received[message_id]["t"],
                      "process-started": imported[pid]["process_started"], "clientapp-import": imported[pid]["t"],
                      "clientapp-built": built[pid]["t"], "handler-start": started[message_id]["t"],
                      "handler-end": ended[message_id]["t"], "node-reply-stored": stored[message_id]["t"],
                      "node-deleted": sent[message_id]["t"], "coordinator-reply": replied[message_id]["t"]}
            except (KeyError, TypeError):
                continue  # a message that was dropped or refused before a handler ran
            for name, begin, end in STEPS:
                times[name].append(at[end] - at[begin])
            ends.append(at["coordinator-reply"])
        if not ends:
            continue
        row = {"exchange": number, "kind": started[pushed[number]["message_ids"][0]].get("kind") if
               pushed[number]["message_ids"][0] in started else pushes[number]["kind"],
               "total": round(max(ends) - pushes[number]["t"], 2)}
        row.update({name: round(sum(values) / len(values), 2) for name, values in times.items() if values})
        rows.append(row)
    return rows


def train_profile(folder: Path) -> dict[str, float]:
    """The train handler's main steps (median over its calls), from the cProfile files in folder."""
    import pstats

    files = sorted(folder.glob("*-train.prof"))
    if not files:
        return {}
    per_step: dict[str, list[float]] = {name: [] for name, _ in TRAIN_STEPS}
    totals = []
    for path in files:
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        cumulative: dict[tuple[str, str], float] = {}
        for (filename, _, function), (_, _, _, cum, _) in stats.items():
            key = ("/".join(Path(filename).parts[-2:]), function)
            cumulative[key] = max(cumulative.get(key, 0.0), cum)
        totals.append(max(cumulative.values()))
        for name, key in TRAIN_STEPS:
            per_step[name].append(cumulative.get(key, 0.0))
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    result = {"handler (profiled)": round(median(totals), 2)}
    result.update({name: round(median(values), 2) for name, values in per_step.items()})
    return result


def run(rounds: int, env: dict[str, str]) -> dict:
    from flsuite.deployment.processes import flower_executable
    from flsuite.deployment.testing import running_federation, write_federation, write_site_data
    from flsuite.site import start_site

    sites = ("hospital-a", "hospital-b", "hospital-c")
    with tempfile.TemporaryDirectory(prefix="flsuite-deployed-round-") as tmp:
        root = Path(tmp)
        # Every process of the federation inherits this environment (flsuite.timing's trace).
        os.environ["FLSUITE_TRACE_TIMING"] = env["FLSUITE_TRACE_TIMING"] = str(root / "trace.jsonl")
        files = write_federation(root / "federation", sites=sites)
        write_site_data(files)
        output = root / "study"
        overrides = [f"federation.rounds={rounds}", "federation.num_sites=3", "federation.min_sites=3",
                     "secagg.enabled=true", "privacy=dp"]
        with running_federation(files):
            for name in sites:
                start_site(files.site(name), connect_timeout=90)
            started = time.perf_counter()
            launch = subprocess.run(  # noqa: S603
                [flower_executable("flsuite"), "launch", "--verbose", *overrides, "--config", str(files.coordinator_config),
                 "--output-dir", str(output)], cwd=files.root, env=env, capture_output=True, text=True, timeout=1200,
                check=False)
            total = time.perf_counter() - started
        log = launch.stdout + launch.stderr
        if launch.returncode != 0:
            raise SystemExit(f"flsuite launch failed (exit {launch.returncode}):\n{log[-4000:]}")
        metrics = json.loads((output / "metrics.json").read_text())
        trace = read_trace(root / "trace.jsonl")
    exchanges = {int(m.group(1)): {"kind": m.group(2), "replies": int(m.group(3)), "sent": int(m.group(4)),
                                   "seconds": float(m.group(5))}
                 for m in EXCHANGE.finditer(log)}  # Flower may show a log line twice: one entry per number
    return {
        "rounds": rounds,
        "total_s": round(total, 1),
        "round_wall_s": [row.get("wall_s") for row in metrics],
        "exchanges": [exchanges[number] for number in sorted(exchanges)],
        "breakdown": breakdown(trace),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="profile every handler call into this folder")
    args = parser.parse_args()
    if args.profile:
        os.environ["FLSUITE_TRACE_PROFILE"] = str(args.profile.resolve())
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result: dict = {"load_average_at_start": [round(x, 1) for x in os.getloadavg()]}
    result["cold_start_s"] = {name: round(cold_start_s(stmt, env), 2) for name, stmt in COLD_START.items()}
    result.update(run(args.rounds, env))
    if args.profile:
        result["train_profile"] = train_profile(args.profile)
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
