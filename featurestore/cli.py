"""`featurestore` command line: generate, apply, backfill, materialize, demo."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import pydantic
import redis
import sqlalchemy.exc
import typer
from rich.console import Console

from featurestore.errors import FeatureStoreError

app = typer.Typer(
    help="Feature store on Feast: Spark backfills, fast Redis materialization, drift monitors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# soft_wrap: an error stays one line, whole, for people and log collectors alike.
console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., object])


def _clear_errors(command: F) -> F:
    """Errors users can act on become one line naming the problem, and exit code 2."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except FeatureStoreError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
        except pydantic.ValidationError as exc:
            console.print(f"[red]error:[/red] invalid settings: {exc}", highlight=False)
        except redis.ConnectionError as exc:
            console.print(f"[red]error:[/red] cannot reach Redis: {exc}", highlight=False)
        except sqlalchemy.exc.OperationalError as exc:
            console.print(
                f"[red]error:[/red] cannot reach the registry database: {exc.orig}",
                highlight=False,
            )
        raise typer.Exit(code=2)

    return run  # type: ignore[return-value]


Views = Annotated[
    list[str] | None,
    typer.Option("--view", "-v", help="Feature view to process (repeatable; default: all)."),
]


@app.command()
@_clear_errors
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
    from featurestore.generator import GeneratorConfig
    from featurestore.generator import generate as run_generator
    from featurestore.progress import row_progress
    from featurestore.settings import get_settings

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


@app.command()
@_clear_errors
def apply() -> None:
    """Upgrade our SQL schema (as `db upgrade`), register feature_repo/ in the registry (feast
    apply) and render feature_store.yaml."""
    from featurestore.feast_config import apply as apply_repo
    from featurestore.settings import get_settings

    settings = get_settings()
    _upgrade_schema(settings)
    apply_repo(settings)
    console.print(f"applied {settings.feature_repo} to project {settings.project!r}")


db_app = typer.Typer(help="Our SQL schema (API keys, dataset jobs, monitors): Alembic revisions.")
app.add_typer(db_app, name="db")


def _upgrade_schema(settings) -> None:
    from featurestore.db import raw_engine
    from featurestore.migrations import upgrade

    before, after = upgrade(raw_engine(settings))
    if before.current == after.current:
        console.print(f"schema already at {after.current} (head)")
    else:
        console.print(f"schema upgraded from {before.current or 'none'} to {after.current}")


@db_app.command("upgrade")
@_clear_errors
def db_upgrade() -> None:
    """Migrate the database to this version's schema (stop every other process first)."""
    from featurestore.settings import get_settings

    _upgrade_schema(get_settings())


@db_app.command("current")
@_clear_errors
def db_current() -> None:
    """Print the database's schema revision and how it compares with this version's."""
    from featurestore.db import raw_engine
    from featurestore.migrations import describe, read_state
    from featurestore.settings import get_settings

    with raw_engine(get_settings()).connect() as connection:
        print(describe(read_state(connection)))


@db_app.command("history")
@_clear_errors
def db_history() -> None:
    """List the schema revisions this version has, oldest first."""
    from featurestore.migrations import history

    for script in history():
        print(f"{script.revision}  {script.doc}{'  (head)' if script.is_head else ''}")


@db_app.command("revision")
@_clear_errors
def db_revision(
    message: Annotated[str, typer.Argument(help="What the revision changes, e.g. 'alert groups'.")],
) -> None:
    """For developers: write the next revision from the tables the code declares (review it)."""
    # Each module declares its tables at import.
    import featurestore.api.datasets
    import featurestore.apikeys  # noqa: F401
    import monitors.store  # noqa: F401
    from featurestore.db import METADATA
    from featurestore.migrations import new_revision

    console.print(f"wrote {new_revision(message, METADATA)}")


@app.command()
@_clear_errors
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


@app.command()
@_clear_errors
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
        (v, incremental_start(v, until) if incremental else parse_time(start, "--start"), until)
        for v in views
    ]
    with row_progress("materializing rows") as advance:
        results = run_materialize(
            settings, store, ranges, progress=advance, incremental=incremental
        )
    for r in results:
        rate = r.rows_read / r.seconds if r.seconds else 0.0
        console.print(
            f"{r.view}: read {r.rows_read:,} rows, wrote {r.rows_written:,} entities "
            f"({rate:,.0f} rows/s)"
        )


stream_app = typer.Typer(help="Kafka streaming: send events, run the worker that applies them.")
app.add_typer(stream_app, name="stream")


@stream_app.command("produce")
@_clear_errors
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


@stream_app.command("run")
@_clear_errors
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


@stream_app.command("reset")
@_clear_errors
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


