"""The `daguerre` command (entry point `daguerre.cli:app`): one module per command group, assembled here.

    generate.py  generate, reproduce       models.py  models        serve.py  serve
    keys.py      keys create|list|...      studio.py  prompt, characters add|list|show|delete
    args.py      flags -> GenerationRequest            common.py  consoles, options, one-line errors

Command modules import nothing from this one, so there is no import cycle; commands import their heavy
dependencies (torch, the server) inside, so `daguerre --help` and flag errors answer at once.
"""

from __future__ import annotations

import typer

from daguerre.cli import generate, keys, models, serve, studio

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Photoreal FLUX.1 image generation.")
app.command()(generate.generate)
app.command()(models.models)
app.command()(generate.reproduce)
app.command()(serve.serve)
app.command()(studio.prompt)
app.add_typer(keys.app, name="keys")
app.add_typer(studio.characters_app, name="characters")

if __name__ == "__main__":
    app()
