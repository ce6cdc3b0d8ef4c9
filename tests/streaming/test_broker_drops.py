"""The broker drops every connection while the worker's sends are in flight, and the
connections the producer opens next stop answering: the worker recovers by itself within
seconds, every event has its effect exactly once, and every poison message is dead-lettered at
least once. With kafka-python's timeouts the run did not end within the minute (30 s per quiet
request), and a batch failed after 5 retries or 15 s while later ones landed lost rows at the
next stage, or (idempotent) wedged the producer for good.

A proxy between every client and the broker (`DroppingProxy`) drops the connections right after
the broker appended one of the worker's batches and before the worker saw the acknowledgement,
then lets the producer's next connections go quiet after their first Produce request (appended
by the broker, never acknowledged): the worker must produce those batches again, and the next
stage must drop what it already applied.
"""

from __future__ import annotations

import time
from datetime import date

import pytest

from fraud_example.generator import GeneratorConfig
from tests.conftest import REDIS_URL
from tests.streaming.harness import StreamRun, assert_same_results, generated_messages

pytestmark = [pytest.mark.heavy, pytest.mark.kafka, pytest.mark.redis]

# Far below the producer's 120 s delivery timeout, which a stalled flush used to wait out, and
# below the three 30 s request timeouts of kafka-python's defaults.
_RECOVERY_SECONDS = 60
_SILENT_CONNECTIONS = 3


@pytest.fixture(scope="module")
def good() -> list[tuple[bytes, bytes]]:
    return generated_messages(GeneratorConfig(start=date(2026, 3, 1), days=1, cards=300,
                                              merchants=12, seed=5))


def _with_poison(good: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`good` with a message that is no JSON after every 500th event (under its key, so it
    lands on the same partition)."""
    mixed = []
    for i, (key, value) in enumerate(good):
        mixed.append((key, value))
        if i % 500 == 250:
            mixed.append((key, b"{not json"))
    return mixed


@pytest.mark.timeout(300)
def test_the_broker_dropping_every_connection_mid_flush_costs_seconds_and_nothing_else(
    tmp_path, proxy, good
) -> None:
    baseline = StreamRun.create(tmp_path / "baseline", proxy.address, REDIS_URL)
    baseline.send(good)
    baseline.run_to_end()

    run = StreamRun.create(tmp_path / "dropped", proxy.address, REDIS_URL)
    messages = _with_poison(good)
    poison = len(messages) - len(good)
    run.send(messages)
    worker = run.worker()
    # The first batch the worker forwards or dead-letters is appended, its acknowledgement lost.
    proxy.drop_after_produce(f"{run.env['FEATURESTORE_STREAM_GROUP']}-worker",
                             silent=_SILENT_CONNECTIONS)
    started = time.monotonic()
    run.run_to_end(worker, timeout=_RECOVERY_SECONDS)
    assert proxy.dropped.is_set(), "the proxy never saw a produce request of the worker"
    assert proxy.silenced == _SILENT_CONNECTIONS
    assert time.monotonic() - started < _RECOVERY_SECONDS

    assert_same_results(run, baseline)
    letters = run.dead_letters(poison)
    named = {(h["source-partition"], h["source-offset"]) for h in (dict(r.headers)
                                                                    for r in letters)}
    assert len(named) == poison  # each one at least once: a dropped send is produced again
    assert all(r.value == b"{not json" for r in letters)
