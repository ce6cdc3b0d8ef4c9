"""A small generated dataset taken through apply and the Spark backfill, shared by a test module."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraud_example.generator import SCHEMAS, TRANSACTIONS
from tests.conftest import REDIS_URL

START = date(2026, 3, 1)
DAYS = 3
END = START + timedelta(days=DAYS)
# Backfill skips the first day, so its events are only lookback for the second day's windows.
BACKFILL_START = START + timedelta(days=1)
EDGE_CARD = 100_000
EDGE_MERCHANT = 100_000


def edge_events() -> pa.Table:
    """Events at identical timestamps and exactly on window edges, for one extra card/merchant."""
    base = datetime.combine(BACKFILL_START, datetime.min.time(), UTC) + timedelta(hours=12)
    offsets = [
        timedelta(0),
        timedelta(0),  # same instant as the first
        timedelta(minutes=10) - timedelta(microseconds=1),  # first still inside its 10 min
        timedelta(minutes=10),  # first has just left the 10 min window
        timedelta(hours=1),  # first leaves the 1 h window
        timedelta(hours=1),
        timedelta(hours=11, minutes=59, seconds=59),
    ]
    n = len(offsets)
    return pa.table(
        {
            "transaction_id": [f"edge{i}" for i in range(n)],
            "card_id": pa.array([EDGE_CARD] * n, pa.int64()),
            "merchant_id": pa.array([EDGE_MERCHANT, EDGE_MERCHANT, 1, 2, 1, 3, 1], pa.int64()),
            "amount": [10.01, 0.1, 0.2, 99.99, 1234.56, 0.3, 7.77],
            "currency": ["EUR"] * n,
            "merchant_category": ["grocery"] * n,
            "country": ["DE"] * n,
            "channel": ["pos"] * n,
            "event_timestamp": pa.array([base + o for o in offsets], pa.timestamp("us", tz="UTC")),
        }
    ).cast(SCHEMAS[TRANSACTIONS])


@dataclass(frozen=True)
class Pipeline:
    env: dict[str, str]
    cards: int


def build(root: Path, cards: int, project: str | None = None) -> Pipeline:
    """`project`: a Feast project of its own, so the online keys are told apart from any other
    test's in the same Redis db (None: the default project)."""
    from featurestore.batch.backfill import backfill
    from featurestore.batch.spark import spark_session
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings
    from fraud_example.generator import GeneratorConfig, generate

    env = {
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_PROFILE": "services",
        "FEATURESTORE_REDIS_URL": REDIS_URL,
        "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root}/registry.db",
        "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
    }
    if project is not None:
        env["FEATURESTORE_PROJECT"] = project
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        settings = get_settings()
        generate(
            GeneratorConfig(start=START, days=DAYS, cards=cards, merchants=60, seed=11),
            settings.raw_dir,
        )
        edge_dir = settings.raw_dir / "transactions" / f"event_date={BACKFILL_START}"
        pq.write_table(edge_events(), edge_dir / "part-edges.parquet")
        store = apply(settings)
        views = select_views(store, None, aggregated_only=True)
        backfill(lambda: spark_session(settings), views, BACKFILL_START, END)
    return Pipeline(env, cards)


def settings_of(built: Pipeline, monkeypatch: pytest.MonkeyPatch):
    """The settings of `built`, its environment set for the rest of the test."""
    from featurestore.settings import get_settings

    for key, value in built.env.items():
        monkeypatch.setenv(key, value)
    return get_settings()


def untrained_model(settings, entities: pa.Table, directory: Path, service: str):
    """A model of seeded random weights on the encoding of `entities`' export for `service`,
    saved as `directory/model.pt`: what `/v1/score` needs to answer (its scores mean nothing).
    Returns the model and the export."""
    import torch

    from featurestore.export import export
    from featurestore.training.dataset import open_export
    from featurestore.training.encoding import FeatureEncoding
    from featurestore.training.model import FraudModel, fraud_mlp, save_model

    out = export(settings, entities, directory / "rows.parquet", feature_service=service)
    exported = open_export(out.path)
    encoding = FeatureEncoding.from_export(exported.schema, exported.metadata)
    torch.manual_seed(3)
    model = FraudModel(fraud_mlp(encoding.width), encoding, out.export_id, {}, service)
    save_model(model, directory / "model.pt")
    return model, out
