"""The producer sends generated transactions into a real Kafka-protocol broker, valid and in order."""

from __future__ import annotations

import time
import uuid

import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from typer.testing import CliRunner

from featurestore.cli import app
from featurestore.offline import schema_from_ddl
from streaming.validation import EventValidator, Rejected
from tests.featurestore import pipeline

pytestmark = pytest.mark.kafka


@pytest.fixture
def topic(kafka_bootstrap) -> str:
    name = f"transactions-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    admin.close()
    return name


def _consume(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    messages, deadline = [], time.monotonic() + 60
    while len(messages) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=1000).values():
            messages.extend(batch)
    consumer.close()
    return messages


def test_produce_sends_valid_generated_events_keyed_by_card(
    configure, kafka_bootstrap, topic
) -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from fraud_example.generator import GeneratorConfig, generate

    settings = configure(kafka_bootstrap_servers=kafka_bootstrap, transactions_topic=topic)
    options = ["--start", str(pipeline.START), "--cards", "40", "--merchants", "10", "--seed", "5"]
    summary = generate(
        GeneratorConfig(start=pipeline.START, days=2, cards=40, merchants=10, seed=5),
        settings.raw_dir,
    )
    store = apply(settings)
    second_day = str(pipeline.START.replace(day=pipeline.START.day + 1))
    started = time.perf_counter()
    result = CliRunner().invoke(
        app,
        ["example", "produce", *options, "--days", "2", "--from-day", second_day, "--rate", "2000"],
    )
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    # The stream continues the generated history: the second day, exactly as generated.
    archived = pq.read_table(
        settings.raw_dir / "transactions" / f"event_date={second_day}" / "part-00000.parquet"
    )
    sent = archived.num_rows
    assert sent < summary.rows["transactions"]
    assert f"sent {sent:,} events" in result.output
    assert elapsed >= sent / 2000 * 0.9  # the rate holds

    view = select_views(store, ["card_transaction_features"])[0]
    validator = EventValidator(schema_from_ddl(view.raw_schema), max_bytes=4096)
    messages = _consume(kafka_bootstrap, topic, sent)
    assert len(messages) == sent
    by_partition: dict[int, list[int]] = {}
    ids = set()
    for message in messages:
        event = validator.parse(message.value)
        assert not isinstance(event, Rejected), event
        ids.add(event["transaction_id"])
        assert message.key == str(event["card_id"]).encode()
        by_partition.setdefault(message.partition, []).append(event["event_timestamp"])
    # Within a partition, events arrive in event-time order.
    assert all(times == sorted(times) for times in by_partition.values())
    assert ids == set(archived.column("transaction_id").to_pylist())


def test_produce_reports_an_unreachable_broker(configure) -> None:
    from featurestore.feast_config import apply

    apply(configure(kafka_bootstrap_servers="127.0.0.1:1"))
    result = CliRunner().invoke(app, ["example", "produce", "--limit", "1"])
    assert result.exit_code == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in result.output
