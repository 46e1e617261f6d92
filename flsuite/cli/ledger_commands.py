"""`flsuite audit ledger`: an auditor checks a site's privacy ledger against the head it signed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flsuite.errors import ConfigError, IntegrityError

LEDGER_FILE = "ledger.jsonl"


def audit_ledger_command(
    path: Annotated[Path, typer.Argument(help="A site's ledger file, or its folder (holding ledger.jsonl).")],
    identities: Annotated[
        Path | None,
        typer.Option("--identities", help="The pinned identities file (identities.json) that names the site's public key."),
    ] = None,
    site: Annotated[str | None, typer.Option("--site", help="The site's name in the identities file (default: the signed head's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a site's privacy ledger offline: the hash chain, the anchored head's signature against the
    site's pinned identity, that the ledger holds exactly what the site signed (not cut, not
    rewritten), and the site's total epsilon recomputed with dp_accounting's PLD accountant.
    Exit 0 when every check passes, 1 when one fails, 2 for bad input."""
    from flsuite.privacy import audit_ledger
    from flsuite.secagg import load_pinned_identities

    ledger = path / LEDGER_FILE if path.is_dir() else path
    if not ledger.exists():
        raise ConfigError(f"no privacy ledger at {ledger}: give a site's ledger file or the folder that holds {LEDGER_FILE}")
    public_key = None
    if identities is not None:
        pinned = load_pinned_identities(identities)
        name = site or _signed_site(ledger)
        if name not in pinned:
            raise ConfigError(f"{identities} pins no site {name!r}; it pins {sorted(pinned)}")
        public_key = pinned[name]
    found = audit_ledger(ledger, public_key=public_key)
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=2))
    else:
        head = found.anchored
        typer.echo(f"ledger: {found.ledger} ({found.entries} entries, head {found.head_hash[:16]}...)")
        typer.echo(f"signed head: {f'site {head.site}, dataset {head.dataset}, {head.entries} entries' if head else 'none'}")
        typer.echo(f"signature: {found.signature}")
        if found.delta is not None:
            typer.echo(f"total epsilon (PLD, delta {found.delta:g}): {found.epsilon_pld:.4f} over {len(found.charged)} charged events")
        for problem in found.problems:
            typer.echo(f"FAIL: {problem}")
        typer.echo("ledger verified" if found.ok else "ledger does NOT verify")
    if not found.ok:
        raise IntegrityError(f"the ledger at {ledger} does not verify: " + "; ".join(found.problems))


def _signed_site(ledger: Path) -> str:
    from flsuite.privacy import anchor_path

    try:
        return str(json.loads(anchor_path(ledger).read_text())["site"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"cannot read the site's name from {anchor_path(ledger)}: pass --site NAME") from None
