"""`featurestore` command line: the product's command groups, then the plugins' (stream,
monitors, example), each in its own module.

`app` is built on first use, not at import: the plugins' command modules import
`featurestore.cli.common`, which imports this package first, and building the app there would load
the plugins while one of them is still half imported.
"""

from __future__ import annotations

import functools

import typer


@functools.cache
def build_app() -> typer.Typer:
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
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the `featurestore` script's entry point, `featurestore.cli:app`
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
