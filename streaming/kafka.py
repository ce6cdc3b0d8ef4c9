"""The Kafka adapter: the one module that builds kafka-python clients, creates and deletes topics
and retries while the broker is away.

Every client gets its connection settings from `connection(settings)` (today the bootstrap
servers; security settings, once `Settings` has any, belong there and nowhere else). The callers
choose the rest: `producer` defaults to ordered, acknowledged sends, to which each producer adds
its delivery rule (`RESILIENT_SENDS` for the stream worker's, `EVENT_SENDS` for the event
producer's), `consumer` defaults to manual commits, and `admin` is a context manager that closes
its client. `close_producer` closes a producer without raising while the broker is away.

`retrying` is the one backoff loop: bounded exponential backoff with jitter (`Backoff`),
interruptible by a stop event, one log line per failure naming the error's class (a broker's
message may quote configuration, so it is left out).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from featurestore.settings import Settings

log = logging.getLogger("featurestore.kafka")
T = TypeVar("T")

# An unreachable broker is reported within 10 s, not after kafka-python's 30 s default.
_BOOTSTRAP_TIMEOUT_MS = 10_000

# A producer that notices within seconds a broker that dropped its connections or stopped
# answering on them, and never gives a batch up for it. kafka-python's defaults wait 30 s for a
# request and back off reconnects up to 30 s; here a request unanswered for 5 s closes its
# connection and the batch is retried on a new one, and a broker back is reconnected to within
# 1 s. Retried without end (kafka-python's default) and for up to an hour (its default 120 s
# delivery timeout, or the 5 retries the worker once had, failed a batch while later batches to
# the same partition went on to land: a gap the next stage cannot see, so it dropped the batch
# produced again as already applied). Not idempotent: kafka-python 3.0's idempotent producer
# (its default) resets its producer id when a batch it had sent expires and never asks for a
# new one, so every later send waits for ever. For senders whose batches may be produced again
# (the stream worker's: the next stage drops what it applied): a retried batch whose first
# attempt the broker did append is a duplicate.
RESILIENT_SENDS: dict[str, int | bool] = {
    "request_timeout_ms": 5_000,
    "reconnect_backoff_max_ms": 1_000,
    "delivery_timeout_ms": 3_600_000,
    "enable_idempotence": False,
}


# The event producer's (`stream produce`, the example's `produce`): RESILIENT_SENDS' request
# timeout, reconnect backoff and delivery timeout, so a broker that drops its connections or
# stops answering costs seconds, and one away for a while is waited for. Idempotent, unlike
# RESILIENT_SENDS: its batches go to source topics, where a batch appended twice is every one
# of its events counted twice. kafka-python's idempotent producer wedges only once a batch it
# had sent expires, which takes the hour of the delivery timeout; the producer's owner then
# fails the run anyway (`close_producer` says what was not delivered).
EVENT_SENDS: dict[str, int | bool] = {**RESILIENT_SENDS, "enable_idempotence": True}


class Stopped(Exception):
    """Asked to stop while waiting for Kafka."""


def connection(settings: Settings) -> dict[str, Any]:
    """What every client needs to reach the cluster."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers}


def producer(settings: Settings, *, client_id: str | None = None, **overrides: Any) -> KafkaProducer:
    """A producer whose sends to a partition stay in order and are acknowledged by every replica
    (a retried batch cannot overtake the next); `overrides` are kafka-python settings."""
    config: dict[str, Any] = {
        **connection(settings),
        "acks": "all",
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 1,
        "bootstrap_timeout_ms": _BOOTSTRAP_TIMEOUT_MS,
    }
    if client_id is not None:
        config["client_id"] = client_id
    return KafkaProducer(**{**config, **overrides})


