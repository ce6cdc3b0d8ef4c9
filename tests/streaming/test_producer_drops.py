"""The producers other than the stream worker's recover by themselves after the broker drops
every connection and the next ones stop answering (`DroppingProxy`, as in test_broker_drops):
the event producer of `stream produce` delivers every event, in order and once, and the
capture log delivers every sampled row, both within seconds.

With kafka-python's defaults (30 s per unanswered request, reconnects backed off up to 30 s)
the event producer took minutes; the capture log's 10 s request timeout against its 30 s
delivery timeout gave up the sampled rows of the dropped batch.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from featurestore.settings import Settings
from monitors.capture import CaptureLog
from streaming import replay
from streaming.cli import EVENT_PRODUCER_ID, close_events_producer, event_producer
from tests.streaming.harness import create_topic

pytestmark = [pytest.mark.heavy, pytest.mark.kafka]

# Three quiet connections cost three 5 s request timeouts; kafka-python's defaults, 90 s.
_SILENT_CONNECTIONS = 3
_RECOVERY_SECONDS = 60


def _records(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of `topic`, partition by partition, each in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    records: list = []
    deadline = time.monotonic() + 30
    while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def _within(seconds: float, work) -> None:
    """Run `work` on a thread; fail when it has not returned within `seconds`."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"not done within {seconds} s"
    assert errors == []


@pytest.mark.timeout(180)
def test_the_event_producer_delivers_every_event_once_after_the_broker_drops_it(proxy) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    create_topic(proxy.address, topic, 2)
    messages = [(f"card-{i % 40}".encode(), json.dumps({"i": i}).encode()) for i in range(5_000)]
    producer = event_producer(Settings(kafka_bootstrap_servers=proxy.address))
    # Its first Produce request is appended by the broker and never acknowledged, and the next
    # connections it produces on go quiet: the batch must be produced again, by the
    # idempotent producer, so the broker keeps one copy.
    proxy.drop_after_produce(EVENT_PRODUCER_ID, silent=_SILENT_CONNECTIONS)
    started = time.monotonic()

    def send() -> None:
        try:
            replay.send(producer, replay.Replay(topic, messages))
        finally:
            close_events_producer(producer, f"the test's events to {topic}")

    _within(_RECOVERY_SECONDS, send)
    assert proxy.dropped.is_set() and proxy.silenced == _SILENT_CONNECTIONS
    assert time.monotonic() - started < _RECOVERY_SECONDS

    records = _records(proxy.address, topic, 2)
    assert sorted(r.value for r in records) == sorted(v for _, v in messages)  # each once
    for key in {k for k, _ in messages}:  # and each key's events in the order sent
        sent = [v for k, v in messages if k == key]
        assert [r.value for r in records if r.key == key] == sent


@pytest.mark.timeout(180)
def test_the_capture_log_delivers_every_sample_after_the_broker_drops_it(proxy) -> None:
    settings = Settings(kafka_bootstrap_servers=proxy.address, capture_rate=1.0,
                        capture_topic=f"capture-{uuid.uuid4().hex[:8]}")
    client_id = f"capture-{uuid.uuid4().hex[:8]}"
    log = CaptureLog(settings, client_id, registry=CollectorRegistry())
    subject = "service:drops"
    log.offer_columns(subject, ["a"], [[0]])
    assert log.flush(60)  # connected, the topic made: what follows goes straight to Kafka
    proxy.drop_after_produce(client_id, silent=_SILENT_CONNECTIONS)
    for i in range(1, 200):
        log.offer_columns(subject, ["a"], [[i]])
        time.sleep(0.01)  # several drains, so several sends meet the quiet connections

    def flushed() -> None:
        assert log.flush(_RECOVERY_SECONDS)

    _within(_RECOVERY_SECONDS + 5, flushed)
    assert proxy.dropped.is_set() and proxy.silenced == _SILENT_CONNECTIONS
    log.offer_columns(subject, ["a"], [[200]])  # and it goes on sending
    assert log.flush(30)
    log.close()
    assert log.dropped == {}
    assert log.sent == {subject: 201}
