"""`daguerre prompt` and `daguerre characters`: the prompt studio from the command line (no model loaded)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from daguerre.cli.common import ConfigOpt, fail, load_settings, warn
from daguerre.errors import DaguerreError

LOCAL_OWNER = "anonymous"  # the owner a keyless local server uses; --key names another API key id


def prompt(
    text: Annotated[
        str | None, typer.Argument(help="a short prompt to expand, or the subject with --build (not with --presets)")
    ] = None,
    seed: Annotated[int, typer.Option(help="variants are deterministic for a seed")] = 0,
    variants: Annotated[int, typer.Option("--variants", "-n", help="how many distinct versions, 1-5")] = 1,
    max_length: Annotated[int | None, typer.Option(help="stop adding past this many characters")] = None,
    build: Annotated[bool, typer.Option(help="build the formula from TEXT (subject) and the preset flags")] = False,
    detail: Annotated[list[str] | None, typer.Option(help="--build: detail preset id or text (repeatable)")] = None,
    lighting: Annotated[str | None, typer.Option(help="--build: lighting preset id or text")] = None,
    angle: Annotated[str | None, typer.Option(help="--build: camera angle preset id or text")] = None,
    lens: Annotated[str | None, typer.Option(help="--build: lens/camera preset id or text")] = None,
    film: Annotated[str | None, typer.Option(help="--build: film stock preset id or text")] = None,
    presets: Annotated[bool, typer.Option("--presets", help="list the preset catalogue and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """Expand a prompt along the photographic formula (or --build one), and lint it. Warnings go to stderr."""
    from daguerre.prompts.studio import build_prompt, enhance_variants, library, lint

    try:
        if presets:
            for category, items in library().presets.items():
                for p in items:
                    typer.echo(f"{category}\t{p.id}\t{p.text}\t{p.effect}\tbest for: {', '.join(p.best_use)}")
            return
        if text is None:
            raise DaguerreError("give a prompt to expand (or --presets to list the presets)", parameter="prompt",
                                code="invalidParameter")  # fmt: skip
        if not 1 <= variants <= 5:
            raise DaguerreError(f"--variants must be in [1, 5], got {variants}", parameter="promptVersions")
        if build:
            texts = [(build_prompt(text, details=tuple(detail or ()), lighting=lighting, angle=angle, lens=lens,
                                   film=film), ())]  # fmt: skip
        else:
            texts = [(e.text, e.notes) for e in enhance_variants(text, seed, variants, max_length=max_length)]
        rows = [{"text": t, "warnings": [*notes, *map(str, lint(t))]} for t, notes in texts]
        for row in rows:
            typer.echo(json.dumps(row) if as_json else row["text"])
            for w in row["warnings"] if not as_json else ():
                warn(w)
    except DaguerreError as e:
        fail(e, {"prompt": "TEXT", "subject": "TEXT", "promptVersions": "--variants"})


characters_app = typer.Typer(
    help="Saved characters: an anchor text and a locked seed, used with `character` / --character.",
    no_args_is_help=True,
)
KeyOpt = Annotated[str, typer.Option("--key", help="API key id the character belongs to [anonymous: local use]")]
DataOpt = Annotated[Path | None, typer.Option(help="the server's data folder [settings: server.data_dir]")]


def character_store(config, data_dir):
    from daguerre.jobs.characters import CharacterStore

    folder = data_dir or load_settings(config).server.data_dir
    return CharacterStore(Path(folder) / "jobs.sqlite3")


@characters_app.command("add")
def characters_add(
    name: Annotated[str, typer.Argument(help="1-64 letters, digits, _ . -")],
    anchor: Annotated[str, typer.Option(help="the physical description every prompt of it starts with")],
    seed: Annotated[int, typer.Option(help="the locked seed")],
    image: Annotated[Path | None, typer.Option(help="a reference image kept with it (for identity features)")] = None,
    key: KeyOpt = LOCAL_OWNER,
    config: ConfigOpt = None,
    data_dir: DataOpt = None,
):
    """Save (or replace) a character."""
    from daguerre.jobs.characters import Character

    try:
        ref = None
        if image is not None:
            from daguerre.imaging import load_image

            load_image(str(image), parameter="image")  # refuse what is not a readable image now
            ref = image.read_bytes()
        c = character_store(config, data_dir).put(key, Character(name, anchor, seed, ref))
        typer.echo(f"{c.name}\tseed={c.seed}\t{c.anchor}")
    except DaguerreError as e:
        fail(e, {"character": "NAME", "anchor": "--anchor", "seed": "--seed", "image": "--image"})


@characters_app.command("list")
def characters_list(key: KeyOpt = LOCAL_OWNER, config: ConfigOpt = None, data_dir: DataOpt = None):
    """List saved characters: name, seed, anchor."""
    for c in character_store(config, data_dir).list(key):
        typer.echo(f"{c.name}\tseed={c.seed}\t{c.anchor}")


@characters_app.command("show")
def characters_show(name: str, key: KeyOpt = LOCAL_OWNER, config: ConfigOpt = None, data_dir: DataOpt = None):
    """One character as JSON."""
    try:
        c = character_store(config, data_dir).get(key, name)
    except DaguerreError as e:
        fail(e, {"character": "NAME"})
    typer.echo(
        json.dumps(
            {
                "name": c.name,
                "anchor": c.anchor,
                "seed": c.seed,
                "reference_image_bytes": len(c.reference_image or b""),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.created_at)),
            }
        )
    )


@characters_app.command("delete")
def characters_delete(name: str, key: KeyOpt = LOCAL_OWNER, config: ConfigOpt = None, data_dir: DataOpt = None):
    """Delete a character."""
    if not character_store(config, data_dir).delete(key, name):
        fail(DaguerreError(f"no character named {name!r}", parameter="character", code="invalidParameter"),
             {"character": "NAME"})  # fmt: skip
    typer.echo(f"deleted {name}")
