"""`featurestore stream`: send events into Kafka, run the worker that applies them, start over."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from featurestore.cli.common import clear_errors, console
from featurestore.errors import FeatureStoreError


@clear_errors
def stream_produce(
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
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.generator import GeneratorConfig, transactions
    from featurestore.progress import row_progress
    from featurestore.settings import get_settings
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
    if not view.topic or not view.message_key:
        raise FeatureStoreError(
            f"stream feature view {view.name!r}: its KafkaSource needs a topic and a "
            "message_key tag"
        )
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            linger_ms=5,
            # Events of a card stay in event-time order: a retried batch cannot overtake the next.
            max_in_flight_requests_per_connection=1,
            # An unreachable broker is reported within 10 s, not after the 30 s default.
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as exc:
        raise FeatureStoreError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc
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
    producer.close()
    console.print(f"sent {sent:,} events to {view.topic}")


@clear_errors
def stream_run(
    idle_seconds: Annotated[
        float | None,
        typer.Option(help="Exit after this long without a new event (default: run until stopped)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Run a stream worker: consume every stream source topic, keep online and offline features fresh.

    Start more workers with the same settings to share the partitions. SIGTERM or Ctrl-C
    checkpoints and leaves the group.
    """
    import logging
    import signal
    import threading

    from rich.logging import RichHandler

    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from streaming.worker import StreamWorker

    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)]
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)
    settings = get_settings()
    worker = StreamWorker(settings, feature_store(settings))
    if metrics_port is not None:
        worker.metrics.serve(metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker.run(stop, idle_seconds=idle_seconds)
    metrics, topics = worker.metrics, worker.topics
    console.print(
        f"stopped: applied {metrics.applied_events(topics):,} events across {len(topics)} "
        f"topic(s); dead letters {sum(metrics.dead_letter_counts().values()):,}"
    )


@clear_errors
def stream_reset(
    topic: Annotated[
        list[str] | None,
        typer.Option(help="Source topic to start over (repeatable; default: every one)."),
    ] = None,
) -> None:
    """Start source topics over after they were recreated or truncated (stop the workers first).

    Removes their partition logs, keeps what they wrote to the offline store as batch data, and
    deletes their internal repartition topics; the next worker reads each topic from its
    beginning and takes over from the offline store.
    """
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from streaming import reset, topology

    settings = get_settings()
    views = select_views(feature_store(settings), None, aggregated_only=True)
    chosen = reset.select(topology.build(views, settings.stream_group), topic)
    for line in reset.reset(settings, chosen) or ["nothing to reset"]:
        console.print(line)


def add_commands(app: typer.Typer) -> None:
    stream_app = typer.Typer(help="Kafka streaming: send events, run the worker that applies them.")
    stream_app.command("produce")(stream_produce)
    stream_app.command("run")(stream_run)
    stream_app.command("reset")(stream_reset)
    app.add_typer(stream_app, name="stream")
