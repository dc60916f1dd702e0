"""The `daguerre` command (entry point `daguerre.cli:app`): one module per command group, assembled here.

    generate.py  generate, reproduce       models.py  models        serve.py  serve     worker.py  worker
    keys.py      keys create|list|...      studio.py  prompt, characters add|list|show|delete
    args.py      flags -> GenerationRequest            common.py  consoles, options, one-line errors

Command modules import nothing from this one, so there is no import cycle; commands import their heavy
dependencies (torch, the server) inside, so `daguerre --help` and flag errors answer at once.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from daguerre.cli import generate, keys, models, serve, studio, worker
from daguerre.cli.args import DEFAULT_UPSCALER

# Options whose value may be left out: given alone (the next word is another option, or nothing), they
# stand for this value. `--hires-fix` alone: the configured default upscaler.
OPTIONAL_VALUES = {"--hires-fix": DEFAULT_UPSCALER}


class Commands(TyperGroup):
    """The command group, reading `--hires-fix` with or without its MODEL."""

    def parse_args(self, ctx, args):
        out = []
        for i, arg in enumerate(args):
            out.append(arg)
            nxt = args[i + 1] if i + 1 < len(args) else None
            if arg in OPTIONAL_VALUES and (nxt is None or nxt.startswith("-")):
                out.append(OPTIONAL_VALUES[arg])
        return super().parse_args(ctx, out)


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True,
                  help="Photoreal FLUX.1 image generation.")  # fmt: skip
app.command()(generate.generate)
app.command()(models.models)
app.command()(generate.reproduce)
app.command()(serve.serve)
app.command()(worker.worker)
app.command()(studio.prompt)
app.add_typer(keys.app, name="keys")
app.add_typer(studio.characters_app, name="characters")

if __name__ == "__main__":
    app()