@app.command()
@_clear_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes (0: one per CPU core).", min=0)
    ] = 0,
) -> None:
    """Serve the HTTP API: online features, scores, dataset exports (see /docs)."""
    import os
    import tempfile

    import uvicorn

    from featurestore.settings import get_settings

    settings = get_settings()
    if settings.api_auth == "off":
        console.print("[yellow]warning:[/yellow] api_auth is off: anyone who reaches the port "
                      "can read features and export datasets")
    # Every worker writes its metrics here; /metrics sums them (prometheus_client multiprocess).
    # Set before anything imports prometheus_client, and fresh per server run.
    metrics_dir = tempfile.mkdtemp(prefix="featurestore-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = metrics_dir
    count = workers or os.cpu_count() or 1
    console.print(f"serving on http://{host}:{port} with {count} worker(s); docs at /docs")
    uvicorn.run(
        "featurestore.api.app:create_app", factory=True, host=host, port=port, workers=count,
        loop="uvloop", http="httptools", access_log=False, log_level="warning",
        proxy_headers=False,  # behind a proxy, its own access log has the client addresses
    )


keys_app = typer.Typer(help="API keys of the HTTP API (stored hashed in the SQL database).")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@_clear_errors
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


@keys_app.command("revoke")
@_clear_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (from `keys list`).")]) -> None:
    """Revoke a key (servers stop accepting it within 5 seconds)."""
    from featurestore.apikeys import revoke_key
    from featurestore.db import engine
    from featurestore.settings import get_settings

    key = revoke_key(engine(get_settings()), key_id)
    console.print(f"revoked API key {key.key_id} ({key.name})")


@keys_app.command("list")
@_clear_errors
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


monitors_app = typer.Typer(help="Drift monitors: baselines, the scheduler loop, the config check.")
app.add_typer(monitors_app, name="monitors")


@monitors_app.command("baseline")
@_clear_errors
def monitors_baseline(
    export: Annotated[
        Path | None, typer.Option(help="Training export to build the baseline from.")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Model file: its scores join the baseline, and without --export the "
                          "export it was trained on is found under the exports directory."),
    ] = None,
    feature_view: Annotated[
        str | None,
        typer.Option(help="Baseline of one feature view's features (for stream-worker "
                          "monitors) instead of the export's feature service."),
    ] = None,
    sample_rows: Annotated[
        int, typer.Option(min=1_000, help="Rows of the reference sample.")
    ] = 100_000,
) -> None:
    """Build a new baseline version from a training export (and the model trained on it)."""
    from featurestore.settings import get_settings
    from monitors.baseline import baseline_for_model, build_baseline

    settings = get_settings()
    if export is None and model is None:
        raise FeatureStoreError("give --export FILE, --model FILE, or both")
    with console.status("building the baseline"):
        if export is None:
            baseline = baseline_for_model(
                settings, model, feature_view=feature_view, sample_rows=sample_rows
            )
        else:
            baseline = build_baseline(settings, export, feature_view=feature_view,
                                      model_path=model, sample_rows=sample_rows)
    console.print(
        f"baseline {baseline.subject} v{baseline.version} from export {baseline.export_id} "
        f"({baseline.rows:,} rows; sample of {baseline.sample_rows:,} in {baseline.sample_path}; "
        f"{len(baseline.profile)} columns)"
    )


@monitors_app.command("baselines")
@_clear_errors
def monitors_baselines() -> None:
    """List the stored baselines."""
    from rich.table import Table

    from featurestore.settings import get_settings
    from monitors.baseline import list_baselines

    table = Table("subject", "version", "export", "rows", "sample", "model", "created")
    for b in list_baselines(get_settings()):
        table.add_row(b.subject, str(b.version), b.export_id, f"{b.rows:,}",
                      f"{b.sample_rows:,}", str(b.model_path or ""),
                      f"{b.created_at:%Y-%m-%d %H:%M}")
    Console().print(table)


@monitors_app.command("check")
@_clear_errors
def monitors_check() -> None:
    """Check the monitors file against the registry (and the notifiers' secrets)."""
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from monitors.config import check_secrets, load_monitors

    settings = get_settings()
    config = load_monitors(settings.monitors_config, feature_store(settings))
    check_secrets(config, str(settings.monitors_config))
    for name, monitor in config.monitors.items():
        console.print(f"{name}: {monitor.subject}, {len(monitor.rules)} rules, "
                      f"notifies {monitor.notify or 'nobody'}")
    console.print(f"{settings.monitors_config}: {len(config.monitors)} monitors, ok")


@monitors_app.command("run")
@_clear_errors
def monitors_run(
    once: Annotated[
        bool, typer.Option(help="Check the windows that have closed, deliver, and exit.")
    ] = False,
) -> None:
    """The monitor worker: read the capture log, check windows, raise and deliver alerts."""
    import logging
    import signal
    import threading

    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from monitors.config import MonitorsConfigSource, check_names
    from monitors.worker import MonitorWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    store = feature_store(settings)
    # Reloaded when the file changes; an invalid edit keeps the last valid version in use.
    source = MonitorsConfigSource(settings.monitors_config, lambda c: check_names(c, store))
    source.current()  # a file that is invalid at start is an error at once
    stop = threading.Event()
    for received in (signal.SIGTERM, signal.SIGINT):
        signal.signal(received, lambda *_: stop.set())
    report = MonitorWorker(settings, source.current).run(stop, until_idle=once)
    console.print(
        f"{len(report.runs)} windows checked, {report.delivered} notifications delivered, "
        f"{report.retried} to retry, {report.failed} failed"
    )
    for name, error in report.failures.items():
        console.print(f"[red]monitor {name} failed:[/red] {error}", highlight=False)
    if report.failures:
        raise typer.Exit(code=1)


@app.command()
@_clear_errors
def demo() -> None:
    """Run the whole pipeline on the embedded profile, up to a drift alert."""
    import warnings

    from featurestore.demo import run_demo

    # Libraries' notices about their own APIs (Evidently, litestar, Feast's "experimental"
    # views) would bury the demo's tables; they say nothing about the run.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="feast")
    run_demo(console)


@app.command()
@_clear_errors
def train(
    export: Annotated[Path, typer.Option(help="Training export (Parquet) to learn from.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the model file (default: model_path, which "
                          "POST /v1/score serves)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training rows.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per gradient step.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same model).")] = 0,
) -> None:
    """Train the fraud model on an export; report ROC AUC on its latest fifth of rows."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from featurestore.settings import get_settings
    from featurestore.training.model import train as run_training

    out = out or get_settings().model_path
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


@app.command("export")
@_clear_errors
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


@app.command("entities")
@_clear_errors
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


if __name__ == "__main__":
    app()
