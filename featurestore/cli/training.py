"""`featurestore entities`, `export` and `train`: entity tables, point-in-time training
exports and the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featurestore.cli.common import clear_errors, console
from featurestore.errors import FeatureStoreError


@clear_errors
def train(
    export: Annotated[Path, typer.Option(help="Training export (Parquet) to learn from.")],
    label: Annotated[
        str,
        typer.Option(help="The export's column to predict, 0/1 or bool (the fraud example: "
                          "is_fraud)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the model file (default: model_path, which "
                          "POST /v1/score serves)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training rows.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per gradient step.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same model).")] = 0,
) -> None:
    """Train a model of a binary label on an export; report ROC AUC on its latest fifth of rows."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from featurestore.settings import get_settings
    from featurestore.training.model import train as run_training

    out = out or get_settings().model_path
    assert out is not None  # Settings fills model_path in
    columns = [
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs, loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=epochs, loss="-")
        result = run_training(
            export,
            out,
            label=label,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            on_epoch=lambda epoch, loss: progress.update(task, completed=epoch, loss=f"{loss:.4f}"),
        )
    unlabelled = result.unlabelled_rows
    console.print(
        f"ROC AUC {result.roc_auc:.4f} on the latest {result.holdout_rows:,} rows "
        f"(trained on {result.train_rows:,}) of export {result.export_id}; "
        f"model written to {result.model_path}"
        + (f"; left out {unlabelled:,} rows without a label yet" if unlabelled else ""),
        highlight=False,
    )


@clear_errors
def export_command(
    entities: Annotated[
        str, typer.Option(help="Entity table (Parquet): join keys, event_timestamp, labels...")
    ],
    out: Annotated[str, typer.Option(help="Where to write the export (Parquet).")],
    feature_service: Annotated[
        str | None, typer.Option(help="Feature service to export, e.g. fraud_detection_v1.")
    ] = None,
    feature: Annotated[
        list[str] | None,
        typer.Option(help="Feature reference view:feature (repeatable), instead of a service."),
    ] = None,
    engine: Annotated[str, typer.Option(help="Join engine: local or spark.")] = "local",
) -> None:
    """Point-in-time export: each entity row with its feature values as of its event time."""
    from pathlib import Path

    from featurestore.export import export
    from featurestore.settings import get_settings

    if (feature_service is None) == (not feature):
        raise FeatureStoreError("give either --feature-service or --feature (exactly one)")
    with console.status("exporting") as status:
        result = export(
            get_settings(),
            Path(entities),
            Path(out),
            feature_service=feature_service,
            features=feature,
            engine=engine,  # type: ignore[arg-type]  # export names a wrong one
            progress=lambda stage: status.update(stage),
        )
    console.print(
        f"exported {result.rows:,} rows x {len(result.features)} features to {result.path} "
        f"(export id {result.export_id}) in {result.seconds:.1f} s",
        highlight=False,
    )


@clear_errors
def entities_command(
    source: Annotated[
        str,
        typer.Option(help="Data source of the repo (a FileSource) whose rows are the entities, "
                          "e.g. a stream's raw event archive."),
    ],
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD, UTC), inclusive.")],
    end: Annotated[str, typer.Option(help="Last day (YYYY-MM-DD, UTC), exclusive.")],
    out: Annotated[str, typer.Option(help="Where to write the entity table (Parquet).")],
    key: Annotated[
        list[str] | None,
        typer.Option(help="Join key column (repeatable; default: the repo's entity join keys "
                          "that the source has)."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(help="Another column to keep (repeatable): the label, request fields of "
                          "on-demand views."),
    ] = None,
) -> None:
    """Write a training entity table: one row per row of a source in days [start, end).

    Its columns: the join keys, `event_timestamp` (the source's timestamp field) and any
    `--column`; rows in event-time order.
    """
    from featurestore.entities import entity_table
    from featurestore.feast_config import feature_store
    from featurestore.offline import write_atomically
    from featurestore.settings import get_settings
    from featurestore.timestamps import parse_day

    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    table = entity_table(
        feature_store(get_settings()), source, first, last, keys=key or (), columns=column or ()
    )
    write_atomically(table, Path(out))
    console.print(
        f"wrote {table.num_rows:,} rows of {source!r} ({', '.join(table.column_names)}) to {out}",
        highlight=False,
    )


def add_commands(app: typer.Typer) -> None:
    app.command()(train)
    app.command("export")(export_command)
    app.command("entities")(entities_command)
