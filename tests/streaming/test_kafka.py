"""The Kafka adapter: the backoff policy and the retry loop without a broker (and without
sleeping), topic creation against the real Kafka-protocol broker."""

from __future__ import annotations

import logging
import random
import threading
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.admin import NewTopic
from kafka.errors import KafkaConnectionError, KafkaError

from featurestore.settings import Settings
from streaming import kafka


def test_the_backoff_doubles_from_the_first_delay_up_to_the_bound() -> None:
    backoff = kafka.Backoff(first=0.5, limit=10.0, jitter=0.2)
    assert [backoff.nominal(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert backoff.nominal(10_000) == 10.0  # no overflow after a long outage


@given(st.integers(0, 200), st.floats(0, 1, exclude_max=True),
       st.floats(0.01, 5), st.floats(0, 1))
def test_jitter_only_shortens_a_delay_by_up_to_its_fraction(attempt, draw, first, jitter) -> None:
    backoff = kafka.Backoff(first=first, limit=first * 20, jitter=jitter)
    nominal = backoff.nominal(attempt)
    assert nominal * (1 - jitter) <= backoff.delay(attempt, draw) <= nominal <= backoff.limit
    assert backoff.delay(attempt, 0.0) == nominal


def test_retrying_backs_off_until_the_attempt_succeeds(caplog) -> None:
    failures: list[BaseException] = []
    outcomes = iter([KafkaError("password=hunter2"), KafkaConnectionError(), 42])

    def attempt() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    with caplog.at_level(logging.WARNING, "featurestore.kafka"):
        result = kafka.retrying(
            "producer", attempt, servers="broker:9092", stop=threading.Event(),
            backoff=kafka.Backoff(first=0.0, limit=0.0), on_failure=failures.append,
            rng=random.Random(1),
        )
    assert result == 42
    assert [type(f) for f in failures] == [KafkaError, KafkaConnectionError]
    assert "Kafka at broker:9092 unavailable for the producer (KafkaError)" in caplog.text
    assert "(KafkaConnectionError)" in caplog.text
    assert "hunter2" not in caplog.text  # the class, not the message


def test_retrying_stops_when_asked_and_lets_other_errors_through() -> None:
    stop = threading.Event()
    stop.set()  # the wait after the first failure returns at once

    def unavailable() -> None:
        raise KafkaConnectionError()

    with pytest.raises(kafka.Stopped):
        kafka.retrying("consumer", unavailable, servers="b:1", stop=stop)

    def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        kafka.retrying("consumer", broken, servers="b:1", stop=threading.Event())


@pytest.mark.kafka
def test_topics_are_created_once_even_when_another_process_wins_the_race_and_deleted(
    kafka_bootstrap,
) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap)
    mark = uuid.uuid4().hex[:8]
    wanted = {f"a-{mark}": 2, f"b-{mark}": 4, f"c-{mark}": 3}
    with kafka.admin(settings) as admin:
        admin.create_topics([NewTopic(f"b-{mark}", 1, 1)])  # the other process, first
        # A stale listing: the request includes a topic that exists by now.
        assert kafka.ensure_topics(admin, wanted, existing=set()) == wanted
        assert kafka.ensure_topics(admin, wanted) == {}  # idempotent
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
    assert described == {**wanted, f"b-{mark}": 1}  # the winner's topic stays as it made it
    with kafka.admin(settings) as admin:
        # (Whether it is gone from the listing at once is the broker's affair: real Kafka
        # deletes in the background.)
        assert kafka.delete_topics(admin, [f"a-{mark}", f"never-{mark}"]) == [f"a-{mark}"]
