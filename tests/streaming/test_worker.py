"""The stream worker against a real Kafka-protocol broker, Redis and Spark.

One baseline run applies a fixed sequence of events without interruption; the crash, rebalance
and Redis-outage runs apply the same sequence on their own topics and must end identical to it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from fraud_example.generator import GeneratorConfig
from tests.conftest import REDIS_URL
from tests.servers import free_port, redis_server, wait_for
from tests.streaming.harness import (
    StreamRun,
    assert_online_is_newest,
    assert_same_results,
    generated_messages,
    uninterrupted_run,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

START = date(2026, 3, 1)
LATENESS = timedelta(minutes=5)  # the transactions source's watermark_delay_threshold
VIEWS = ("card_transaction_features", "merchant_transaction_features")


def _with_late_events(
    messages: list[tuple[bytes, bytes]], within: int, beyond: int, seed: int = 3
) -> tuple[list[tuple[bytes, bytes]], set[str], set[str]]:
    """Move some events later in the sequence: `within` to just before the first event more
    than 2 minutes newer (still on time), `beyond` to just before the first more than 2 hours
    newer (too late). Returns the sequence and both sets of ids."""
    rng = np.random.default_rng(seed)
    times = [json.loads(v)["event_timestamp"] for _, v in messages]
    moved: dict[int, list[tuple[bytes, bytes]]] = {}
    on_time, too_late = set(), set()
    picks = rng.choice(np.arange(len(messages) // 4, len(messages) * 3 // 4), within + beyond,
                       replace=False)
    for n, i in enumerate(picks):
        shift = timedelta(minutes=2) if n < within else timedelta(hours=2)
        t = pd.Timestamp(times[i]) + shift
        target = next(j for j in range(i, len(messages)) if pd.Timestamp(times[j]) > t)
        moved.setdefault(target, []).append(messages[i])
        (on_time if n < within else too_late).add(json.loads(messages[i][1])["transaction_id"])
    picked = set(picks.tolist())
    sequence = []
    for j, message in enumerate(messages):
        sequence.extend(moved.get(j, []))
        if j not in picked:
            sequence.append(message)
    return sequence, on_time, too_late


@pytest.fixture(scope="module")
def events() -> list[tuple[bytes, bytes]]:
    config = GeneratorConfig(start=START, days=3, cards=400, merchants=25, seed=3)
    sequence, _, _ = _with_late_events(generated_messages(config), within=20, beyond=0)
    return sequence


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, kafka_bootstrap, events) -> StreamRun:
    return uninterrupted_run(tmp_path_factory.mktemp("baseline"), kafka_bootstrap, events)


def test_stream_rows_equal_the_spark_backfill(tmp_path, kafka_bootstrap, spark) -> None:
    """Parity: the same events through the worker and through Spark give the same rows,
    including same-instant, late-but-allowed events; too-late events are dead letters."""
    from featurestore.batch.backfill import backfill
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    config = GeneratorConfig(start=START, days=2, cards=300, merchants=20, seed=5,
                             split_payment_rate=0.05)
    messages, on_time, too_late = _with_late_events(
        generated_messages(config), within=30, beyond=8
    )
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    run.send(messages)
    worker = run.run_to_end()

    assert worker.metrics.dead_letter_counts()["late"] == len(too_late)
    letters = run.dead_letters(len(too_late))
    assert {json.loads(r.value)["transaction_id"] for r in letters} == too_late
    assert all(dict(r.headers)["reason"] == b"late" for r in letters)
    raw = run.raw()
    archived = set(raw["transaction_id"])
    assert len(raw) == len(messages) - len(too_late) and not archived & too_late
    assert on_time <= archived
    assert raw.duplicated(["card_id", "event_timestamp"]).any()  # same-instant events
    stream = {view: run.features(view) for view in VIEWS}

    with run.settings() as settings:
        store = feature_store(settings)
        views = select_views(store, list(VIEWS))
        backfill(lambda: spark, views, START, START + timedelta(days=config.days))
    for view in views:
        key = view.join_keys[0].name
        batch = run.features(view.name)
        ours = stream[view.name]
        assert len(ours) == len(batch) > 0
        for aggregation in view.aggregations:
            if aggregation.function in ("count", "count_distinct", "sum", "max"):
                np.testing.assert_array_equal(ours[aggregation.name], batch[aggregation.name])
            else:
                np.testing.assert_allclose(ours[aggregation.name], batch[aggregation.name],
                                           rtol=0, atol=1e-9)
        pd.testing.assert_series_equal(ours[key], batch[key])

        # Online: Feast reads each entity's newest row, as the batch computed it.
        assert_online_is_newest(store, view, batch)


def _archive_files(run: StreamRun) -> int:
    with run.settings() as s:
        return len(list((s.raw_dir / "transactions").glob("event_date=*/*.parquet")))


@pytest.mark.heavy
def test_sigkill_and_restart_equal_an_uninterrupted_run(
    tmp_path, kafka_bootstrap, events, baseline
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    sender = threading.Thread(target=run.send, args=(events, 150))
    sender.start()
    # Killed right after a checkpoint, and at two points between checkpoints (once the sender
    # is done, a worker that caught up writes no more checkpoints: it is killed then anyway).
    for delay in (0.0, 0.15, 0.4):
        worker = run.spawn()
        before = _archive_files(run)
        wait_for(
            lambda before=before: _archive_files(run) > before or not sender.is_alive(),
            120,
            "a checkpoint",
        )
        time.sleep(delay)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    sender.join()
    run.resume_to_end()
    assert_same_results(run, baseline)


def test_two_workers_share_partitions_and_one_leaves(
    tmp_path, kafka_bootstrap, events, baseline
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    first, first_thread = run.start()
    second, second_thread = run.start()
    wait_for(lambda: first.tasks and second.tasks, 60, "both workers to get partitions")
    sender = threading.Thread(target=run.send, args=(events, 2000))
    sender.start()
    wait_for(lambda: _archive_files(run) >= 6, 60, "the workers to checkpoint")
    # (Partitions may be mid-rebalance here, so which worker holds what is not asserted.)
    second.stop()  # leaves the group mid-stream; the first takes its partitions over
    second_thread.join(timeout=60)
    sender.join()
    run.wait_checkpointed(first)
    first.stop()
    first_thread.join(timeout=60)
    assert not first_thread.is_alive()
    assert_same_results(run, baseline)


def test_bad_events_become_dead_letters_and_good_ones_apply(tmp_path, kafka_bootstrap) -> None:
    good = generated_messages(GeneratorConfig(start=START, days=1, cards=50, merchants=5, seed=9))
    template = json.loads(good[0][1])

    def variant(**changes) -> bytes:
        event = {**template, **changes}
        return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()

    bad = {
        "oversized": variant(country="X" * 20_000),
        "malformed_json": b'{"card_id": 1,',
        "missing_field": variant(amount=...),
        "unexpected_field": variant(coupon="FREE"),
        "wrong_type": variant(card_id="seven"),
        "not_finite": variant(amount=float("nan")),
        "out_of_range": variant(amount=-5.0),
        "bad_timestamp": variant(event_timestamp="yesterday"),
    }
    bad["out_of_range_huge"] = variant(amount=1e12)
    messages = list(good)
    for i, value in enumerate(bad.values()):
        messages.insert(5 + 7 * i, (b"1", value))
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    run.send(messages)
    worker = run.run_to_end()

    counts = worker.metrics.dead_letter_counts()
    expected = {reason: 0 for reason in counts}
    for name in bad:
        expected[name.removesuffix("_huge")] += 1
    assert counts == expected
    letters = run.dead_letters(len(bad))
    assert sorted(r.value for r in letters) == sorted(bad.values())
    for record in letters:
        headers = dict(record.headers)
        assert headers["reason"].decode() in counts and headers["detail"]
        assert headers["source-topic"].decode() == run.topic
    assert len(run.raw()) == len(good)


def _sample(worker, name: str, labels: dict | None = None) -> float:
    return worker.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_redis_outage_pauses_and_resumes_without_loss(
    tmp_path, kafka_bootstrap, events, baseline
) -> None:
    """Redis goes down between two halves of the stream, so the second half is provably in
    flight while it is down: the worker pauses, checkpoints nothing, and resumes losslessly."""
    port = free_port()
    server = redis_server(port, tmp_path)
    half = len(events) // 2
    try:
        run = StreamRun.create(tmp_path, kafka_bootstrap, f"redis://127.0.0.1:{port}/0")
        worker, thread = run.start()
        # A process keeps one value per metric and labels (Feast's multiprocess mode), earlier
        # tests' workers included: this worker's outages are what it adds.
        outages = {"dependency": "online_store"}
        worker.metrics.outages.labels("online_store")
        before = _sample(worker, "featurestore_stream_outages_total", outages)
        # The second half is sent only once Redis is down, so the worker provably has rows to
        # write during the outage, however fast or slow it ran the first half.
        run.send(events[:half])
        wait_for(lambda: _archive_files(run) >= 3, 60, "the worker to checkpoint")
        server.send_signal(signal.SIGTERM)  # Redis writes its append-only file and exits
        server.wait(timeout=10)
        run.send(events[half:])
        # Once the worker has met the outage, no checkpoint may follow while it lasts.
        wait_for(lambda: _sample(worker, "featurestore_stream_outages_total", outages) > before,
                 120, "the worker to meet the outage")
        checkpoints = _sample(worker, "featurestore_stream_checkpoints_total")
        time.sleep(1)
        assert _sample(worker, "featurestore_stream_checkpoints_total") == checkpoints
        assert thread.is_alive()
        server = redis_server(port, tmp_path)
        run.wait_checkpointed(worker)
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert_same_results(run, baseline)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.heavy
def test_an_unreachable_broker_is_retried_with_a_log_line_until_stopped(
    tmp_path, kafka_bootstrap, caplog
) -> None:
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL)
    run.env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    worker = run.worker()
    kafka = {"dependency": "kafka"}
    worker.metrics.outages.labels("kafka")  # the process's value (as in the outage test above)
    before = _sample(worker, "featurestore_stream_outages_total", kafka)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(lambda: _sample(worker, "featurestore_stream_outages_total", kafka) >= before + 2,
             60, "two retries")
    assert thread.is_alive()  # retrying, not crashed
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "Kafka at 127.0.0.1:1 unavailable" in caplog.text


def test_the_consumer_fetch_wait_is_the_setting(tmp_path, kafka_bootstrap) -> None:
    # kafka-python's 500 ms default let the broker hold each fetch that long: it added to the
    # freshness of every hop (bench/stream_hops.py).
    run = StreamRun.create(tmp_path, kafka_bootstrap, REDIS_URL,
                           stream_fetch_max_wait_ms="20")
    worker = run.worker()
    consumer = worker._new_consumer()
    try:
        assert consumer.config["fetch_max_wait_ms"] == 20
    finally:
        consumer.close()
