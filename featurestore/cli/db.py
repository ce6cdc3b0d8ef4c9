"""`featurestore db`: our SQL schema's Alembic revisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from featurestore import plugins
from featurestore.cli.common import clear_errors, console

if TYPE_CHECKING:
    from featurestore.settings import Settings


def upgrade_schema(settings: Settings) -> None:
    """Migrate to head and say from which revision (`db upgrade`, and `apply` first)."""
    from featurestore.db import raw_engine
    from featurestore.migrations import upgrade

    before, after = upgrade(raw_engine(settings))
    if before.current == after.current:
        console.print(f"schema already at {after.current} (head)")
    else:
        console.print(f"schema upgraded from {before.current or 'none'} to {after.current}")


@clear_errors
def db_upgrade() -> None:
    """Migrate the database to this version's schema (stop every other process first)."""
    from featurestore.settings import get_settings

    upgrade_schema(get_settings())


@clear_errors
def db_current() -> None:
    """Print the database's schema revision and how it compares with this version's."""
    from featurestore.db import raw_engine
    from featurestore.migrations import describe, read_state
    from featurestore.settings import get_settings

    with raw_engine(get_settings()).connect() as connection:
        print(describe(read_state(connection)))


@clear_errors
def db_history() -> None:
    """List the schema revisions this version has, oldest first."""
    from featurestore.migrations import history

    for script in history():
        print(f"{script.revision}  {script.doc}{'  (head)' if script.is_head else ''}")


@clear_errors
def db_revision(
    message: Annotated[str, typer.Argument(help="What the revision changes, e.g. 'alert groups'.")],
) -> None:
    """For developers: write the next revision from the tables the code declares (review it)."""
    # Each module declares its tables at import; the plugins import theirs.
    import featurestore.api.datasets
    import featurestore.apikeys  # noqa: F401
    from featurestore.db import METADATA
    from featurestore.migrations import new_revision

    plugins.declare_tables()
    console.print(f"wrote {new_revision(message, METADATA)}")


def add_commands(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Our SQL schema (API keys, dataset jobs, monitors): Alembic revisions.")
    db_app.command("upgrade")(db_upgrade)
    db_app.command("current")(db_current)
    db_app.command("history")(db_history)
    db_app.command("revision")(db_revision)
    app.add_typer(db_app, name="db")
