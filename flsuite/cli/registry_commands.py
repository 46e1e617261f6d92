"""Command-line sub-apps the `flsuite` CLI mounts: `flsuite registry ...` and `flsuite audit ...`.

Reads need no key; promote and rollback need the coordinator's signing key. User errors
raise flsuite.errors.UserError subclasses (the main CLI prints them and exits 2);
`audit verify` exits 0 only when everything verifies, 1 otherwise; a registry whose
catalogue disagrees with its audit log is refused by every command (IntegrityError, 1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from flsuite.audit import read_saved_head, save_head
from flsuite.cli.tables import FORMAT_HELP, Column, OutputFormat, TableData, emit
from flsuite.errors import RegistryError
from flsuite.registry.encryption import key_from_env, key_from_file
from flsuite.registry.policy import PromotionPolicy
from flsuite.registry.registry import Registry
from flsuite.registry.report import privacy_report
from flsuite.registry.verify import verify_registry

__all__ = ["registry_app", "audit_app"]

registry_app = typer.Typer(help="Browse, promote, roll back and export model versions.",
                           no_args_is_help=True)
audit_app = typer.Typer(help="Verify a registry offline and report its privacy claims.",
                        no_args_is_help=True)

KEY_ENV = "FLSUITE_ENCRYPTION_KEY"
RegistryOpt = Annotated[Path, typer.Option("--registry", envvar="FLSUITE_REGISTRY",
                                           help="Registry folder (env FLSUITE_REGISTRY).")]
RegistryArg = Annotated[Path, typer.Argument(envvar="FLSUITE_REGISTRY",
                                             help="Registry folder (env FLSUITE_REGISTRY).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help=FORMAT_HELP + " json is the same as --json.")]
SigningKeyOpt = Annotated[Path | None, typer.Option(
    "--signing-key", envvar="FLSUITE_SIGNING_KEY", help="Coordinator's Ed25519 key (PEM, outside the registry).")]
KeyFileOpt = Annotated[Path | None, typer.Option(
    "--encryption-key-file", envvar="FLSUITE_ENCRYPTION_KEY_FILE",
    help=f"File with the 32-byte blob key (or set {KEY_ENV} to the key itself).")]
ExpectKeyOpt = Annotated[str | None, typer.Option(
    "--expect-key", help="The coordinator's key id (at least its first 16 hex digits): every audit "
    "entry, manifest and the signed head must be signed by this key.")]
DEFAULT_REGISTRY = Path("registry")


def _encryption_key(key_file: Path | None) -> bytes | None:
    if key_file is not None:
        return key_from_file(key_file)
    return key_from_env(KEY_ENV) if os.environ.get(KEY_ENV) else None


def _open(registry: Path, *, signing_key: Path | None = None, key_file: Path | None = None) -> Registry:
    return Registry.open(registry, signing_key_path=signing_key, create=False,
                         encryption_key=_encryption_key(key_file))


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def _max_epsilon(info_dict: dict[str, Any]) -> float | None:
    certificate = info_dict["manifest"]["dp_certificate"]
    return max(c["epsilon"] for c in certificate["sites"].values()) if certificate else None


@registry_app.command("list")
def list_versions(registry: RegistryOpt = DEFAULT_REGISTRY, run: Annotated[str | None, typer.Option(
        help="Only versions of this run.")] = None, as_json: JsonOpt = False,
        fmt: FormatOpt = OutputFormat.table) -> None:
    """List every version with its lineage, metrics, epsilon and aliases."""
    with _open(registry) as reg:
        aliases = reg.aliases()
        rows = [{**info.to_dict(), "aliases": sorted(a for a, n in aliases.items() if n == info.number)}
                for info in reg.versions(run)]
    if as_json or fmt is OutputFormat.json:
        _emit({"registry": str(registry), "versions": rows, "aliases": aliases}, True, "")
        return
    if not rows and fmt is OutputFormat.table:
        typer.echo(f"no versions in {registry}")
        return
    emit(versions_table(registry, rows), fmt)


def versions_table(registry: Path, rows: list[dict[str, Any]]) -> TableData:
    """One line per version: lineage, round, the largest site epsilon, metrics and aliases."""
    table = TableData(f"Versions in {registry}", [
        Column("version", numeric=True), Column("parent", numeric=True), Column("run"), Column("round", numeric=True),
        Column("max eps", numeric=True), Column("metrics"), Column("aliases")])
    for row in rows:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(row["manifest"]["metrics"].items()))
        table.add_row(row["number"], row["parent"], row["run_id"], row["round"], _max_epsilon(row), metrics,
                      " ".join(row["aliases"]))
    return table


@registry_app.command("show")
def show(version: Annotated[str, typer.Argument(help="Version number or alias.")],
         registry: RegistryOpt = DEFAULT_REGISTRY, as_json: JsonOpt = False) -> None:
    """Show a version's signed manifest."""
    with _open(registry) as reg:
        info = reg.version(version)
        data = {**info.to_dict(), "aliases": sorted(a for a, n in reg.aliases().items() if n == info.number)}
    _emit(data, as_json, json.dumps(data, indent=2, sort_keys=True))


