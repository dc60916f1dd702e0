"""`daguerre keys`: API keys (shown once, stored as sha256) and their webhook signing secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from daguerre.cli.common import ConfigOpt, err, load_settings

app = typer.Typer(help="API keys: create and list (only hashes are stored).", no_args_is_help=True)


@app.command("create")
def keys_create(
    label: Annotated[str, typer.Option(help="a note to recognise the key by")] = "",
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="the server's data folder [./daguerre-data]")] = None,
):
    """Create an API key and print it once."""
    from daguerre.api.keys import KeyStore
    from daguerre.jobs.delivery import derived_webhook_secret
    from daguerre.services import server_secret

    settings = load_settings(config)
    folder = data_dir or settings.server.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    key_id, key = KeyStore(folder / "keys.sqlite3").create(label)
    err.print(f"key id {key_id}; the key is shown once, store it now.", highlight=False)
    err.print(
        f"webhook signing secret (Standard Webhooks): {derived_webhook_secret(server_secret(folder), key_id)}",
        highlight=False,
    )
    typer.echo(key)


@app.command("webhook-secret")
def keys_webhook_secret(
    key: Annotated[str, typer.Argument(help="the API key (or its key id k_...)")],
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="the server's data folder [./daguerre-data]")] = None,
):
    """Print the Standard Webhooks secret that signs this key's webhooks."""
    from daguerre.api.keys import digest, key_id
    from daguerre.jobs.delivery import derived_webhook_secret
    from daguerre.services import server_secret

    settings = load_settings(config)
    owner = key if key.startswith("k_") else key_id(digest(key))
    typer.echo(derived_webhook_secret(server_secret(data_dir or settings.server.data_dir), owner))


@app.command("list")
def keys_list(
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="the server's data folder [./daguerre-data]")] = None,
):
    """List key ids and labels (the keys themselves are not stored)."""
    from daguerre.api.keys import KeyStore

    settings = load_settings(config)
    for key_id, label, _created in KeyStore((data_dir or settings.server.data_dir) / "keys.sqlite3").list():
        typer.echo(f"{key_id}\t{label}")
