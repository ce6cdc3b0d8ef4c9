"""Probe: where an event's freshness goes, hop by hop, at a fixed produce rate.

One worker (a `StreamWorker` whose consumer poll and producer send are timed, nothing else
changed) on a topic of its own, live events from a separate producer process at `--rate`, as
in bench/stream.py's freshness case. Every consumed record and every forwarded message gets
wall-clock timestamps; the percentiles of each hop are printed and written as cases of
bench/results/stream_hops.json:

  stage 1 (source topic), per event:
    source ts -> polled      the Kafka timestamp (set by the producer's send()) to the poll
                             that returned it: the sender's linger, broker append, fetch wait
    polled -> processing     time in the worker's buffer before its micro-batch is processed
    processing               the micro-batch's task.process up to this partition's step
    processed -> online      forward sends, the online write of the whole batch, and the
                             next poll, during which Redis runs it (its replies are read after)
  forward (repartition topic), per message:
    send -> acked            the forward producer's linger and the broker append
    acked -> polled          stage 2's fetch: the wait until the consumer returned it
  stage 2, per message: polled -> processing, processing, processed -> online, as above
  end to end: the worker's own freshness (metrics), per applied event, both stages.

A bare producer -> consumer at the same rate (`--bare`) is the broker's ceiling: Kafka
timestamp to poll return, without the worker.

    .venv/bin/python bench/stream_hops.py --redis redis://127.0.0.1:6392 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import redis
from common import write_results
from stream import (
    BENCH_DIR,
    OURS_DB,
    broker,
    configure,
    console,
    new_topic,
    produce_live,
    start_worker,
    wait_applied,
)

from streaming.worker import StreamWorker

QUANTILES = (50, 90, 99)


def now_ms() -> float:
    return time.time() * 1000


class HopWorker(StreamWorker):
    """A stream worker that timestamps its polls, sends, processing and online writes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hops: dict[str, list[float]] = defaultdict(list)
        self.polled_at: dict[tuple[str, int, int], float] = {}
        self.acked: dict[tuple[str, int, int], tuple[float, float]] = {}
        self._processed_at: dict[tuple[str, int], float] = {}
        self._batch: dict = {}
        self._started = self._task_began = 0.0

    def _new_consumer(self):
        consumer = super()._new_consumer()
        poll = consumer.poll

        def timed_poll(*args, **kwargs):
            polled = poll(*args, **kwargs)
            at = now_ms()
            for tp, records in polled.items():
                for record in records:
                    self.polled_at[(tp.topic, tp.partition, record.offset)] = at
            return polled

        consumer.poll = timed_poll
        return consumer

    def _new_producer(self):
        producer = super()._new_producer()
        send = producer.send

        def timed_send(topic, *args, **kwargs):
            at = now_ms()
            future = send(topic, *args, **kwargs)
            if topic in self.stages:  # a forward, not a dead letter
                future.add_callback(
                    lambda meta: self.acked.__setitem__(
                        (meta.topic, meta.partition, meta.offset), (at, now_ms())
                    )
                )
            return future

        producer.send = timed_send
        return producer

    def _process(self, batch) -> None:
        self._batch, self._started = batch, now_ms()
        self._task_began = self._started
        self.hops["micro-batch: records (count)"].append(sum(map(len, batch.values())))
        super()._process(batch)

    def _send(self, tp, step) -> None:
        processed = now_ms()
        self._processed_at[(tp.topic, tp.partition)] = processed
        self.hops["one partition's task.process call"].append(processed - self._task_began)
        self.hops["one partition's task.process call: events (count)"].append(
            len(step.applied_timestamps_ms)
        )
        super()._send(tp, step)
        self._task_began = now_ms()

    def _record_written(self) -> None:  # the batch's online rows landed
        super()._record_written()
        written = now_ms()
        for tp, records in self._batch.items():
            processed = self._processed_at.pop((tp.topic, tp.partition), None)
            if processed is None:
                continue
            stage = "stage 1" if tp.topic == self.topics[0] else "stage 2"
            for record in records:
                key = (tp.topic, tp.partition, record.offset)
                polled = self.polled_at.pop(key, None)
                if polled is None:
                    continue
                if stage == "stage 1":
                    self.hops["stage 1: source ts -> polled"].append(polled - record.timestamp)
                else:
                    sent = self.acked.pop(key, None)
                    if sent is not None:
                        self.hops["forward: send -> acked"].append(sent[1] - sent[0])
                        self.hops["forward: acked -> stage 2 polled"].append(polled - sent[1])
                self.hops[f"{stage}: polled -> processing"].append(self._started - polled)
                self.hops[f"{stage}: processing"].append(processed - self._started)
                self.hops[f"{stage}: processed -> online"].append(written - processed)
        self._batch = {}


