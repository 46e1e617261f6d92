"""Deployed secure DP round time (issue 14.3): a coordinator and 3 sites as real processes.

Starts a TLS federation with node authentication on this machine (``flsuite.deployment.testing``),
launches a 2-round study with secure aggregation and DP with `flsuite launch --verbose`, and
reports the total wall time, each round's wall time (metrics.json), each exchange's duration
(the coordinator logs one line per send-and-receive, ``flsuite.coordinator.polling``) and the
cold start of a ClientApp process with and without torch. Every process it starts is stopped by
PID at the end. The flsuite it measures is the one on PYTHONPATH (this checkout by default):
run it from an older checkout for a before/after comparison.

Run: PYTHONPATH=. python -m experiments.deployed_round [--rounds 2] [--out experiments/results/deployed_round.json]
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


def run(rounds: int, env: dict[str, str]) -> dict:
    from flsuite.deployment.processes import flower_executable
    from flsuite.deployment.testing import running_federation, write_federation, write_site_data
    from flsuite.site import start_site

    sites = ("hospital-a", "hospital-b", "hospital-c")
    with tempfile.TemporaryDirectory(prefix="flsuite-deployed-round-") as tmp:
        root = Path(tmp)
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
    exchanges = {int(m.group(1)): {"kind": m.group(2), "replies": int(m.group(3)), "sent": int(m.group(4)),
                                   "seconds": float(m.group(5))}
                 for m in EXCHANGE.finditer(log)}  # Flower may show a log line twice: one entry per number
    return {
        "rounds": rounds,
        "total_s": round(total, 1),
        "round_wall_s": [row.get("wall_s") for row in metrics],
        "exchanges": [exchanges[number] for number in sorted(exchanges)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result: dict = {"load_average_at_start": [round(x, 1) for x in os.getloadavg()]}
    result["cold_start_s"] = {name: round(cold_start_s(stmt, env), 2) for name, stmt in COLD_START.items()}
    result.update(run(args.rounds, env))
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