def consumer(settings: Settings, *, client_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer that never commits by itself (offsets are committed, if at all, by the caller
    after its effects landed); `overrides` are kafka-python settings (group_id, fetch sizes...)."""
    config: dict[str, Any] = {
        **connection(settings),
        "client_id": client_id,
        "enable_auto_commit": False,
        "bootstrap_timeout_ms": _BOOTSTRAP_TIMEOUT_MS,
    }
    return KafkaConsumer(**{**config, **overrides})


def close_producer(producer: KafkaProducer, timeout: float, *, unsent: str) -> bool:
    """Close `producer` after waiting up to `timeout` s for its sends to be acknowledged;
    returns whether they all were. Never raises for sends still unacknowledged (the broker
    away): logs a warning that says `unsent` (what those sends were and what becomes of them),
    so a shutdown goes on and the error that caused it is the one reported."""
    try:
        producer.flush(timeout)
    except KafkaTimeoutError:
        log.warning("Kafka did not acknowledge every send within %.0f s: %s", timeout, unsent)
        # kafka-python's close flushes first, raises when that times out, and leaves its
        # sender thread running (retrying for up to the delivery timeout): stop the thread
        # without those sends first. No public call does; its `_sender` is the one private use.
        producer._sender.force_close()
        delivered = False
    else:
        delivered = True
    # The aborted sends fail at once, so this flush ends; bounded all the same.
    with suppress(KafkaTimeoutError):
        producer.close(timeout=timeout)
    return delivered


@contextmanager
def admin(settings: Settings, **overrides: Any) -> Iterator[KafkaAdminClient]:
    """An admin client, closed on leaving the block."""
    client = KafkaAdminClient(
        **{**connection(settings), "bootstrap_timeout_ms": _BOOTSTRAP_TIMEOUT_MS, **overrides}
    )
    try:
        yield client
    finally:
        client.close()


def probe(bootstrap_servers: str) -> None:
    """Connect to `bootstrap_servers` once; raises KafkaError when no broker answers."""
    KafkaAdminClient(bootstrap_servers=bootstrap_servers).close()


def ensure_topics(
    client: KafkaAdminClient, wanted: Mapping[str, int], *, existing: set[str] | None = None
) -> dict[str, int]:
    """Create the topics of `wanted` (topic -> partitions, replication 1) that do not exist yet;
    returns those that were missing (each exists when this returns). `existing`: the cluster's
    topics, when the caller has just listed them. Idempotent, and another process creating one
    of them at the same moment is no error: the broker creates the others of the request all
    the same, and each still missing after that is asked for alone."""
    if existing is None:
        existing = set(client.list_topics())
    missing = {topic: n for topic, n in wanted.items() if topic not in existing}
    if not missing:
        return {}
    try:
        client.create_topics([NewTopic(topic, n, 1) for topic, n in missing.items()])
    except TopicAlreadyExistsError:
        now = set(client.list_topics())
        for topic, n in missing.items():
            if topic not in now:
                try:
                    client.create_topics([NewTopic(topic, n, 1)])
                except TopicAlreadyExistsError:
                    pass  # another process created it first
    return missing


def delete_topics(client: KafkaAdminClient, topics: Sequence[str]) -> list[str]:
    """Delete those of `topics` that exist; returns them. One deleted meanwhile is no error."""
    existing = set(client.list_topics())
    gone = [topic for topic in topics if topic in existing]
    if gone:
        try:
            client.delete_topics(gone)
        except UnknownTopicOrPartitionError:
            pass  # deleted meanwhile
    return gone


def message_bytes_limit(client: KafkaAdminClient, topic: str) -> int | None:
    """The topic's `max.message.bytes`, or None when the broker does not report it."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
    described = client.describe_configs([resource], config_filter="all")
    entry = described.get("topic", {}).get(topic, {}).get("max.message.bytes")
    value = entry.get("value") if isinstance(entry, dict) else None
    return int(value) if value else None


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: `first`, doubling up to `limit`; each one shortened by up to
    `jitter` of itself at random, so processes that lost the broker together do not retry in
    step (and no delay exceeds `limit`)."""

    first: float = 0.5
    limit: float = 10.0
    jitter: float = 0.2

    def nominal(self, attempt: int) -> float:
        """The delay after failed attempt number `attempt` (0: the first), before jitter."""
        return min(self.first * 2 ** min(attempt, 64), self.limit)

    def delay(self, attempt: int, draw: float) -> float:
        """`nominal(attempt)` shortened by `draw` (in [0, 1)) times the jitter."""
        return self.nominal(attempt) * (1.0 - self.jitter * draw)


def retrying(
    what: str,
    attempt: Callable[[], T],
    *,
    servers: str,
    stop: threading.Event,
    backoff: Backoff = Backoff(),
    errors: tuple[type[BaseException], ...] = (KafkaError,),
    on_failure: Callable[[BaseException], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """`attempt()` until it returns, waiting `backoff` after each of `errors` (with one log line
    and `on_failure(error)`); raises Stopped when `stop` is set during a wait."""
    draw = (rng or random.Random()).random
    failures = 0
    while True:
        try:
            return attempt()
        except errors as exc:
            if on_failure is not None:
                on_failure(exc)
            delay = backoff.delay(failures, draw())
            log.warning("Kafka at %s unavailable for the %s (%s); retrying in %.1f s",
                        servers, what, type(exc).__name__, delay)
            if stop.wait(delay):
                raise Stopped from exc
            failures += 1
