"""`flsuite pki`: the Typer sub-app that issues the federation's certificates and keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flsuite.pki.authority import PkiLayout, init_authority, issue_coordinator, issue_site
from flsuite.pki.checks import EXPIRY_WARNING_DAYS, list_certificates

pki_app = typer.Typer(
    name="pki",
    help=(
        "Certificates and keys for a real federation: a CA, the coordinator's TLS "
        "certificate, and one bundle per site (identity key, node-authentication keys, "
        "CA certificate, pinned identities). Private keys are written 0600; nothing is "
        "overwritten without --force."
    ),
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="The PKI folder (keep it on the coordinator operator's machine).")
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace existing keys and certificates (the old ones are lost).")
]


@pki_app.command("init")
def init_command(
    pki_dir: DirOption = Path("pki"),
    name: Annotated[str, typer.Option("--name", help="Common name of the CA.")] = "flsuite federation CA",
    days: Annotated[int, typer.Option("--days", help="Validity of the CA certificate in days.")] = 3650,
    force: ForceOption = False,
) -> None:
    """Create the federation's CA: ca.key (0600) and a self-signed ca.crt (EC P-384)."""
    layout = init_authority(pki_dir, common_name=name, valid_days=days, force=force)
    typer.echo(f"CA certificate: {layout.ca_certificate}\nCA key:         {layout.ca_key} (keep it secret)")


@pki_app.command("issue-coordinator")
def issue_coordinator_command(
    host: Annotated[list[str], typer.Option("--host", help="DNS name sites use to reach the coordinator (repeatable).")],
    ip: Annotated[list[str] | None, typer.Option("--ip", help="IP address sites use (repeatable), e.g. 127.0.0.1.")] = None,
    pki_dir: DirOption = Path("pki"),
    days: Annotated[int, typer.Option("--days", help="Validity in days (capped by the CA's).")] = 397,
    force: ForceOption = False,
) -> None:
    """Issue the coordinator's TLS server certificate with these subject alternative names."""
    layout = issue_coordinator(pki_dir, hosts=host, ips=ip or [], valid_days=days, force=force)
    typer.echo(f"certificate: {layout.coordinator_certificate}\nkey:         {layout.coordinator_key}")


@pki_app.command("issue-site")
def issue_site_command(
    name: Annotated[str, typer.Argument(help="The site's name, e.g. hospital-a.")],
    pki_dir: DirOption = Path("pki"),
    force: ForceOption = False,
) -> None:
    """Create a site bundle folder and pin the site's identity in identities.json.

    Hand the whole folder to the site over a trusted channel. Every other bundle's
    identities.json is refreshed too: send the new copy to sites already running.
    """
    bundle = issue_site(pki_dir, name, force=force)
    typer.echo(f"site bundle for {bundle.name}: {bundle.folder}")
    for path in bundle.files():
        typer.echo(f"  {path.name}")
    others = [b.name for b in PkiLayout(Path(pki_dir)).site_bundles() if b.name != bundle.name]
    if others:
        typer.echo(f"identities.json changed: send the new copy to {', '.join(others)}.")


@pki_app.command("list")
def list_command(pki_dir: DirOption = Path("pki")) -> None:
    """Show every certificate with its expiry; warn when one expires within 30 days."""
    infos = list_certificates(pki_dir)
    if not infos:
        typer.echo(f"no certificates under {pki_dir}; run `flsuite pki init --dir {pki_dir}`.")
        raise typer.Exit(1)
    for info in infos:
        names = f"  [{', '.join(info.names)}]" if info.names else ""
        line = f"{info.path}  {info.subject}  expires {info.not_after:%Y-%m-%d}  ({info.days_left} days){names}"
        if info.expired:
            typer.secho(f"EXPIRED  {line}", fg=typer.colors.RED, err=False)
        elif info.expires_soon:
            typer.secho(f"WARNING  {line}  expires in under {EXPIRY_WARNING_DAYS} days", fg=typer.colors.YELLOW)
        else:
            typer.echo(f"ok       {line}")