@registry_app.command("promote")
def promote(version: Annotated[str, typer.Argument(help="Version number or alias.")],
            alias: Annotated[str, typer.Option("--alias", help="e.g. staging, production.")],
            max_epsilon: Annotated[float | None, typer.Option(help="Max epsilon of any site.")] = None,
            min_accuracy: Annotated[float | None, typer.Option(help="Minimum 'accuracy' metric.")] = None,
            min_metric: Annotated[list[str] | None, typer.Option(
                help="NAME=VALUE: minimum of another metric (repeatable).")] = None,
            registry: RegistryOpt = DEFAULT_REGISTRY, signing_key: SigningKeyOpt = None,
            key_file: KeyFileOpt = None, as_json: JsonOpt = False) -> None:
    """Point an alias at a version that verifies and meets the policy."""
    minimums: dict[str, float] = {}
    for item in min_metric or []:
        name, sep, value = item.partition("=")
        try:
            minimums[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise RegistryError(f"--min-metric {item!r}: write NAME=VALUE, e.g. --min-metric auc=0.8")
    if min_accuracy is not None:
        minimums["accuracy"] = min_accuracy
    policy = PromotionPolicy(max_epsilon=max_epsilon, min_metrics=minimums)
    with _open(registry, signing_key=signing_key, key_file=key_file) as reg:
        move = reg.promote(version, alias, policy)
    _emit(move, as_json, f"{alias} -> version {move['to_version']} (was {move['from_version']}); "
                         f"audit entry {move['seq']}")


@registry_app.command("rollback")
def rollback(alias: Annotated[str, typer.Option("--alias", help="Alias to move back.")],
             registry: RegistryOpt = DEFAULT_REGISTRY, signing_key: SigningKeyOpt = None,
             key_file: KeyFileOpt = None, as_json: JsonOpt = False) -> None:
    """Move an alias back to the version it pointed at before."""
    with _open(registry, signing_key=signing_key, key_file=key_file) as reg:
        move = reg.rollback(alias)
    _emit(move, as_json, f"{alias} -> version {move['to_version']} (rolled back from "
                         f"{move['from_version']}); audit entry {move['seq']}")


@registry_app.command("export")
def export(version: Annotated[str, typer.Argument(help="Version number or alias.")],
           out: Annotated[Path, typer.Option("--out", help="Safetensors file to write.")],
           registry: RegistryOpt = DEFAULT_REGISTRY, key_file: KeyFileOpt = None,
           as_json: JsonOpt = False) -> None:
    """Write a version's weights (plaintext safetensors) and its signed manifest beside them."""
    with _open(registry, key_file=key_file) as reg:
        info = reg.version(version)
        path = reg.export(info.number, out)
    data = {"version": info.number, "weights": str(path), "sha256": info.blob_sha256,
            "manifest": str(path.with_name(path.name + ".manifest.json"))}
    _emit(data, as_json, f"version {info.number} -> {path} (sha256 {info.blob_sha256}); "
                         f"signed manifest in {data['manifest']}")


@audit_app.command("verify")
def verify(registry: RegistryArg = DEFAULT_REGISTRY, key_file: KeyFileOpt = None,
           expect_key: ExpectKeyOpt = None,
           since: Annotated[Path | None, typer.Option(
               "--since", help="A head saved by an earlier --write-head: fail when this registry's "
               "log is older than it or diverges from it (rollback).")] = None,
           write_head: Annotated[Path | None, typer.Option(
               "--write-head", help="After a successful verification, save the signed head here "
               "(for a later --since; may be the same file).")] = None,
           as_json: JsonOpt = False) -> None:
    """Check every blob hash, signature, the whole chain, the signed head and the catalogue;
    exit 1 on any failure."""
    if not registry.exists():
        raise RegistryError(f"no registry at {registry}; give the registry folder to verify")
    saved = read_saved_head(since) if since is not None else None
    report = verify_registry(registry, encryption_key=_encryption_key(key_file), expected_key=expect_key,
                             since=saved)
    text = [report.verdict()] + [f"  problem: {p}" for p in report.problems[1:]] \
        + [f"  note: {n}" for n in report.notes]
    if report.pinned_key is not None:
        text.append(f"  pinned key: {report.pinned_key}")
    if saved is not None:
        text.append(f"  since: saved head at entry {saved.seq}")
    if report.head_seq is not None:
        text.append(f"  signed head: entry {report.head_seq}, hash {report.head_hash}")
    if report.ok and write_head is not None and report.signed_head is not None:
        save_head(write_head, report.signed_head)
        text.append(f"  head saved to {write_head}")
    _emit(report.to_dict(), as_json, "\n".join(text))
    if not report.ok:
        raise typer.Exit(code=1)


@audit_app.command("report")
def report(registry: RegistryArg = DEFAULT_REGISTRY,
           version: Annotated[list[int] | None, typer.Option(help="Only these versions.")] = None,
           expect_key: ExpectKeyOpt = None,
           html: Annotated[Path | None, typer.Option(
               "--html", help="Also write the auditor's report to this HTML file: one self-contained page "
               "(no network) with the verification, every version's lineage, metrics and DP certificate, each "
               "site's claimed epsilon beside dp_accounting's PLD recomputation against its cap, and plots.")] = None,
           ledger: Annotated[list[Path] | None, typer.Option(
               "--ledger", help="A site's folder (holding ledger.jsonl; repeatable): check its ledger against the "
               "signed head the registry recorded, and recompute its total epsilon from it.")] = None,
           identities: Annotated[Path | None, typer.Option(
               "--identities", help="Pinned site identities (identities.json) for --ledger; default: the one "
               "beside each site folder.")] = None,
           key_file: KeyFileOpt = None, as_json: JsonOpt = False,
           fmt: FormatOpt = OutputFormat.table) -> None:
    """Each version's DP certificate (from the verified audit log); each site's epsilon
    recomputed and compared with the claim. With --html, also the auditor's HTML report; with
    --ledger, each site's ledger checked against the signed head in the registry. Exit 1 when
    the registry does not verify, a claim is too low, a cap is passed or a ledger does not check."""
    if not registry.exists():
        raise RegistryError(f"no registry at {registry}; give the registry folder to report on")
    full, verification = None, None
    if html is not None or ledger:
        from flsuite.registry import auditor_findings

        # One verification (blobs included) serves the auditor's report and the privacy table below.
        full, verification = auditor_findings(registry, ledgers=ledger or [], identities=identities,
                                              expected_key=expect_key, encryption_key=_encryption_key(key_file))
    data = privacy_report(registry, versions=version, expected_key=expect_key, verification=verification)
    ok = data["ok"]
    lines: list[str] = []
    if full is not None:
        ok = ok and full["ok"]
        data["auditor_report"] = full
        for found in full["ledgers"]:
            lines.append(f"ledger {found['folder']}: site {found['site']}, {found['entries']} entries, "
                         f"PLD total {found['epsilon_pld'] if found['epsilon_pld'] is None else round(found['epsilon_pld'], 6)}"
                         f", cap {found['cap']}: {'ok' if found['ok'] else 'FAILURE'}")
        lines += [f"FAILURE: {failure}" for failure in full["failures"]]
    if html is not None:
        from datetime import UTC, datetime

        from flsuite.registry import render_html
        from flsuite.storage import write_atomic

        html.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(html, render_html(full, generated_at=datetime.now(UTC).isoformat(timespec="seconds")).encode())
        lines.append(f"HTML report written to {html}" + ("" if ok else " (it shows the FAILURE)"))
    if as_json or fmt is OutputFormat.json:
        _emit(data, True, "")
    elif fmt is OutputFormat.csv:
        emit(claims_table(data), fmt)
    else:
        typer.echo(f"{data['verdict']}\naccounting: {data['accounting']}")
        emit(claims_table(data), fmt)
        if data["under_claimed_sites"]:
            typer.echo(f"UNDER-CLAIMED: {', '.join(data['under_claimed_sites'])}")
        for line in lines:
            typer.echo(line)
    if not ok:
        raise typer.Exit(code=1)


def claims_table(data: dict[str, Any]) -> TableData:
    """One line per version and site: the claimed epsilon, the recomputed one, delta and the verdict."""
    table = TableData("Privacy claims", [
        Column("version", numeric=True), Column("site"), Column("claimed eps", numeric=True),
        Column("recomputed", numeric=True), Column("delta", numeric=True), Column("status")])
    for row in data["versions"]:
        if not row["certificate"]:
            table.add_row(row["version"], None, None, None, None, "no DP certificate")
        for claim in row.get("claims", []):
            table.add_row(row["version"], claim["site"], claim["claimed_epsilon"], claim["recomputed_epsilon"],
                          claim["delta"], claim["status"])
    return table
