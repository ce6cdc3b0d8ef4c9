"""Source topics as the worker meets them: several per repo, and one deleted and recreated."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fraud_example.generator import GeneratorConfig
from tests.conftest import REDIS_URL
from tests.featurestore.oracle import feature_rows
from tests.servers import wait_for
from tests.streaming.harness import (
    StreamRun,
    assert_online_is_newest,
    assert_same_results,
    create_topic,
    generated_messages,
    send,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

TWO_TOPICS_REPO = Path(__file__).parent / "repos" / "two_topics"
BEGIN = datetime(2026, 5, 4, 8, tzinfo=UTC)


def _events(rng: np.random.Generator, n: int, columns: dict[str, object]) -> pd.DataFrame:
    """`n` events over three hours in time order; each column drawn by its callable."""
    seconds = np.sort(rng.integers(0, 3 * 3600, n))
    frame = pd.DataFrame({name: draw(n) for name, draw in columns.items()})
    frame["event_timestamp"] = [BEGIN + timedelta(seconds=int(s)) for s in seconds]
    return frame


def _messages(frame: pd.DataFrame, key: str) -> list[tuple[bytes, bytes]]:
    return [
        (str(row[key]).encode(),
         json.dumps({**row, "event_timestamp": row["event_timestamp"].isoformat()}).encode())
        for row in frame.to_dict("records")
    ]


def test_two_source_topics_run_in_one_worker_group(tmp_path, kafka_bootstrap) -> None:
    from typer.testing import CliRunner

    from featurestore.cli import app
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    rng = np.random.default_rng(21)
    clicks = _events(rng, 500, {
        "user_id": lambda n: rng.integers(1, 30, n),
        "page_id": lambda n: rng.integers(1, 12, n),
        "dwell": lambda n: np.round(rng.exponential(20, n), 3),
    })
    orders = _events(rng, 200, {
        "shop_id": lambda n: rng.integers(1, 9, n),
        "total": lambda n: np.round(rng.lognormal(3, 1, n), 2),
    })
    # A copy: apply renders feature_store.yaml into the repo, and the tracked one must stay as is.
    repo = shutil.copytree(TWO_TOPICS_REPO, tmp_path / "two_topics")
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL, feature_repo=str(repo))
    for topic, frame, key in ((f"{run.topic}-clicks", clicks, "user_id"),
                              (f"{run.topic}-orders", orders, "shop_id")):
        create_topic(kafka_bootstrap, topic, 2)
        send(kafka_bootstrap, topic, _messages(frame, key))
    worker = run.run_until_applied(2 * len(clicks) + len(orders))  # clicks feed two stages

    assert sorted(t.source_topic for t in worker.topologies) == [
        f"{run.topic}-clicks", f"{run.topic}-orders"]
    with run.settings():
        unknown = CliRunner().invoke(app, ["stream", "reset", "--topic", "no-such-topic"])
    assert unknown.exit_code == 2
    said = " ".join(unknown.output.split())  # however the console wrapped it
    assert "no stream source reads topic(s) ['no-such-topic']" in said
    assert f"['{run.topic}-clicks', '{run.topic}-orders']" in said
    with run.settings() as settings:
        store = feature_store(settings)
        views = select_views(store, ["user_clicks", "page_clicks", "shop_orders"])
    for view in views:
        raw = clicks if view.topic.endswith("-clicks") else orders
        key = view.join_keys[0].name
        expected = feature_rows(raw, view, BEGIN, BEGIN + timedelta(days=1))
        # Events of one key at one instant share their row (as training reads the table).
        expected = expected.drop_duplicates([key, "event_timestamp"]).sort_values(
            [key, "event_timestamp"]).reset_index(drop=True)
        ours = run.features(view.name)
        assert len(ours) == len(expected) > 0, view.name
        for aggregation in view.aggregations:
            np.testing.assert_allclose(ours[aggregation.name].astype(float),
                                       expected[aggregation.name].astype(float), rtol=0, atol=1e-9)
        assert_online_is_newest(store, view, expected)


def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.delete_topics([topic])
    wait_for(lambda: topic not in admin.list_topics(), 30, f"{topic} to be deleted")
    admin.close()
    create_topic(bootstrap, topic, partitions)


def _split_between_instants(messages: list[tuple[bytes, bytes]], at: int) -> int:
    """The first index from `at` whose event time differs from the one before it: a stream
    event at exactly the hand-over instant is the batch's, so no event may straddle it."""
    times = [json.loads(value)["event_timestamp"] for _, value in messages]
    while times[at] == times[at - 1]:
        at += 1
    return at


