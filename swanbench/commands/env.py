"""`swanbench env`: the environment runs are recorded with (versions, device, host, git revision)."""

from __future__ import annotations

from typing import Annotated

import typer


def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the env.json every run records).")] = False,
) -> None:
    """Show versions, device, host and git revision, as recorded per run in env.json."""
    import json

    from swanbench import env as envmod

    info = envmod.collect()
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True, default=str))
        return
    width = max(len(k) for k in info)
    for key in sorted(info):
        typer.echo(f"{key:<{width}}  {'' if info[key] is None else info[key]}")
