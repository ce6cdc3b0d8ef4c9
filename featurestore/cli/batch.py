"""`featurestore apply`, `backfill` and `materialize`: the registry and the batch path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from featurestore.cli.common import clear_errors, console
from featurestore.cli.db import upgrade_schema
from featurestore.errors import FeatureStoreError

Views = Annotated[
    list[str] | None,
    typer.Option("--view", "-v", help="Feature view to process (repeatable; default: all)."),
]


@clear_errors
def apply() -> None:
    """Upgrade our SQL schema (as `db upgrade`), register feature_repo/ in the registry (feast
    apply) and render feature_store.yaml."""
    from featurestore.feast_config import apply as apply_repo
    from featurestore.settings import get_settings

    settings = get_settings()
    upgrade_schema(settings)
    apply_repo(settings)
    console.print(f"applied {settings.feature_repo} to project {settings.project!r}")


@clear_errors
def backfill(
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD, UTC), inclusive.")],
    end: Annotated[str, typer.Option(help="Last day (YYYY-MM-DD, UTC), exclusive.")],
    view: Views = None,
) -> None:
    """Compute offline feature tables from raw events with Spark, for UTC days [start, end)."""
    from featurestore.batch.backfill import backfill as run_backfill
    from featurestore.batch.spark import spark_session
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from featurestore.timestamps import parse_day

    settings = get_settings()
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    views = select_views(feature_store(settings), view, aggregated_only=True)
    with console.status(f"backfilling {len(views)} feature view(s) with Spark"):
        results = run_backfill(lambda: spark_session(settings), views, first, last)
    for result in results:
        console.print(
            f"{result.view}: {result.rows:,} rows in {len(result.partitions)} partition(s)"
        )


@clear_errors
def materialize(
    start: Annotated[
        str | None, typer.Option(help="Event time from (inclusive; ISO-8601, no offset = UTC).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Event time to (exclusive; ISO-8601); default now.")
    ] = None,
    incremental: Annotated[
        bool, typer.Option(help="Start each view where its last materialization ended.")
    ] = False,
    view: Views = None,
    engine: Annotated[
        str,
        typer.Option(help="local (this process) or spark (Spark tasks read the offline row "
                          "groups and write Redis in parallel; docs/spark-cluster.md)."),
    ] = "local",
) -> None:
    """Load the latest offline row per entity into the online store."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import incremental_start
    from featurestore.materialize import materialize as run_materialize
    from featurestore.progress import row_progress
    from featurestore.settings import get_settings
    from featurestore.timestamps import parse_time

    if incremental == (start is not None):
        raise FeatureStoreError("give either --start or --incremental (exactly one)")
    settings = get_settings()
    store = feature_store(settings)
    until = parse_time(end, "--end") if end else datetime.now(UTC)
    views = select_views(store, view)
    ranges = [
        # Exactly one of --start and --incremental was given (checked above).
        (v, parse_time(start, "--start") if start is not None else incremental_start(v, until),
         until)
        for v in views
    ]
    with row_progress("materializing rows") as advance:
        results = run_materialize(
            settings, store, ranges, progress=advance, incremental=incremental,
            engine=engine,  # type: ignore[arg-type]  # materialize names a wrong one
        )
    for r in results:
        rate = r.rows_read / r.seconds if r.seconds else 0.0
        console.print(
            f"{r.view}: read {r.rows_read:,} rows, wrote {r.rows_written:,} entities "
            f"({rate:,.0f} rows/s)"
        )


def add_commands(app: typer.Typer) -> None:
    app.command()(apply)
    app.command()(backfill)
    app.command()(materialize)
