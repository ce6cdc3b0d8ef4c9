"""`featurestore example`: the card-payment fraud example's generator, live traffic, demo and
labelled entity table."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from featurestore.cli.common import clear_errors, console
from featurestore.errors import FeatureStoreError


@clear_errors
def generate(
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="First day.")] = datetime(
        2026, 1, 1
    ),
    days: Annotated[int, typer.Option(help="Number of days.")] = 14,
    cards: Annotated[int, typer.Option(help="Number of cards.")] = 2_000,
    merchants: Annotated[int, typer.Option(help="Number of merchants.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 7,
    drift_start: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Inject the drift options from this day."),
    ] = None,
    amount_shift: Annotated[float, typer.Option(help="Multiply amounts by this.")] = 1.0,
    amount_spread: Annotated[
        float, typer.Option(help="Multiply the spread of log-amounts by this (variance).")
    ] = 1.0,
    country_mix: Annotated[
        str | None, typer.Option(help="New country mix, e.g. 'BR=0.5,NG=0.5'.")
    ] = None,
    null_burst_rate: Annotated[
        float, typer.Option(help="Fraction of rows with null category and country.")
    ] = 0.0,
) -> None:
    """Write seeded synthetic transactions, labels and card profiles (raw Parquet)."""
    from featurestore.progress import row_progress
    from featurestore.settings import get_settings
    from fraud_example.generator import GeneratorConfig
    from fraud_example.generator import generate as run_generator

    mix = None
    if country_mix:
        try:
            mix = {k.strip(): float(v) for k, v in (p.split("=") for p in country_mix.split(","))}
        except ValueError as exc:
            raise FeatureStoreError(
                f"--country-mix must look like 'BR=0.5,NG=0.5', got {country_mix!r}"
            ) from exc
    try:
        config = GeneratorConfig(
            start=start.date(),
            days=days,
            cards=cards,
            merchants=merchants,
            seed=seed,
            drift_start=drift_start.date() if drift_start else None,
            amount_shift=amount_shift,
            amount_spread=amount_spread,
            country_mix=mix,
            null_burst_rate=null_burst_rate,
        )
    except ValueError as exc:
        raise FeatureStoreError(str(exc)) from exc
    settings = get_settings()
    with row_progress("generating transactions") as advance:
        summary = run_generator(config, settings.raw_dir, progress=advance)
    console.print(f"generated {summary.rows['transactions']:,} transactions into {settings.raw_dir}")


@clear_errors
def produce(
    rate: Annotated[
        float | None, typer.Option(help="Events per second (default: as fast as possible).")
    ] = None,
    start: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], help="First day of the generated history.")
    ] = datetime(2026, 1, 1),
    days: Annotated[int, typer.Option(help="Days of the generated history.")] = 15,
    from_day: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Send only days from this one (default: all)."),
    ] = None,
    cards: Annotated[int, typer.Option(help="Number of cards.")] = 2_000,
    merchants: Annotated[int, typer.Option(help="Number of merchants.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same as `generate` to continue it).")] = 7,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Send generated transactions into Kafka as live traffic, in event-time order.

    The days are drawn exactly as `generate` draws them, so with the same options and a
    `--from-day` after the generated history the stream continues that history.
    """
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.progress import row_progress
    from featurestore.settings import get_settings
    from fraud_example.generator import GeneratorConfig, transactions
    from streaming.cli import close_events_producer, event_producer
    from streaming.producer import send_events

    settings = get_settings()
    if rate is not None and rate <= 0:
        raise FeatureStoreError(f"--rate must be positive, got {rate}")
    try:
        config = GeneratorConfig(
            start=start.date(), days=days, cards=cards, merchants=merchants, seed=seed
        )
    except ValueError as exc:
        raise FeatureStoreError(str(exc)) from exc
    view = select_views(feature_store(settings), None, aggregated_only=True)[0]
    assert view.topic and view.message_key  # every aggregated view has both
    producer = event_producer(settings)
    try:
        with row_progress(f"producing to {view.topic}") as advance:
            sent = send_events(
                producer,
                view.topic,
                transactions(config, from_day.date() if from_day else None),
                view.message_key,
                rate=rate,
                limit=limit,
                progress=advance,
            )
    finally:
        close_events_producer(producer, f"the generated transactions to {view.topic}")
    console.print(f"sent {sent:,} events to {view.topic}")


@clear_errors
def demo() -> None:
    """Run the whole pipeline on the embedded profile, up to a drift alert."""
    import warnings

    from fraud_example.demo import run_demo

    # Libraries' notices about their own APIs (Evidently, litestar, Feast's "experimental"
    # views) would bury the demo's tables; they say nothing about the run.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="feast")
    run_demo(console)


@clear_errors
def entities_command(
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD, UTC), inclusive.")],
    end: Annotated[str, typer.Option(help="Last day (YYYY-MM-DD, UTC), exclusive.")],
    out: Annotated[str, typer.Option(help="Where to write the entity table (Parquet).")],
) -> None:
    """Write the training entity table: transactions of [start, end) with their fraud label."""
    from pathlib import Path

    from featurestore.offline import write_atomically
    from featurestore.settings import get_settings
    from featurestore.timestamps import parse_day
    from fraud_example.labels import LABEL_COLUMN, labeled_transactions

    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    table = labeled_transactions(get_settings(), first, last)
    write_atomically(table, Path(out))
    unlabeled = table.column(LABEL_COLUMN).null_count
    console.print(
        f"wrote {table.num_rows:,} transactions ({unlabeled:,} without a label yet) to {out}",
        highlight=False,
    )


def add_commands(app: typer.Typer) -> None:
    example_app = typer.Typer(
        help="The card-payment fraud example: its data, the end-to-end demo, its labelled entities."
    )
    example_app.command()(generate)
    example_app.command()(demo)
    example_app.command()(produce)
    example_app.command("entities")(entities_command)
    app.add_typer(example_app, name="example")
