"""The auditor's report as one self-contained HTML page, rendered from an `auditor_report` dict.

The page needs nothing else: styles are inline, plots are inline PNG data, and it names no
URL, so an auditor opens it offline and the browser fetches nothing. Every string that came
from the registry or a ledger is untrusted and goes through ``html.escape`` (text and
attributes alike); numbers are printed, never truncated. A failure is shown as a red banner
and red rows, not a footnote. Pure: no torch, no flwr.
"""

from __future__ import annotations

import html
import math
from typing import Any

from flsuite.registry.report_plots import epsilon_plot, metrics_plot

__all__ = ["render_html"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;color:#1b1f24;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #d0d7de}
h3{font-size:1.02em;margin:18px 0 6px}
.banner{padding:14px 18px;border-radius:6px;font-size:1.15em;font-weight:600;margin:14px 0}
.banner.ok{background:#dafbe1;border:1px solid #2da44e;color:#116329}
.banner.failure{background:#ffebe9;border:2px solid #cf222e;color:#82071e}
table{border-collapse:collapse;margin:6px 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td[data-field=site]{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failure td{background:#ffebe9;color:#82071e}tr.ok td.status{color:#116329;font-weight:600}
tr.failure td.status{font-weight:700}tr.warn td.status{color:#9a6700;font-weight:600}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
ul.failures li{color:#82071e}.muted{color:#57606a;font-size:.9em}
img.plot{max-width:100%;border:1px solid #d0d7de;margin:6px 0}
details{margin:6px 0}summary{cursor:pointer}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return _e(value)
    return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"


def _g(value: Any) -> str:
    return _e(f"{value:g}") if isinstance(value, float) else _e(value)


def _head(head: Any) -> str | None:
    return f"{head['entries']} entries, {head['hash'][:16]}..." if isinstance(head, dict) else None


def _td(value: Any, field: str | None = None, *, num: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "num" if num else "") if c)
    attrs = (f' class="{classes}"' if classes else "") + (f' data-field="{_e(field)}"' if field else "")
    return f"<td{attrs}>{_num(value) if num else _e('-' if value is None else value)}</td>"


def _table(headers: list[str], rows: list[str], table_id: str | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    attrs = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(report: dict[str, Any], *, generated_at: str = "") -> str:
    """The whole page for ``report`` (an `auditor_report` dict)."""
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>flsuite audit report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>flsuite audit report</h1>",
        f"<p class=\"muted\">Registry <span class=\"mono\">{_e(report['registry'])}</span>"
        + (f"; generated {_e(generated_at)}" if generated_at else "") + "</p>",
        _banner(report),
        _verification(report["verification"]),
        _privacy(report),
        _ledgers(report["ledgers"]),
        _plots(report["versions"]),
        _versions(report["versions"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _banner(report: dict[str, Any]) -> str:
    verification = report["verification"]
    if report["ok"]:
        text = (f"VERIFIED: {verification['verdict'].removeprefix('VERIFIED: ')}; every privacy claim covers "
                "its PLD recomputation")
        return f"<div id=\"verdict\" class=\"banner ok\" data-status=\"ok\">{_e(text)}</div>"
    reasons = [] if verification["ok"] else [f"the registry does not verify: {verification['verdict']}"]
    reasons += report["failures"]
    items = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    return (f"<div id=\"verdict\" class=\"banner failure\" data-status=\"failure\">FAILURE: "
            f"{len(reasons)} problem(s) found</div><ul class=\"failures\">{items}</ul>")


def _verification(verification: dict[str, Any]) -> str:
    rows = []
    for name, check in verification["checks"].items():
        detail = "; ".join(check["problems"]) or check.get("note", "")
        status = ("not pinned" if "note" in check else "ok") if check["ok"] else "FAILURE"
        css = ("warn" if "note" in check else "ok") if check["ok"] else "failure"
        rows.append(f"<tr class=\"{css}\" data-check=\"{_e(name)}\">{_td(name)}"
                    f"{_td(status, 'status', cls='status')}{_td(detail)}</tr>")
    for problem in verification["other_problems"]:
        rows.append(f"<tr class=\"failure\">{_td('other')}{_td('FAILURE', 'status', cls='status')}{_td(problem)}</tr>")
    facts = [
        ("audit entries", verification["entries"]), ("versions", verification["versions"]),
        ("blobs checked", verification["blobs_checked"]),
        ("signed head", f"entry {verification['head_seq']}, hash {verification['head_hash']}"),
        ("signing key(s)", ", ".join(verification["key_ids"]) or "-"),
        ("pinned key", verification["pinned_key"] or "not pinned"),
    ]
    fact_rows = "".join(f"<tr><th>{_e(k)}</th><td class=\"mono\">{_e(v)}</td></tr>" for k, v in facts)
    notes = "".join(f"<li>{_e(n)}</li>" for n in verification["notes"])
    return ("<h2>Verification</h2>" + _table(["check", "result", "detail"], rows, "verification")
            + f"<table>{fact_rows}</table>" + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else ""))


def _privacy(report: dict[str, Any]) -> str:
    headers = ["site", "run", "version", "delta", "claimed eps (study)", "PLD eps (study)", "claimed eps (total)",
               "PLD total (registry)", "PLD total (ledger at signed head)", "cap", "signed ledger head", "status"]
    rows = []
    for row in report["sites"]:
        head = row["ledger_head"]
        head_text = (f"{head['entries']} entries, hash {head['hash'][:16]}..., coordinator check: {row['ledger_head_check']}"
                     if isinstance(head, dict) else "none recorded")
        if row["ledger_checked"] is not None:
            head_text += "; site ledger matches" if row["ledger_checked"] else "; site ledger does NOT match"
        status = row["status"] + ("".join(f"<br>{_e(p)}" for p in row["problems"]))
        rows.append(
            f"<tr class=\"{'ok' if row['status'] == 'ok' else 'failure'}\" data-site=\"{_e(row['site'])}\">"
            f"{_td(row['site'], 'site')}{_td(row['run_id'], 'run_id', cls='mono')}{_td(row['version'], 'version', num=True)}"
            f"<td class=\"num\" data-field=\"delta\">{_g(row['delta'])}</td>"
            f"{_td(row['claimed_epsilon'], 'claimed_epsilon', num=True)}{_td(row['pld_epsilon'], 'pld_epsilon', num=True)}"
            f"{_td(row['claimed_total'], 'claimed_total', num=True)}"
            f"{_td(row['pld_total_registry'], 'pld_total_registry', num=True)}"
            f"{_td(row['pld_total_ledger'], 'pld_total_ledger', num=True)}<td class=\"num\" data-field=\"cap\">{_g(row['cap']) if row['cap'] is not None else '-'}</td>"
            f"{_td(head_text, 'ledger_head', cls='mono')}"
            f"<td class=\"status\" data-field=\"status\">{_e(row['status']) if not row['problems'] else status}</td></tr>")
    explain = (f"Recomputed with {_e(report['accountant'])} from the DP-SGD phases each certificate records "
               "(study), from every run in this registry (total, registry: a lower bound) and, given --ledger, from "
               "every event the site's own ledger charged up to the signed head the registry recorded. A claim fails "
               f"when it is below the recomputation by more than a relative {_e(report['claim_rtol'])}.")
    table = _table(headers, rows, "sites") if rows else "<p>No version carries a DP certificate.</p>"
    return f"<h2>Privacy per site</h2><p class=\"muted\">{explain}</p>{table}"


def _ledgers(ledgers: list[dict[str, Any]]) -> str:
    if not ledgers:
        return ("<h2>Site ledgers</h2><p class=\"muted\">No site ledger given: run with --ledger SITE_DIR (repeatable) "
                "to check each site's ledger against the signed head recorded in the registry.</p>")
    rows = []
    for row in ledgers:
        status = "ok" if row["ok"] else "FAILURE"
        detail = "; ".join(row["problems"])
        rows.append(f"<tr class=\"{'ok' if row['ok'] else 'failure'}\" data-ledger=\"{_e(row['site'] or '')}\">"
                    f"{_td(row['site'], 'site')}{_td(row['folder'], 'folder', cls='mono')}{_td(row['entries'], num=True)}"
                    f"{_td(row['signature'])}{_td(row['charged_events'], num=True)}{_td(row['epsilon_pld'], 'epsilon_pld', num=True)}"
                    f"<td class=\"num\" data-field=\"cap\">{_g(row['cap']) if row['cap'] is not None else '-'}</td><td class=\"status\" data-field=\"status\">{_e(status)}"
                    f"{'<br>' + _e(detail) if detail else ''}</td></tr>")
    headers = ["site", "folder", "entries", "anchored head signature", "charged events", "PLD total (whole ledger)",
               "cap", "status"]
    return "<h2>Site ledgers</h2>" + _table(headers, rows, "ledgers")


def _plots(versions: list[dict[str, Any]]) -> str:
    out = ["<h2>Plots</h2>"]
    for title, data in (("Epsilon per site over rounds", epsilon_plot(versions)),
                        ("Accuracy, loss and AUC per round", metrics_plot(versions))):
        if data:
            out.append(f"<h3>{_e(title)}</h3><img class=\"plot\" alt=\"{_e(title)}\" src=\"data:image/png;base64,{data}\">")
    return "".join(out) if len(out) > 1 else ""


def _versions(versions: list[dict[str, Any]]) -> str:
    out = ["<h2>Model versions</h2>"]
    for version in reversed(versions):
        lineage = f"parent v{version['parent']}" if version["parent"] is not None else "no parent (first of its lineage)"
        facts = [("run", version["run_id"]), ("study", version["study_id"]), ("round", version["round"]),
                 ("lineage", lineage), ("created", version["created_at"]), ("blob sha256", version["blob_sha256"]),
                 ("encrypted", "yes" if version["encrypted"] else "no"), ("sites", ", ".join(map(str, version["sites"])))]
        fact_rows = "".join(f"<tr><th>{_e(k)}</th><td class=\"mono\">{_e(v)}</td></tr>" for k, v in facts)
        metric_rows = [f"<tr>{_td(name)}{_td(value, name, num=True)}</tr>" for name, value in sorted(version["metrics"].items())]
        metrics = _table(["metric", "value"], metric_rows) if metric_rows else "<p>No metrics.</p>"
        out.append(f"<details id=\"version-{_e(version['number'])}\"{' open' if version is versions[-1] else ''}>"
                   f"<summary>Version {_e(version['number'])} ({_e(lineage)}, run {_e(version['run_id'])}, round "
                   f"{_e(version['round'])})</summary><table>{fact_rows}</table><h3>Metrics</h3>{metrics}"
                   f"<h3>DP certificate</h3>{_certificate(version['dp_certificate'])}</details>")
    return "".join(out)


def _certificate(certificate: dict[str, Any] | None) -> str:
    if not certificate:
        return "<p>None: this version was not trained with differential privacy.</p>"
    rows = []
    for site, claim in sorted(certificate["sites"].items()):
        head = claim.get("ledger_head")
        steps = sum(p["steps"] for p in claim["phases"])
        rows.append(f"<tr>{_td(site)}{_td(claim['epsilon'], num=True)}{_td(claim.get('total_epsilon'), num=True)}"
                    f"<td class=\"num\">{_g(claim['delta'])}</td>{_td(len(claim['phases']), num=True)}"
                    f"{_td(steps, num=True)}{_td(_head(head), cls='mono')}"
                    f"{_td(claim.get('ledger_head_check'))}</tr>")
    return (f"<p class=\"muted\">unit of privacy: {_e(certificate['unit_of_privacy'])}; accountant: "
            f"{_e(certificate['accountant'])}</p>"
            + _table(["site", "epsilon (study)", "epsilon (total)", "delta", "phases", "steps", "signed ledger head",
                      "head check"], rows))
