"""`featurestore` command line: the product's command groups, then the plugins' (stream,
monitors, example), each in its own module."""

from __future__ import annotations

import typer

from featurestore import plugins
from featurestore.cli import batch, db, keys, serve, training

app = typer.Typer(
    help="Feature store on Feast: Spark backfills, fast Redis materialization, drift monitors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for commands in (batch, serve, training, db, keys):
    commands.add_commands(app)
plugins.add_commands(app)
