"""The end-of-study table of per-site private evaluation: accuracy with its noise, worst site, gap.

Reads summary.json's "monitoring" section (``flsuite.coordinator.monitoring``). Numbers are
printed whole (never truncated); a table too wide for the terminal wraps its cells.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from flsuite.cli.tables import format_number

__all__ = ["monitoring_table"]


def monitoring_table(monitoring: dict[str, Any]) -> Table:
    """One row per site of the last evaluated round, the worst site and the best-worst gap, then drift."""
    final = monitoring.get("final") or {}
    title = (
        f"Per-site accuracy, round {final.get('round', '-')} (held-out records, Gaussian noise sigma "
        f"{monitoring['noise_multiplier']:g} x sensitivity {monitoring['sensitivity']:.4g}; +- is the noise std)"
    )
    table = Table(title=title)
    for column in ("site", "accuracy", "+- noise std"):
        table.add_column(column, overflow="fold")
    for name, site in (monitoring.get("sites") or {}).items():
        table.add_row(name, format_number(site['accuracy'], 3), format_number(site['noise_std'], 3))
    if final:
        table.add_row("worst site", f"{final['worst_site']} {format_number(final['worst_accuracy'], 3)}", "", style="bold")
        table.add_row("gap (best - worst)", format_number(final['gap'], 3), format_number(final['noise_std'], 3), style="bold")
    for item in monitoring.get("withheld") or []:
        table.add_row(item["site"], "withheld", item["reason"], style="yellow")
    drift = monitoring.get("drift") or {}
    for name, report in (drift.get("sites") or {}).items():
        if "withheld" in report:
            table.add_row(f"{name} drift", "withheld", report["withheld"], style="yellow")
        elif report.get("distance") is None:
            table.add_row(f"{name} drift", "first study", "")
        else:
            verdict = "DRIFTED" if report["flagged"] else "no drift"
            table.add_row(f"{name} drift", f"{verdict}: TV {format_number(report['distance'], 3)}", f"noise margin {format_number(report['margin'], 3)}",
                          style="red" if report["flagged"] else None)
    return table
