"""`daguerre models`: what the catalog holds (configs and headers only: nothing is loaded)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from daguerre.cli.common import ConfigOpt, fail, load_settings, out, warn
from daguerre.errors import DaguerreError


def models(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """List the models the catalog knows: ids, kinds, paths, sizes."""
    from daguerre.services import build_catalog

    try:
        catalog = build_catalog(load_settings(config))
    except DaguerreError as e:
        fail(e)
    rows = [
        {
            "id": s.id,
            "name": s.name,
            "aliases": list(s.aliases),
            "kind": s.kind,
            "format": s.format,
            "source": s.source,
            "path": str(s.path),
            "size_gb": round(s.size_bytes / 1e9, 2),
            "size_bytes": s.size_bytes,
            "base": s.base,
            "available": not s.missing,
            "problem": s.missing,
        }
        for s in catalog
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(
            "no models found: add \\[models.NAME] entries to a --config file, or set model_dirs / hf_cache "
            "(see README: 'Point it at your weights')"
        )
        return
    cells = [
        [
            r["id"],
            r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else ""),
            r["kind"],
            r["format"] if r["available"] else "MISSING",
            f"{r['size_gb']:.2f} GB" if r["available"] else "-",
            r["path"],
        ]
        for r in rows
    ]
    if not out.is_terminal:  # piped: whole values, tab-separated, never truncated
        for row in cells:
            typer.echo("\t".join(row))
    else:
        table = Table("id", "name", "kind", "format", "size", "path")
        for row in cells:
            table.add_row(*row)
        out.print(table)
    for r in rows:
        if not r["available"]:
            warn(r["problem"])
