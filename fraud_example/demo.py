"""`featurestore example demo`: the main job end to end on the configured profile (embedded by default).

generate -> apply -> Spark backfill -> materialize -> online lookups through Feast's own reader
-> a day of live events through Kafka and the stream worker, and the online values it changed
-> a point-in-time training export -> a trained fraud model -> lookups and scores through the API
-> drift monitoring of the scored traffic: an injected shift raises an alert at a local receiver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time as clock
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
from feast import FeatureStore
from rich.console import Console
from rich.table import Table

from featurestore.batch.backfill import backfill
from featurestore.batch.spark import spark_session
from featurestore.definitions import select_views
from featurestore.feast_config import apply
from featurestore.materialize import materialize
from featurestore.progress import row_progress
from featurestore.settings import Settings, get_settings
from fraud_example.generator import GeneratorConfig, generate, transactions

DEMO_START = date(2026, 1, 1)
DEMO_DAYS = 14
DEMO_CARDS = 2_000
DEMO_MERCHANTS = 300
LOOKUP_CARDS = (1, 2, 3)
SERVICE = "fraud_detection_v1"


def _rows(path) -> int:
    return ds.dataset(str(path), format="parquet", partitioning="hive").count_rows()


def run_demo(console: Console) -> None:
    settings = get_settings()
    end = DEMO_START + timedelta(days=DEMO_DAYS)
    console.rule(f"featurestore example demo — profile {settings.profile}, data in {settings.data_dir}")

    config = GeneratorConfig(
        start=DEMO_START, days=DEMO_DAYS, cards=DEMO_CARDS, merchants=DEMO_MERCHANTS
    )
    with row_progress("1/8 generating transactions") as advance:
        generate(config, settings.raw_dir, progress=advance)

    with console.status("2/8 applying feature_repo/ to the registry"):
        store = apply(settings)

    views = select_views(store, None)
    aggregated = [v for v in views if v.is_aggregated]
    with console.status("3/8 Spark backfill of the windowed aggregations"):
        backfill(lambda: spark_session(settings), aggregated, DEMO_START, end)

    start_ts = datetime.combine(DEMO_START, time(), UTC)
    end_ts = datetime.combine(end, time(), UTC)
    with row_progress("4/8 materializing to the online store") as advance:
        results = materialize(
            settings, store, [(v, start_ts, end_ts) for v in views], progress=advance
        )

    counts = Table(title="Row counts")
    counts.add_column("dataset")
    counts.add_column("rows", justify="right")
    for name in ("transactions", "labels", "card_profiles"):
        counts.add_row(f"raw/{name}", f"{_rows(settings.raw_dir / name):,}")
    for view in aggregated:
        counts.add_row(f"offline/{view.name}", f"{_rows(view.offline.path):,}")
    for result in results:
        counts.add_row(f"online/{result.view} (entities written)", f"{result.rows_written:,}")
    console.print(counts)

    service = store.get_feature_service(SERVICE)
    online = store.get_online_features(
        features=service,
        entity_rows=[
            {"card_id": card, "merchant_id": card, "amount": 120.0} for card in LOOKUP_CARDS
        ],
    ).to_dict()
    lookups = Table(title="Online lookups: feature service fraud_detection_v1 (amount = 120.0)")
    lookups.add_column("feature")
    for card in LOOKUP_CARDS:
        lookups.add_column(f"card {card}", justify="right")
    for name, values in online.items():
        lookups.add_row(name, *[_fmt(v) for v in values])
    console.print(lookups)

    from streaming.broker import local_broker

    # One Kafka broker for the live day and for the capture log the monitors read.
    broker = (
        local_broker()
        if settings.profile == "embedded"
        else contextlib.nullcontext(settings.kafka_bootstrap_servers)
    )
    with broker as bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        cards = _stream_live_day(console, settings, store, config)
        _export_and_train(console, settings, DEMO_START + timedelta(days=1), end)
        _serve(console, settings, cards, config)


STREAMED_FEATURES = (
    "card_transaction_features:card_txn_count_24h",
    "card_transaction_features:card_amount_sum_24h",
    "card_transaction_features:card_txn_count_1h",
)


def _stream_live_day(
    console: Console, settings: Settings, store: FeatureStore, history: GeneratorConfig
) -> list[int]:
    """Send the day after the history through Kafka; the stream worker applies it."""
    from streaming import kafka
    from streaming.producer import send_events
    from streaming.worker import StreamWorker

    live = GeneratorConfig(
        start=history.start, days=history.days + 1, cards=history.cards,
        merchants=history.merchants, seed=history.seed,
    )
    day = next(transactions(live, live.dates[-1]))
    busiest = pc.value_counts(day.column("card_id"))
    order = pc.array_sort_indices(busiest.field("counts"), order="descending")
    cards = busiest.field("values").take(order[:3]).to_pylist()
    before = _card_features(store, cards)

    # A fresh run: the previous demo's partition log belongs to a broker that is gone.
    shutil.rmtree(settings.stream_log_dir, ignore_errors=True)
    with console.status(f"5/8 streaming {day.num_rows:,} live events of {live.dates[-1]}"):
        worker = StreamWorker(settings, store)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        # The adapter's producer keeps one request in flight, so event order holds; the broker
        # was just started, so it gets kafka-python's full 30 s to answer.
        producer = kafka.producer(settings, bootstrap_timeout_ms=30_000)
        sent = send_events(producer, settings.transactions_topic, [day], "card_id")
        producer.close()
        deadline = clock.monotonic() + 180
        topics = worker.topics
        while worker.metrics.applied_events(topics) < sent * len(topics):
            if clock.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(
                    f"the stream worker applied {worker.metrics.applied_events(topics):,} "
                    f"of {sent * len(topics):,} events within 3 minutes"
                )
            clock.sleep(0.1)
        stop.set()
        thread.join(timeout=60)
    after = _card_features(store, cards)

    p50, p99 = worker.metrics.freshness_percentiles([50, 99])
    table = Table(
        title=f"Stream worker: {sent:,} events applied; online values before -> after "
        f"(freshness p50 {p50:,.0f} ms, p99 {p99:,.0f} ms)"
    )
    table.add_column("feature")
    for card in cards:
        table.add_column(f"card {card}", justify="right")
    for feature in STREAMED_FEATURES:
        name = feature.split(":")[1]
        table.add_row(
            name,
            *[f"{_fmt(b)} -> {_fmt(a)}" for b, a in zip(before[name], after[name], strict=True)],
        )
    console.print(table)
    return cards


def _export_and_train(console: Console, settings: Settings, start: date, end: date) -> None:
    """A point-in-time training set of the labelled transactions, and a model trained on it."""
    from featurestore.export import export
    from featurestore.training.model import train
    from fraud_example.labels import LABEL_COLUMN, labeled_transactions

    out = settings.exports_dir / "fraud_training.parquet"
    with console.status(f"6/8 point-in-time export of the labelled transactions {start} .. {end}"):
        # The first day only gives the windows their history.
        exported = export(
            settings, labeled_transactions(settings, start, end), out,
            feature_service=SERVICE,
        )
    with console.status(f"6/8 training the fraud MLP on {exported.rows:,} rows"):
        trained = train(out, settings.model_path, label=LABEL_COLUMN, epochs=4, seed=7)
    console.print(
        f"exported {exported.rows:,} rows x {len(exported.features)} features "
        f"({exported.export_id}, {exported.seconds:.1f} s) to {out}\n"
        f"trained {trained.model_path}: ROC AUC {trained.roc_auc:.3f} on the "
        f"{trained.holdout_rows:,} transactions from {trained.holdout_start:%Y-%m-%d %H:%M} on"
    )


def _serve(
    console: Console, settings: Settings, cards: list[int], history: GeneratorConfig
) -> None:
    """`featurestore serve` on localhost, capturing every row it serves: lookups and scores
    through the Python client, then the drift monitors on the traffic it scored."""
    from featurestore.client import FeatureClient
    from fraud_example.monitoring import run_monitoring

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # The demo's server listens on 127.0.0.1 only, so it runs without API keys (explicitly).
    env = {**os.environ, "FEATURESTORE_API_AUTH": "off",
           "FEATURESTORE_DATA_DIR": str(settings.data_dir),
           "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "FEATURESTORE_CAPTURE_RATE": "1.0"}
    command = [str(Path(sys.executable).parent / "featurestore"), "serve", "--port", str(port),
               "--workers", "1"]
    # Its log goes to a file: a pipe nobody reads while the monitors run would fill and stall it.
    log_path = settings.data_dir / "demo-serve.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        with console.status(f"7/8 serving on {url}"), FeatureClient(url, retries=0) as client:
            _wait_ready(client, server, log_path)
            entities: dict[str, list] = {"card_id": cards, "merchant_id": [1] * len(cards),
                        "amount": [120.0] * len(cards)}
            rows = client.online_features(entities, feature_service=SERVICE)
            scores = client.score(entities)
        _show_served(console, url, cards, rows, scores)
        with FeatureClient(url, retries=0) as client:
            live_day = DEMO_START + timedelta(days=history.days)
            run_monitoring(console, settings.model_copy(update={"public_url": url}), client,
                           history, live_day)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _show_served(console: Console, url: str, cards: list[int], rows, scores) -> None:
    values, statuses = rows.to_dict(), rows.statuses()
    table = Table(title=f"Through the API ({url}): lookups and fraud scores, amount = 120.0")
    table.add_column("feature")
    for card in cards:
        table.add_column(f"card {card}", justify="right")
    for name in ("card_txn_count_1h", "card_amount_mean_24h", "amount_to_card_mean_24h",
                 "credit_limit", "merchant_txn_count_24h"):
        table.add_row(name, *[f"{_fmt(v)} ({s.lower()})" for v, s in
                              zip(values[name], statuses[name], strict=True)])
    table.add_row("fraud score", *[f"{score:.4f}" for score in scores])
    console.print(table)


def _wait_ready(client, server: subprocess.Popen, log_path: Path) -> None:
    deadline = clock.monotonic() + 120
    while not client.ready():
        if server.poll() is not None:
            raise RuntimeError(f"featurestore serve exited: {log_path.read_text()}")
        if clock.monotonic() > deadline:
            raise RuntimeError("featurestore serve was not ready within 2 minutes")
        clock.sleep(0.3)


def _card_features(store: FeatureStore, cards: list[int]) -> dict[str, list]:
    return store.get_online_features(
        features=list(STREAMED_FEATURES), entity_rows=[{"card_id": c} for c in cards]
    ).to_dict()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "—" if value is None else str(value)
