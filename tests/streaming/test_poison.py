"""A poison corpus mixed into a real stream through a real broker: the worker survives, each bad
message is dead-lettered once with its reason, and the good events end exactly as without them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from kafka import KafkaProducer

from fraud_example.generator import GeneratorConfig
from streaming import validation as v
from tests.conftest import REDIS_URL
from tests.streaming.harness import StreamRun, assert_same_results, generated_messages
from tests.streaming.test_validation import SCHEMA

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

START = date(2026, 3, 1)
Message = tuple[bytes | None, bytes | None]


def _poison(good: list[Message], seed: int = 11) -> list[tuple[int, Message, str]]:
    """(position in the good sequence, message, expected reason) for every kind of bad message."""
    rng = np.random.default_rng(seed)
    key, value = good[len(good) // 2]
    template = json.loads(value)

    def variant(**changes) -> bytes:
        event = {**template, **changes}
        return json.dumps({k: x for k, x in event.items() if x is not ...}).encode()

    future = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    other = next(k for k, _ in good if k != key)
    first_key, first_value = good[0]
    # Positions in the good sequence: most bad messages mid-stream, with good events of the
    # same partitions before (unchecked yet) and after them.
    mid = len(good) // 2
    cases = [
        # Defect 5: a year-1 event as its partition's first event.
        (0, (first_key, first_value.replace(b'"2026-03-01T', b'"0001-01-01T')), v.BAD_TIMESTAMP),
        (mid + 1, (key, None), v.TOMBSTONE),
        (mid + 2, (key, variant(currency="\ud800")), v.MALFORMED_JSON),
        (mid + 3, (key, json.dumps({**template, "currency": "\ud800"}, ensure_ascii=False)
             .encode("utf-8", "surrogatepass")), v.MALFORMED_JSON),
        (mid + 4, (key, variant(event_timestamp="0001-01-01T00:30:00+01:00")), v.BAD_TIMESTAMP),
        (mid + 5, (key, variant(event_timestamp="9999-12-31T23:30:00-01:00")), v.BAD_TIMESTAMP),
        (mid + 6, (key, variant(country="X" * 5_000_000)), v.OVERSIZED),  # above the broker's limit
        (mid + 7, (key, variant(country="X" * 1_048_000)), v.OVERSIZED),  # just below it
        (mid + 8, (other, value), v.KEY_MISMATCH),
        (mid + 9, (None, value), v.KEY_MISMATCH),
        (mid + 10, (key, b""), v.MALFORMED_JSON),
        (mid + 10, (key, b"null"), v.MALFORMED_JSON),  # crashed Arrow's reader, and the worker
        (mid + 10, (key, variant(card_id=int(key)) + b" " + variant(amount=1.5)), v.MALFORMED_JSON),
        (mid + 11, (key, variant(event_timestamp=future)), v.FUTURE_TIMESTAMP),  # defect 3
        (mid + 12, (key, variant(amount=...)), v.MISSING_FIELD),
        (mid + 13, (key, variant(coupon="FREE")), v.UNEXPECTED_FIELD),
        (mid + 14, (key, variant(card_id="seven")), v.WRONG_TYPE),
        (mid + 15, (key, variant(amount=float("nan"))), v.NOT_FINITE),
        (mid + 16, (key, variant(amount=-5.0)), v.OUT_OF_RANGE),
        (mid + 17, (key, variant(event_timestamp="yesterday")), v.BAD_TIMESTAMP),
        # 2 KB nested 1,100 deep: json.loads raised RecursionError, which (once a micro-batch's
        # partitions were validated in one call) escaped the task's containment.
        (mid + 18, (key, variant(country=...)[:-1] + b', "country": ' + b"[" * 1_100
                    + b"]" * 1_100 + b"}"), v.MALFORMED_JSON),
        # Two hours behind what its partition has seen by then: late.
        (len(good) - 5, (key, variant(event_timestamp="2026-03-01T00:00:01+00:00")), v.LATE),
    ]
    validator = v.EventValidator(SCHEMA, 16_384)
    for n in range(12):
        fuzz = rng.bytes(int(rng.integers(0, 200)))
        if n % 3 == 0:  # a valid event with some bytes overwritten
            fuzz = bytearray(variant())
            fuzz[int(rng.integers(0, len(fuzz)))] = int(rng.integers(0, 256))
            fuzz = bytes(fuzz)
        verdict = validator.parse(fuzz)
        if isinstance(verdict, v.Rejected):
            cases.append((int(rng.integers(0, len(good))), (key, fuzz), verdict.reason))
    return cases


def _send(run: StreamRun, messages: list[Message]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=run.bootstrap, acks="all", linger_ms=5,
        max_in_flight_requests_per_connection=1, max_request_size=8 * 1024 * 1024,
    )
    for key, value in messages:
        producer.send(run.topic, key=key, value=value)
    producer.flush()
    producer.close()


def _identity(value: bytes | None) -> str:
    return "tombstone" if value is None else hashlib.sha256(value).hexdigest()


@pytest.fixture(scope="module")
def good() -> list[Message]:
    return generated_messages(GeneratorConfig(start=START, days=1, cards=800, merchants=20, seed=9))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, kafka_bootstrap, good) -> StreamRun:
    run = StreamRun.create(tmp_path_factory.mktemp("baseline"), kafka_bootstrap, REDIS_URL)
    _send(run, good)
    run.run_to_end()
    return run


def test_poison_corpus_is_dead_lettered_once_and_good_events_apply(
    tmp_path, kafka_bootstrap, good, baseline
) -> None:
    poison = _poison(good)
    mixed: list[Message] = []
    at = {}
    for position, message, _ in poison:
        at.setdefault(position, []).append(message)
    for i, message in enumerate(good):
        mixed += at.get(i, [])
        mixed.append(message)

    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    _send(run, mixed)
    worker = run.run_to_end()  # survives: returns once every record is checkpointed

    expected = Counter((reason, _identity(m[1])) for _, m, reason in poison)
    letters = run.dead_letters(len(poison))
    got = Counter()
    for record in letters:
        headers = dict(record.headers)
        identity = headers.get("value-sha256", b"").decode() or _identity(record.value)
        got[headers["reason"].decode(), identity] += 1
        assert headers["detail"] and headers["source-topic"].decode() == run.topic
        if "value-sha256" in headers:
            assert len(record.value) < int(headers["original-value-bytes"]) < 6_000_000
    assert got == expected
    counts = worker.metrics.dead_letter_counts()
    assert {r: n for r, n in counts.items() if n} == dict(Counter(r for _, _, r in poison))
    assert_same_results(run, baseline)


def test_a_failed_worker_logs_the_error_and_checkpoints_nothing_unfinished(
    tmp_path, kafka_bootstrap, good, baseline, monkeypatch, caplog
) -> None:
    """Defect: after a batch raised, shutdown checkpointed it as applied (its online rows and
    forwards never sent), and the log showed only "User rebalance callback throws an error"."""
    from streaming.task import PartitionTask

    processed = PartitionTask.process
    calls = []

    def processes_then_fails(self, *args, **kwargs):
        step = processed(self, *args, **kwargs)
        calls.append(self.partition)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return step

    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    _send(run, good)
    monkeypatch.setattr(PartitionTask, "process", processes_then_fails)
    with caplog.at_level(logging.ERROR, "featurestore.stream"), pytest.raises(RuntimeError):
        run.run_to_end()
    assert "RuntimeError: disk on fire" in caplog.text and "Traceback" in caplog.text
    assert "rebalance callback" not in caplog.text
    monkeypatch.undo()
    run.run_to_end()
    assert_same_results(run, baseline)


@pytest.mark.heavy  # ~20 s: a whole run of its own
def test_a_validation_that_raises_is_contained_to_the_message(
    tmp_path, kafka_bootstrap, good, baseline, monkeypatch, caplog
) -> None:
    """The worker validates a micro-batch's source partitions in one call; whatever that call
    raises (a validator bug a message triggers) must end as one `internal_error` dead letter,
    not a crashed worker: each partition then validates its own records, contained."""
    trigger = b'{"trigger": "validator bug"}'
    parse_batch = v.EventValidator.parse_batch

    def raises_on_the_trigger(self, messages):
        if trigger in messages:
            raise RuntimeError("validator bug")
        return parse_batch(self, messages)

    monkeypatch.setattr(v.EventValidator, "parse_batch", raises_on_the_trigger)
    key = good[len(good) // 2][0]
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    _send(run, [*good[: len(good) // 2], (key, trigger), *good[len(good) // 2 :]])
    with caplog.at_level(logging.WARNING, "featurestore.stream"):
        run.run_to_end()
    assert "validating" in caplog.text and "RuntimeError: validator bug" in caplog.text
    [letter] = run.dead_letters(1)
    assert letter.value == trigger
    assert dict(letter.headers)["reason"] == v.INTERNAL_ERROR.encode()
    assert_same_results(run, baseline)
