"""Closing a producer while the broker is away never raises: kafka-python's `close` flushes
first and raises KafkaTimeoutError when sends are unacknowledged (leaving its sender thread
running), which made the stream worker's shutdown raise over the error that caused it. Each
close path (the stream worker's, the capture log's, the event producer's) is closed here with
a send pending and the broker stopped: it warns, says what was not delivered, and leaves no
producer thread behind."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry

from featurestore.settings import Settings
from monitors.capture import CaptureLog
from streaming.broker import local_broker
from streaming.cli import EVENT_PRODUCER_ID, close_events_producer, event_producer
from tests.conftest import REDIS_URL
from tests.streaming.harness import StreamRun, create_topic

pytestmark = [pytest.mark.kafka]


def _sender_alive(client_id: str) -> bool:
    """Whether the network thread of a producer with `client_id` still runs."""
    return any(t.name == f"{client_id}-network-thread" and t.is_alive()
               for t in threading.enumerate())


@pytest.mark.redis
def test_the_worker_shuts_down_without_raising_while_the_broker_is_away(tmp_path, caplog) -> None:
    with local_broker() as address:
        run = StreamRun.create(tmp_path, address, REDIS_URL)
        worker = run.worker()
        worker.producer = worker._new_producer()
        worker.producer.send(run.topic, b"delivered").get(timeout=30)
    # The broker is gone; this forward can never be acknowledged.
    worker.producer.send(run.topic, b"never acknowledged")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "featurestore.kafka"):
        worker._close()  # raised KafkaTimeoutError
    assert time.monotonic() - started < 30
    assert "did not acknowledge every send within 5 s" in caplog.text
    assert "forwards to repartition topics and dead letters are not delivered" in caplog.text
    assert "resume from their last checkpoint" in caplog.text
    assert not _sender_alive(f"{run.env['FEATURESTORE_STREAM_GROUP']}-worker")


def test_the_capture_log_closes_while_the_broker_is_away(caplog) -> None:
    client_id = f"capture-{uuid.uuid4().hex[:8]}"
    subject = "service:close"
    with local_broker() as address:
        settings = Settings(kafka_bootstrap_servers=address, capture_rate=1.0,
                            capture_topic=f"capture-{uuid.uuid4().hex[:8]}")
        log = CaptureLog(settings, client_id, registry=CollectorRegistry())
        log.offer_columns(subject, ["a"], [[0]])
        assert log.flush(60)
    log.offer_columns(subject, ["a"], [list(range(1, 11))])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "featurestore.kafka"):
        log.close(timeout=1)
    assert time.monotonic() - started < 10
    # The sender thread kept retrying the rows for up to its delivery timeout.
    assert not _sender_alive(client_id)
    assert "capture log: the sampled rows not acknowledged are dropped" in caplog.text
    assert log.sent == {subject: 1} and log.dropped == {(subject, "closed"): 10}
    assert log.held_bytes == 0


def test_an_interrupted_event_producer_closes_and_names_what_it_did_not_deliver(caplog) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    with local_broker() as address:
        create_topic(address, topic, 1)
        producer = event_producer(Settings(kafka_bootstrap_servers=address))
        producer.send(topic, b"delivered").get(timeout=30)
    producer.send(topic, b"never acknowledged")
    with caplog.at_level(logging.WARNING, "featurestore.kafka"):
        close_events_producer(producer, f"events.parquet to {topic}")
    assert f"events of events.parquet to {topic} that Kafka did not acknowledge" in caplog.text
    assert not _sender_alive(EVENT_PRODUCER_ID)
