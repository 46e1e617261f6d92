"""The privacy audit of issue 11, run as an auditor would, from the command line only.

On one fresh ``sites_dir``: three default studies, then one with ``data.dirichlet_alpha=0.6``
(re-partitioned records), one with ``privacy.max_epsilon=100`` (a study trying to raise the
sites' caps), one with ``privacy.delta=0.006``, then two default studies at the same time.
After each step it recomputes every site's total epsilon from the site's own ledger with
Google's dp_accounting PLD accountant (not flsuite's code) and checks it against the site's
cap. A refused study must exit with the documented code (2: the plan does not fit; 3: the
study ended early) and name the site and the reason.

Run: ``python -m experiments.privacy_audit [--out experiments/results/privacy_audit.json]``
(about 5-10 minutes on 2 cores). It prints one line per step and writes the JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def audit(sites_dir: Path) -> dict[str, dict[str, Any]]:
    """Per site: the ledger checked against its signed head (the pinned identity's signature), its
    total epsilon recomputed with dp_accounting's PLD from every charged event, and its cap."""
    from flsuite.privacy import audit_ledger
    from flsuite.secagg import load_pinned_identities

    pinned = load_pinned_identities(sites_dir / "identities.json")
    result = {}
    for folder in sorted(p for p in sites_dir.iterdir() if p.is_dir() and (p / "site.json").exists()):
        cap = json.loads((folder / "site.json").read_text())
        found = audit_ledger(folder / "ledger.jsonl", public_key=pinned.get(folder.name))
        total = found.epsilon_pld or 0.0
        result[folder.name] = {
            "pld_total": total,
            "max_epsilon": float(cap["max_epsilon"]),
            "delta": float(cap["delta"]),
            "ledger_verified": found.ok,
            "within_cap": total <= float(cap["max_epsilon"]) + 1e-9,
        }
    return result


def flsuite_run(sites_dir: Path, out: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "flsuite.cli.main", "run", f"sites_dir={sites_dir}", *overrides, "--output-dir", str(out)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen, out: Path, started: float) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=1800)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    message = (stderr.strip().splitlines() or [""])[-1]
    return {
        "exit_code": process.returncode,
        "status": summary.get("status", "refused before round 1" if process.returncode == 2 else "no summary"),
        "final_accuracy": summary.get("final_accuracy"),
        "wall_s": round(time.perf_counter() - started, 1),
        "message": message[:400],
        "traceback": "Traceback" in stderr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "privacy_audit.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flsuite-audit-"))
    sites = root / "sites"
    steps: list[tuple[str, list[list[str]]]] = [
        ("default study 1", [[]]),
        ("default study 2", [[]]),
        ("default study 3", [[]]),
        ("re-partitioned (data.dirichlet_alpha=0.6)", [["data.dirichlet_alpha=0.6"]]),
        ("a study asking privacy.max_epsilon=100", [["privacy.max_epsilon=100"]]),
        ("a study asking privacy.delta=0.006", [["privacy.delta=0.006"]]),
        ("two default studies at the same time", [[], []]),
    ]
    record: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version(), "steps": []}
    for index, (label, runs) in enumerate(steps):
        started = time.perf_counter()
        processes = [(flsuite_run(sites, root / f"step{index}-{n}", *overrides), root / f"step{index}-{n}") for n, overrides in enumerate(runs)]
        outcomes = [finish(process, out, started) for process, out in processes]
        totals = audit(sites)
        step = {
            "step": label,
            "runs": outcomes,
            "sites": totals,
            "every_site_within_cap": all(s["within_cap"] for s in totals.values()),
            "every_ledger_verified": all(s["ledger_verified"] for s in totals.values()),
        }
        record["steps"].append(step)
        codes = ", ".join(f"exit {o['exit_code']} ({o['status']})" for o in outcomes)
        worst = max(totals.values(), key=lambda s: s["pld_total"] / s["max_epsilon"])
        print(f"{label}: {codes}; highest site total (PLD) {worst['pld_total']:.3f} of cap {worst['max_epsilon']:g}; "
              f"all within cap: {step['every_site_within_cap']}; every ledger verified against its signed head: "
              f"{step['every_ledger_verified']}", flush=True)
        for outcome in outcomes:
            if outcome["exit_code"] != 0:
                print(f"    refused: {outcome['message']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
