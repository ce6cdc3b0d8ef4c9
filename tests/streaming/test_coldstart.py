"""Cold start: a fresh worker on a topic whose history the offline store already holds.

Days 1..N are generated into the raw archive, backfilled by Spark and materialized; day N+1
goes through a fresh worker and a real broker, preceded by the tail of day N (events both the
batch and the stream see), with a restart half-way. The stream's online hashes and offline rows must equal what the Spark
job computes over days 1..N+1 of the archive, materialized the same way.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import pytest
import redis

from fraud_example.generator import GeneratorConfig, generate, transactions
from streaming.producer import event_messages
from tests.conftest import REDIS_URL
from tests.streaming.harness import StreamRun

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.spark]

START = date(2026, 3, 1)
HISTORY_DAYS = 1
VIEWS = ("card_transaction_features", "merchant_transaction_features")
BOTH_SAW = 40  # events of day N sent to the stream too


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _batch(run: StreamRun, spark, days: int) -> None:
    """Spark over days 1..`days` of the archive, then materialized into the online store."""
    from featurestore.batch.backfill import backfill
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize

    end = START + timedelta(days=days)
    with run.settings() as settings:
        store = feature_store(settings)
        views = select_views(store, list(VIEWS))
        backfill(lambda: spark, views, START, end)
        materialize(settings, store, [(v, _midnight(START), _midnight(end)) for v in views])


def test_a_fresh_worker_hands_over_from_the_backfill(tmp_path, kafka_bootstrap, spark) -> None:
    history = GeneratorConfig(start=START, days=HISTORY_DAYS, cards=100, merchants=12, seed=13)
    live = dataclasses.replace(history, days=HISTORY_DAYS + 1)
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    with run.settings() as settings:
        generate(history, settings.raw_dir)
    _batch(run, spark, HISTORY_DAYS)

    *_, last_history_day, next_day = transactions(live)
    both_saw = list(event_messages(last_history_day, "card_id"))[-BOTH_SAW:]
    streamed = list(event_messages(next_day, "card_id"))
    half = len(streamed) // 2
    run.send(both_saw + streamed[:half])
    worker = run.run_until_applied(2 * half)
    handed_over = worker.metrics.registry.get_sample_value(
        "featurestore_stream_handed_over_total", {"topic": run.topic})
    assert handed_over == BOTH_SAW
    # A restart inside the first window span: the seed comes back from the partition logs.
    run.send(streamed[half:])
    run.run_until_applied(2 * (len(streamed) - half))
    raw = run.raw()
    assert not raw["transaction_id"].duplicated().any()
    assert len(raw) == sum(t.num_rows for t in transactions(live))
    streamed_online = run.online()
    streamed_rows = {view: run.features(view) for view in VIEWS}

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=b"*" + run.project.encode(), count=1000):
        client.delete(key)
    client.close()
    _batch(run, spark, HISTORY_DAYS + 1)
    assert run.online() == streamed_online
    for view in VIEWS:
        pd.testing.assert_frame_equal(run.features(view), streamed_rows[view])
