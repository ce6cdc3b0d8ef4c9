"""`featurestore demo`: the main job end to end on the configured profile (embedded by default).

generate -> apply -> Spark backfill -> materialize -> online lookups through Feast's own reader.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pyarrow.dataset as ds
from rich.console import Console
from rich.table import Table

from featurestore.batch.backfill import backfill
from featurestore.batch.spark import spark_session
from featurestore.definitions import select_views
from featurestore.feast_config import apply
from featurestore.generator import GeneratorConfig, generate
from featurestore.materialize import materialize
from featurestore.progress import row_progress
from featurestore.settings import get_settings

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
    with row_progress("1/4 generating transactions") as advance:
        generate(config, settings.raw_dir, progress=advance)

    with console.status("2/4 applying feature_repo/ to the registry"):
        store = apply(settings)

    views = select_views(store, None)
    aggregated = [v for v in views if v.is_aggregated]
    with console.status("3/4 Spark backfill of the windowed aggregations"):
        backfill(lambda: spark_session(settings), aggregated, DEMO_START, end)

    start_ts = datetime.combine(DEMO_START, time(), UTC)
    end_ts = datetime.combine(end, time(), UTC)
    with row_progress("4/4 materializing to the online store") as advance:
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


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "—" if value is None else str(value)