def run_worker(bootstrap: str, args: argparse.Namespace, root: Path) -> dict[str, list[float]]:
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    configure(root, bootstrap, args.batch_events, args.redis)
    os.environ["FEATURESTORE_STREAM_CHECKPOINT_SECONDS"] = str(args.checkpoint_seconds)
    redis.Redis.from_url(f"{args.redis}/{OURS_DB}").flushdb()
    settings = get_settings()
    store = apply(settings)
    new_topic(bootstrap, settings.transactions_topic, args.partitions)
    worker, stop, thread = start_worker(settings, store, HopWorker)
    live = int(args.rate * args.seconds)
    console.print(
        f"producing {live:,} events at {args.rate:,.0f}/s, checkpoints every "
        f"{args.checkpoint_seconds:g} s..."
    )
    produce_live(args.rate, live, args.cards, history_days=1)
    wait_applied(worker, worker.topics, live, timeout=300)
    stop.set()
    thread.join(timeout=120)
    hops = dict(worker.hops)
    with worker.metrics._lock:
        hops["end to end: freshness (worker metrics, both stages)"] = (
            worker.metrics._ring[: worker.metrics._filled].astype(float).tolist()
        )
    return hops


def run_bare(bootstrap: str, args: argparse.Namespace, root: Path) -> list[float]:
    """Kafka timestamp -> poll return of a bare consumer, the producer process at `--rate`."""
    from kafka import KafkaConsumer, TopicPartition

    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    configure(root, bootstrap, args.batch_events, args.redis)
    settings = get_settings()
    apply(settings)
    topic = settings.transactions_topic
    new_topic(bootstrap, topic, args.partitions)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.stream_fetch_max_wait_ms,  # as the worker's
    )
    partitions = [TopicPartition(topic, p) for p in range(args.partitions)]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)
    live = int(args.rate * args.seconds)
    producer = threading.Thread(target=produce_live, args=(args.rate, live, args.cards, 1))
    producer.start()
    latencies: list[float] = []
    while len(latencies) < live:
        for records in consumer.poll(timeout_ms=100).values():
            at = now_ms()
            latencies += [at - r.timestamp for r in records]
    producer.join()
    consumer.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--batch-events", type=int, default=20_000)
    parser.add_argument("--checkpoint-seconds", type=float, default=5.0)
    parser.add_argument(
        "--bare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the bare producer -> consumer ceiling",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "stream_hops.json")
    args = parser.parse_args()
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-hops-") as tmp:
        hops = run_worker(bootstrap, args, Path(tmp) / "hops")
        if args.bare:
            hops["bare consumer: source ts -> polled (the broker's ceiling)"] = run_bare(
                bootstrap, args, Path(tmp) / "bare"
            )
    cases = []
    for name, values in hops.items():
        figures = np.percentile(values, QUANTILES) if values else [float("nan")] * 3
        unit, metric = ("records", "count") if name.endswith("(count)") else ("ms", "latency")
        console.print(
            f"{name:60s} n={len(values):7,d} "
            + "  ".join(f"p{q} {v:7.1f} {unit}" for q, v in zip(QUANTILES, figures, strict=True))
        )
        for q, v in zip(QUANTILES, figures, strict=True):
            cases.append(
                {
                    "case": f"{name} at {args.rate:,.0f} events/s",
                    "metric": f"{metric} p{q}",
                    "unit": unit,
                    "ours": float(v),
                    "anchor": None,
                    "anchor_name": None,
                    "ratio": None,
                    "target": "-",
                }
            )
    write_results(args.output, "stream_hops", cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
