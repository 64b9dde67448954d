"""`swanbench claims [--check]`: regenerate docs/claims.md and the README's headline from the committed results
(library: swanbench.analysis.claims)."""

from __future__ import annotations

from typing import Annotated

import typer


def claims(
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if docs/claims.md or the README's "
                                        "claims block differs from what the committed results give.")] = False,
) -> None:
    """The claims ledger: each paper claim (results/claims.toml) against the committed result sets."""
    from swanbench.analysis import claims as ledger
    from swanbench.tables import TableError

    try:
        if check:
            late = ledger.stale()
            typer.echo(f"stale: {', '.join(late)} (run `swanbench claims`)" if late else "claims ledger is current")
            if late:
                raise typer.Exit(1)
            return
        for path in ledger.write():
            typer.echo(f"wrote {path}")
    except (ledger.ClaimsError, TableError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
