"""The repartition topic's Arrow IPC batches: the format round-trips any typed rows (the JSON
path as oracle), fits the message limit, and, through a real broker, a batch forwarded again
(whole or overlapping) has its effect once and a poison batch is dead-lettered."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, date, datetime
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from fraud_example.generator import GeneratorConfig
from streaming import repartition
from streaming import validation as v
from streaming.coldstart import partition_of
from streaming.producer import event_messages
from streaming.task import SOURCE_OFFSET, SOURCE_PARTITION
from streaming.topology import repartition_topic
from tests.conftest import REDIS_URL
from tests.streaming.harness import (
    StreamRun,
    assert_same_results,
    create_topic,
    generated_messages,
)
from tests.streaming.test_validation import SCHEMA

START = date(2026, 3, 1)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)  # no lone surrogates
_INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1),
                   st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**53 + 1]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308]))
_STAMPS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31, 23, 59, 59),
                       timezones=st.just(UTC))
_ROWS = st.lists(st.fixed_dictionaries({
    "transaction_id": _TEXT, "card_id": _INT64, "merchant_id": _INT64, "amount": _FLOATS,
    "currency": _TEXT, "merchant_category": st.none() | _TEXT, "country": st.none() | _TEXT,
    "channel": _TEXT, "event_timestamp": _STAMPS,
}), max_size=30)


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows with NaN spelled out (NaN != NaN would fail an equal comparison)."""
    return [{k: "NaN" if isinstance(x, float) and math.isnan(x) else x for k, x in row.items()}
            for row in rows]


def _decoded_in_offset_order(messages: list[repartition.BatchMessage]) -> repartition.Batch:
    batches = [repartition.decode(m.value, m.headers, SCHEMA, "tx") for m in messages]
    offsets = np.concatenate([b.offsets for b in batches])
    order = np.argsort(offsets)
    events = pa.concat_tables([b.events for b in batches]).take(pa.array(order))
    timestamps = np.concatenate([b.timestamps_ms for b in batches])[order]
    return repartition.Batch("3", int(offsets.min()), int(offsets.max()), events, offsets[order],
                             timestamps)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(rows=_ROWS, first=st.integers(0, 2**62), partitions=st.integers(1, 7),
       limit=st.sampled_from([6_000, 1_000_000]))
def test_batches_round_trip_any_typed_rows_as_the_json_path_reads_them(
    rows, first, partitions, limit
) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    offsets = first + np.arange(len(rows), dtype=np.int64) * 3  # gaps: rejected records between
    timestamps = np.arange(len(rows), dtype=np.int64) + 1_700_000_000_000
    messages = repartition.encode(table, offsets, timestamps, key="merchant_id",
                                  source_topic="tx", source_partition=3, partitions=partitions,
                                  limit=limit)
    if not rows:
        assert messages == []
        return
    for message in messages:
        assert len(message.value) + sum(len(n) + len(x) for n, x in message.headers) <= limit
        batch = repartition.decode(message.value, message.headers, SCHEMA, "tx")
        assert batch.source == "3" and (batch.first, batch.last) == (batch.offsets[0],
                                                                     batch.offsets[-1])
        assert {partition_of(k, partitions) for k in batch.events.column("merchant_id").to_pylist()} \
            == {message.partition}
    decoded = _decoded_in_offset_order(messages)
    assert _comparable(decoded.events.to_pylist()) == _comparable(table.to_pylist())
    assert decoded.offsets.tolist() == offsets.tolist()
    assert decoded.timestamps_ms.tolist() == timestamps.tolist()
    # The oracle: what the JSON path makes of the same rows, where it accepts them (it rejects
    # non-finite amounts, which the source stage therefore never forwards).
    validator = v.EventValidator(SCHEMA, max_bytes=16_384)
    parsed = validator.parse_batch([value for _, value in event_messages(table, "card_id")])
    assert {r.reason for _, r in parsed.rejected} <= {v.NOT_FINITE}
    assert _comparable(decoded.events.take(pa.array(parsed.accepted)).to_pylist()) == \
        _comparable(parsed.events.to_pylist())


