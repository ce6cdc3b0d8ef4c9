"""The stream worker's capture hook: the rows it writes online arrive in the capture topic."""

from __future__ import annotations

import uuid
from datetime import date

import orjson
import pytest

from featurestore.definitions import select_views
from fraud_example.generator import GeneratorConfig
from tests.conftest import REDIS_URL
from tests.monitors.test_capture import capture_records
from tests.streaming.harness import StreamRun, generated_messages

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

VIEWS = ("card_transaction_features", "merchant_transaction_features")


def _rows_written(worker, view: str) -> float:
    worker.metrics.online_rows.labels(view)  # the process's value shows once the child exists
    return worker.metrics.registry.get_sample_value(
        "featurestore_stream_online_rows_written_total", {"view": view}) or 0.0


def test_written_rows_arrive_in_the_capture_topic(tmp_path, kafka_bootstrap) -> None:
    topic = f"capture-{uuid.uuid4().hex[:10]}"
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL, partitions=2,
                           capture_rate="1", capture_topic=topic)
    run.send(generated_messages(
        GeneratorConfig(start=date(2026, 3, 1), days=1, cards=40, merchants=6, seed=11)
    ))
    # It stops only once every row it wrote is acknowledged by the broker: the close, whose
    # wait is bounded, then has nothing left to send, however slowly the machine runs.
    worker = run.worker()
    # Prometheus keeps one value per name and labels in a process (Feast's multiprocess mode),
    # so the workers of earlier tests count in it too: this worker's rows are the difference.
    before = {view: _rows_written(worker, view) for view in VIEWS}
    run.run_to_end(worker)
    assert worker.capture.dropped == {}

    features = {
        view.name: [f.name for f in view.features]
        for view in select_views(worker.store, list(VIEWS))
    }
    rows: dict[str, int] = {}
    newest: dict[str, int] = {}
    for record in capture_records(kafka_bootstrap, topic):
        body = orjson.loads(record.value)
        view = body["subject"].removeprefix("view:")
        assert record.key == body["subject"].encode() and view in VIEWS
        assert body["columns"] == features[view]
        assert all(len(row) == len(features[view]) for row in body["rows"])
        rows[view] = rows.get(view, 0) + len(body["rows"])
        assert set(body["newest_events"]) == {view}
        newest[view] = max(newest.get(view, 0), body["newest_events"][view])

    registry = worker.metrics.registry
    raw_newest = int(run.raw()["event_timestamp"].max().timestamp() * 1000)
    for view in VIEWS:
        written = _rows_written(worker, view) - before[view]
        assert rows[view] == written > 0
        assert worker.capture.sent[f"view:{view}"] == written
        # In the worker's registry (a process shares one value per name and labels: at least).
        assert registry.get_sample_value(
            "featurestore_capture_rows_sent_total", {"subject": f"view:{view}"}) >= written
        assert newest[view] == raw_newest
