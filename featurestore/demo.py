"""`featurestore demo`: the main job end to end on the configured profile (embedded by default).

generate -> apply -> Spark backfill -> materialize -> online lookups through Feast's own reader
-> a day of live events through Kafka and the stream worker, and the online values it changed.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time as clock
from datetime import UTC, date, datetime, time, timedelta

import pyarrow.compute as pc
import pyarrow.dataset as ds
from feast import FeatureStore
from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from featurestore.batch.backfill import backfill
from featurestore.batch.spark import spark_session
from featurestore.definitions import select_views
from featurestore.feast_config import apply
from featurestore.generator import GeneratorConfig, generate, transactions
from featurestore.materialize import materialize
from featurestore.progress import row_progress
from featurestore.settings import Settings, get_settings

DEMO_START = date(2026, 1, 1)
DEMO_DAYS = 14
DEMO_CARDS = 2_000
DEMO_MERCHANTS = 300
LOOKUP_CARDS = (1, 2, 3)


def _rows(path) -> int:
    return ds.dataset(str(path), format="parquet", partitioning="hive").count_rows()


def run_demo(console: Console) -> None:
    settings = get_settings()
    end = DEMO_START + timedelta(days=DEMO_DAYS)
    console.rule(f"featurestore demo — profile {settings.profile}, data in {settings.data_dir}")

    config = GeneratorConfig(
        start=DEMO_START, days=DEMO_DAYS, cards=DEMO_CARDS, merchants=DEMO_MERCHANTS
    )
    with row_progress("1/5 generating transactions") as advance:
        generate(config, settings.raw_dir, progress=advance)

    with console.status("2/5 applying feature_repo/ to the registry"):
        store = apply(settings)

    views = select_views(store, None)
    aggregated = [v for v in views if v.is_aggregated]
    with console.status("3/5 Spark backfill of the windowed aggregations"):
        backfill(lambda: spark_session(settings), aggregated, DEMO_START, end)

    start_ts = datetime.combine(DEMO_START, time(), UTC)
    end_ts = datetime.combine(end, time(), UTC)
    with row_progress("4/5 materializing to the online store") as advance:
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

    service = store.get_feature_service("fraud_detection_v1")
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

    _stream_live_day(console, settings, store, config)


STREAMED_FEATURES = (
    "card_transaction_features:card_txn_count_24h",
    "card_transaction_features:card_amount_sum_24h",
    "card_transaction_features:card_txn_count_1h",
)


def _stream_live_day(
    console: Console, settings: Settings, store: FeatureStore, history: GeneratorConfig
) -> None:
    """Send the day after the history through Kafka; the stream worker applies it."""
    from streaming.broker import local_broker
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
    broker = (
        local_broker()
        if settings.profile == "embedded"
        else contextlib.nullcontext(settings.kafka_bootstrap_servers)
    )
    with console.status(f"5/5 streaming {day.num_rows:,} live events of {live.dates[-1]}"), \
            broker as bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        worker = StreamWorker(settings, store)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        # One request in flight: a retried batch cannot overtake the next, so order holds.
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5,
            max_in_flight_requests_per_connection=1,
        )
        sent = send_events(producer, worker.topology.source_topic, [day], "card_id")
        producer.close()
        deadline = clock.monotonic() + 180
        topics = worker.topology.topics
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


def _card_features(store: FeatureStore, cards: list[int]) -> dict[str, list]:
    return store.get_online_features(
        features=list(STREAMED_FEATURES), entity_rows=[{"card_id": c} for c in cards]
    ).to_dict()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "—" if value is None else str(value)