def test_a_batch_over_the_limit_is_split_into_contiguous_ranges() -> None:
    rows = [{"transaction_id": f"t{i}", "card_id": i, "merchant_id": 5, "amount": 1.0,
             "currency": "EUR", "merchant_category": None, "country": "DE", "channel": "pos",
             "event_timestamp": datetime(2026, 3, 1, tzinfo=UTC)} for i in range(2_000)]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    messages = repartition.encode(table, np.arange(2_000), np.zeros(2_000, np.int64),
                                  key="merchant_id", source_topic="tx", source_partition=0,
                                  partitions=1, limit=20_000)
    ranges = [(int(dict(m.headers)[repartition.SOURCE_FIRST_OFFSET]),
               int(dict(m.headers)[repartition.SOURCE_LAST_OFFSET])) for m in messages]
    assert len(messages) > 1
    assert ranges[0][0] == 0 and ranges[-1][1] == 1_999
    assert all(last + 1 == first for (_, last), (first, _) in pairwise(ranges))


def test_fresh_rows_drop_what_was_applied_from_the_source_partition() -> None:
    def batch(offsets: list[int]) -> repartition.Batch:
        return repartition.Batch("0", offsets[0], offsets[-1], SCHEMA.empty_table(),
                                 np.array(offsets), np.zeros(len(offsets), np.int64))

    applied: dict[str, int] = {}
    assert repartition.fresh_rows(batch([2, 4, 6]), applied).tolist() == [True] * 3
    assert repartition.fresh_rows(batch([2, 4, 6]), applied).tolist() == [False] * 3
    assert repartition.fresh_rows(batch([4, 6, 8, 9]), applied).tolist() == [False, False, True,
                                                                             True]
    assert applied == {"0": 9}


@pytest.mark.parametrize(("value", "headers", "detail"), [
    (b"garbage", [(repartition.FORMAT_HEADER, repartition.FORMAT)], "source topic"),
    (b"\xff" * 40, None, "not an Arrow IPC stream"),
    (None, None, "no value"),
    (b"", [(repartition.FORMAT_HEADER, b"arrow-ipc/2")], "unknown repartition format"),
])
def test_a_malformed_batch_is_an_error_naming_what_is_wrong(value, headers, detail) -> None:
    named = headers or [(repartition.FORMAT_HEADER, repartition.FORMAT),
                        (repartition.SOURCE_TOPIC, b"tx"), (repartition.SOURCE_PARTITION, b"0"),
                        (repartition.SOURCE_FIRST_OFFSET, b"0"),
                        (repartition.SOURCE_LAST_OFFSET, b"0")]
    with pytest.raises(repartition.MalformedBatch, match=detail):
        repartition.decode(value, named, SCHEMA, "tx")


# --- through a real broker ----------------------------------------------------------------


@pytest.fixture(scope="module")
def good() -> list[tuple[bytes, bytes]]:
    return generated_messages(GeneratorConfig(start=START, days=1, cards=300, merchants=12,
                                              seed=5))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, kafka_bootstrap, good) -> StreamRun:
    run = StreamRun.create(tmp_path_factory.mktemp("baseline"), kafka_bootstrap, REDIS_URL)
    run.send(good)
    run.run_to_end()
    return run


def _repartition_topic(run: StreamRun, worker) -> str:
    topic = repartition_topic(run.env["FEATURESTORE_STREAM_GROUP"], run.topic, "merchant_id")
    assert topic in worker.topics
    create_topic(run.bootstrap, topic, 3)
    return topic


def _send_to(run: StreamRun, topic: str, messages) -> None:
    """(partition, value, headers[, key]) each, in order (keyed, so a tombstone can be sent)."""
    producer = KafkaProducer(bootstrap_servers=run.bootstrap, acks="all",
                             max_in_flight_requests_per_connection=1)
    for partition, value, headers, *key in messages:
        producer.send(topic, key=key[0] if key else b"k", value=value, partition=partition,
                      headers=headers)
    producer.flush()
    producer.close()


