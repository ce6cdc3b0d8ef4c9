"""`featurestore keys`: API keys of the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from featurestore.cli.common import clear_errors, console


@clear_errors
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    scope: Annotated[
        list[str], typer.Option(help="Scope (repeatable): features:read, datasets:export, "
                                     "monitors:read, monitors:write, admin.")
    ],
) -> None:
    """Create a key and print its token to stdout (shown once: it is stored hashed)."""
    from featurestore.apikeys import create_key
    from featurestore.db import engine
    from featurestore.settings import get_settings

    token, key = create_key(engine(get_settings()), name, scope)
    console.print(f"created API key {key.key_id} ({name}) with scopes {sorted(key.scopes)}")
    print(token)


@clear_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (from `keys list`).")]) -> None:
    """Revoke a key (servers stop accepting it within 5 seconds)."""
    from featurestore.apikeys import revoke_key
    from featurestore.db import engine
    from featurestore.settings import get_settings

    key = revoke_key(engine(get_settings()), key_id)
    console.print(f"revoked API key {key.key_id} ({key.name})")


@clear_errors
def keys_list() -> None:
    """List keys: id, name, scopes, created, revoked (never the tokens)."""
    from rich.table import Table

    from featurestore.apikeys import list_keys
    from featurestore.db import engine
    from featurestore.settings import get_settings

    table = Table("id", "name", "scopes", "created", "revoked")
    for key in list_keys(engine(get_settings())):
        table.add_row(key.key_id, key.name, " ".join(sorted(key.scopes)),
                      f"{key.created_at:%Y-%m-%d %H:%M}",
                      f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "")
    Console().print(table)


def add_commands(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="API keys of the HTTP API (stored hashed in the SQL database).")
    keys_app.command("create")(keys_create)
    keys_app.command("revoke")(keys_revoke)
    keys_app.command("list")(keys_list)
    app.add_typer(keys_app, name="keys")