def _forget_topic_ids(run: StreamRun) -> None:
    """Partition logs as a broker without topic ids (Kafka < 2.8) leaves them."""
    with run.settings() as settings:
        logs = [sorted(d.glob("[0-9]*.parquet")) for d in settings.stream_log_dir.glob("*/*")]
    for path in [files[-1] for files in logs if files]:
        table = pq.read_table(path)
        stored = json.loads(table.schema.metadata[b"featurestore.checkpoint"])
        stored.pop("topic_id")
        pq.write_table(table.replace_schema_metadata(
            {b"featurestore.checkpoint": json.dumps(stored).encode()}), path)


@pytest.fixture(scope="module")
def events_of_two_days() -> list[tuple[bytes, bytes]]:
    return generated_messages(
        GeneratorConfig(start=date(2026, 3, 1), days=2, cards=60, merchants=8, seed=4)
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, kafka_bootstrap, events_of_two_days) -> StreamRun:
    baseline = StreamRun.create(tmp_path_factory.mktemp("uninterrupted"), kafka_bootstrap,
                                REDIS_URL)
    baseline.send(events_of_two_days)
    baseline.run_until_applied(2 * len(events_of_two_days))
    return baseline


@pytest.mark.parametrize("topic_ids", [True, False], ids=["topic-ids", "no-topic-ids"])
def test_a_recreated_topic_stops_the_worker_until_reset(
    tmp_path, kafka_bootstrap, events_of_two_days, uninterrupted, topic_ids
) -> None:
    """A recreated topic stops the worker with an error naming the topic, partition, offsets
    and the reset command, whether its offsets end below the logs' (shorter) or past them
    (longer, where resuming would skip its first events); after the reset the new topic's
    events take over from the offline store, ending as one uninterrupted run of all events."""
    from typer.testing import CliRunner

    from featurestore.cli import app
    from streaming.reset import TopicRestartedError

    messages = events_of_two_days
    # With topic ids the new topic is shorter than the logs; without, much longer.
    split = _split_between_instants(messages, len(messages) // (2 if topic_ids else 5))
    old, new = messages[:split], messages[split:]
    before_reset = len(new) // 4 if topic_ids else len(new)
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    run.send(old)
    run.run_until_applied(2 * len(old))
    if not topic_ids:
        _forget_topic_ids(run)
    _recreate(kafka_bootstrap, run.topic, 3)
    run.send(new[:before_reset])
    with pytest.raises(TopicRestartedError) as stopped:
        run.worker().run(idle_seconds=120)  # (a safety net: the error comes first)
    message = str(stopped.value)
    assert f"topic {run.topic!r} partition " in message
    if topic_ids:
        assert "applied offsets up to " in message and "topic id" in message
    else:
        assert "the last its partition log applied, holds another record" in message
    assert f"featurestore stream reset --topic {run.topic}" in message
    assert len(run.raw()) == len(old)  # nothing of the new topic was applied

    with run.settings():
        result = CliRunner().invoke(app, ["stream", "reset", "--topic", run.topic])
    assert result.exit_code == 0, result.output
    assert "removed the partition logs" in result.output
    run.send(new[before_reset:])
    run.run_until_applied(2 * len(new))
    assert_same_results(run, uninterrupted)