def _source_records(run: StreamRun, partition: int, count: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(run.topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records: list = []
    while len(records) < count:
        records += consumer.poll(timeout_ms=1_000).get(tp, [])
    consumer.close()
    return records[:count]


def _source_batches(run: StreamRun, worker, partition: int, count: int):
    """The typed events of the source partition's first `count` records, as the source stage
    forwards them: (events, offsets, timestamps)."""
    records = _source_records(run, partition, count)
    parsed = worker.validators[run.topic].parse_batch([r.value for r in records])
    assert not parsed.rejected
    return (parsed.events, np.array([r.offset for r in records]),
            np.array([r.timestamp for r in records]))


def _messages(run: StreamRun, events, offsets, timestamps, rows: slice):
    return [(m.partition, m.value, m.headers) for m in repartition.encode(
        events.slice(rows.start, rows.stop - rows.start), offsets[rows], timestamps[rows],
        key="merchant_id", source_topic=run.topic, source_partition=0, partitions=3,
        limit=1_000_000,
    )]


def _prepared(tmp_path, bootstrap: str, good, count: int):
    """A run whose source topic holds `good` and whose worker has not started: the run, its
    worker, its repartition topic, and the first `count` events of source partition 0."""
    run = StreamRun.create(tmp_path, bootstrap, REDIS_URL)
    run.send(good)
    worker = run.worker()
    return run, worker, _repartition_topic(run, worker), *_source_batches(run, worker, 0, count)


@pytest.mark.kafka
@pytest.mark.redis
def test_a_batch_forwarded_again_whole_or_overlapping_has_its_effect_once(
    tmp_path, kafka_bootstrap, good, baseline
) -> None:
    run, worker, topic, events, offsets, timestamps = _prepared(tmp_path, kafka_bootstrap, good, 60)
    # Before the worker runs, the repartition topic already holds what a crashed source stage
    # forwarded: offsets 0..29 twice, then 15..59 (overlapping); the worker forwards its own
    # batches of the whole partition after them.
    first = _messages(run, events, offsets, timestamps, slice(0, 30))
    overlapping = _messages(run, events, offsets, timestamps, slice(15, 60))
    _send_to(run, topic, first + first + overlapping)
    run.run_to_end(worker)
    assert_same_results(run, baseline)


@pytest.mark.kafka
@pytest.mark.redis
def test_poison_on_the_repartition_topic_is_dead_lettered_and_the_worker_goes_on(
    tmp_path, kafka_bootstrap, good, baseline
) -> None:
    run, worker, topic, events, offsets, timestamps = _prepared(tmp_path, kafka_bootstrap, good, 10)
    [(partition, value, headers), *_] = _messages(run, events, offsets, timestamps, slice(0, 10))
    other_schema = pa.table({"x": [1]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other_schema.schema) as writer:
        writer.write_table(other_schema)
    version_2 = [(n, b"arrow-ipc/2" if n == repartition.FORMAT_HEADER else x) for n, x in headers]
    poison = [
        (partition, b"\x00garbage", headers),  # claims the format, is no IPC stream
        (partition, value[: len(value) // 2], headers),  # cut short
        (partition, sink.getvalue().to_pybytes(), headers),  # another schema
        (partition, value, version_2),  # a format this worker does not know
        (partition, None, headers),  # a tombstone
        (partition, b"{not json", []),  # no format header: a legacy message, not JSON
    ]
    _send_to(run, topic, poison)
    run.run_to_end(worker)
    letters = run.dead_letters(len(poison))
    # The dead-letter topic is at least once (docs/streaming.md): a broker hiccup that fails a
    # send rewinds the worker, which sends its letters again; each poison message is named by
    # its source partition and offset, once per reason.
    reasons = {(h["source-partition"], h["source-offset"]): h["reason"].decode()
               for h in (dict(r.headers) for r in letters)}
    assert Counter(reasons.values()) == {v.MALFORMED_BATCH: 5, v.MALFORMED_JSON: 1}
    assert all(dict(r.headers)["source-topic"].decode() == topic for r in letters)
    assert_same_results(run, baseline)


@pytest.mark.kafka
@pytest.mark.redis
def test_legacy_per_event_messages_on_the_repartition_topic_are_still_applied_once(
    tmp_path, kafka_bootstrap, good, baseline
) -> None:
    """An upgrade: the topic still holds what a worker before the batch format forwarded (one
    JSON message per event, with its source partition and offset), some of it twice; the new
    worker then forwards batches of the same source offsets."""
    run, worker, topic, *_ = _prepared(tmp_path, kafka_bootstrap, good, 1)
    legacy = []
    for record in _source_records(run, 0, 40):
        merchant = json.loads(record.value)["merchant_id"]
        headers = [(SOURCE_PARTITION, b"0"), (SOURCE_OFFSET, b"%d" % record.offset)]
        legacy.append((partition_of(merchant, 3), record.value, headers, str(merchant).encode()))
    _send_to(run, topic, legacy[:25] + legacy[10:])
    run.run_to_end(worker)
    assert_same_results(run, baseline)
