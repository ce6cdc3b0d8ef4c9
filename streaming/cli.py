"""`featurestore stream`: replay a file of events into Kafka, run the worker that applies them, start over."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from featurestore.cli.common import clear_errors, console
from featurestore.errors import FeatureStoreError

if TYPE_CHECKING:
    import threading

    from kafka import KafkaProducer

    from featurestore.settings import Settings


EVENT_PRODUCER_ID = "featurestore-produce"


def event_producer(settings: Settings) -> KafkaProducer:
    """A producer of source events; an unreachable broker is a clear error."""
    from kafka.errors import KafkaError

    from streaming import kafka

    try:
        return kafka.producer(settings, client_id=EVENT_PRODUCER_ID, **kafka.EVENT_SENDS)
    except KafkaError as exc:
        raise FeatureStoreError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc


def close_events_producer(producer: KafkaProducer, what: str) -> None:
    """Close an event producer; when a send failed or was interrupted, its unacknowledged
    events are named in a warning instead of a second error masking the first."""
    from streaming import kafka

    kafka.close_producer(
        producer, 10.0,
        unsent=f"events of {what} that Kafka did not acknowledge may not have been delivered "
               "(the topic holds those it did; sending the file again duplicates them)",
    )


@clear_errors
def stream_produce(
    from_file: Annotated[
        Path,
        typer.Option("--from", help="Events to send: Parquet, or JSON lines (.jsonl), in the "
                                    "stream source's declared schema."),
    ],
    topic: Annotated[
        str | None,
        typer.Option(help="Source topic to send to (default: the repo's only stream source)."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Events per second (default: as fast as possible).")
    ] = None,
) -> None:
    """Replay a file of events into a stream source's topic, in file order, keyed as the worker
    expects; every row is checked against the declared schema before any is sent."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.progress import row_progress
    from featurestore.settings import get_settings
    from streaming import replay, topology

    settings = get_settings()
    if rate is not None and rate <= 0:
        raise FeatureStoreError(f"--rate must be positive, got {rate}")
    if not from_file.is_file():
        raise FeatureStoreError(f"--from {from_file}: no such file")
    views = select_views(feature_store(settings), None, aggregated_only=True)
    chosen = replay.choose_topology(topology.build(views, settings.stream_group), topic)
    source = chosen.stages[chosen.source_topic]
    replayed = replay.replay(from_file, chosen, source.key, settings.stream_max_message_bytes)
    producer = event_producer(settings)
    try:
        with row_progress(f"producing to {replayed.topic}") as advance:
            sent = replay.send(producer, replayed, rate=rate, progress=advance)
    finally:
        close_events_producer(producer, f"{from_file} to {replayed.topic}")
    console.print(f"sent {sent:,} events from {from_file} to {replayed.topic}", highlight=False)


@clear_errors
def stream_run(
    idle_seconds: Annotated[
        float | None,
        typer.Option(help="Exit after this long without a new event (default: run until stopped)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (with --processes: this port "
                          "+ the process's index, one port each)."),
    ] = None,
    processes: Annotated[
        int,
        typer.Option(min=1, help="Worker processes to run on this machine, all in the consumer "
                                 "group (one uses one core at the most); a process that fails "
                                 "is restarted with backoff."),
    ] = 1,
) -> None:
    """Run a stream worker: consume every stream source topic, keep online and offline features fresh.

    Start more workers with the same settings (or --processes) to share the partitions.
    SIGTERM or Ctrl-C checkpoints and leaves the group.
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
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if processes > 1:
        _supervise(processes, idle_seconds, metrics_port, stop)
        return
    worker = StreamWorker(settings, feature_store(settings))
    if metrics_port is not None:
        worker.metrics.serve(metrics_port)
    worker.run(stop, idle_seconds=idle_seconds)
    metrics, topics = worker.metrics, worker.topics
    console.print(
        f"stopped: applied {metrics.applied_events(topics):,} events across {len(topics)} "
        f"topic(s); dead letters {sum(metrics.dead_letter_counts().values()):,}"
    )


def _supervise(
    processes: int, idle_seconds: float | None, metrics_port: int | None, stop: threading.Event
) -> None:
    import sys

    from streaming.supervisor import supervise

    def command(index: int) -> list[str]:
        line = [sys.executable, "-m", "featurestore.cli", "stream", "run"]
        if idle_seconds is not None:
            line += ["--idle-seconds", str(idle_seconds)]
        if metrics_port is not None:
            line += ["--metrics-port", str(metrics_port + index)]
        return line

    supervise(command, processes, stop)
    console.print(f"stopped: {processes} worker processes")


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
