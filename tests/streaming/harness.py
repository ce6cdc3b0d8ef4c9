"""Stream worker runs against the real broker and Redis, and what they leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from fraud_example.generator import GeneratorConfig, transactions
from streaming.producer import event_messages
from tests.conftest import REDIS_URL
from tests.servers import wait_for

FAST_WORKER = {
    "FEATURESTORE_STREAM_SESSION_TIMEOUT_MS": "6000",
    "FEATURESTORE_STREAM_BATCH_MS": "50",
    "FEATURESTORE_STREAM_BATCH_EVENTS": "400",
    "FEATURESTORE_STREAM_CHECKPOINT_SECONDS": "0.3",
}


def generated_messages(config: GeneratorConfig) -> list[tuple[bytes, bytes]]:
    return [m for table in transactions(config) for m in event_messages(table, "card_id")]


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    admin.close()


def send(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], rate: float | None = None
) -> None:
    # One request in flight: a retried batch cannot overtake the next, so order holds.
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5,
        max_in_flight_requests_per_connection=1,
    )
    started = time.perf_counter()
    for i, (key, value) in enumerate(messages):
        producer.send(topic, key=key, value=value)
        if rate and i % 100 == 0:
            ahead = i / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    producer.close()


@dataclass
class StreamRun:
    """One worker deployment: its own topics, group, data dir and Redis project."""

    root: Path
    bootstrap: str
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, root: Path, bootstrap: str, redis_url: str, partitions: int = 3, **settings: str
    ) -> StreamRun:
        uid = uuid.uuid4().hex[:8]
        run = cls(root, bootstrap, redis_url)
        run.env = {
            "FEATURESTORE_DATA_DIR": str(root / "data"),
            "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
            "FEATURESTORE_PROFILE": "services",
            "FEATURESTORE_PROJECT": f"p{uid}",
            "FEATURESTORE_REDIS_URL": redis_url,
            "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root}/registry.db",
            "FEATURESTORE_TRANSACTIONS_TOPIC": f"tx-{uid}",
            "FEATURESTORE_STREAM_GROUP": f"g-{uid}",
            "FEATURESTORE_DEAD_LETTER_TOPIC": f"dlq-{uid}",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **FAST_WORKER,
            **{f"FEATURESTORE_{k.upper()}": v for k, v in settings.items()},
        }
        create_topic(bootstrap, run.topic, partitions)
        with run.settings() as s:
            from featurestore.feast_config import apply

            apply(s)
        return run

    @property
    def topic(self) -> str:
        return self.env["FEATURESTORE_TRANSACTIONS_TOPIC"]

    @property
    def project(self) -> str:
        return self.env["FEATURESTORE_PROJECT"]

    @contextmanager
    def settings(self) -> Iterator[object]:
        from featurestore.settings import get_settings

        with pytest.MonkeyPatch.context() as patch:
            for key, value in self.env.items():
                patch.setenv(key, value)
            yield get_settings()

    def send(self, messages: list[tuple[bytes, bytes]], rate: float | None = None) -> None:
        send(self.bootstrap, self.topic, messages, rate)

    def worker(self):
        from featurestore.feast_config import feature_store
        from streaming.worker import StreamWorker

        with self.settings() as s:
            return StreamWorker(s, feature_store(s))

    def run_to_end(self, worker=None, timeout: float = 240):
        """A worker run that stops once it has checkpointed every record of its topics and the
        broker acknowledged every row it captured (an idle timeout instead would stop a worker
        that a loaded machine kept busy for that long). A worker failure is raised here.
        `worker`: one made with `worker()` (None: a new one)."""
        worker = worker or self.worker()
        failures: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
                failures.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.wait_checkpointed(worker, timeout, unless=lambda: not thread.is_alive())
        if worker.capture is not None and thread.is_alive():
            assert worker.capture.flush(timeout), "captured rows not acknowledged"
        worker.stop()
        thread.join(60)
        if failures:
            raise failures[0]
        assert not thread.is_alive(), "the worker did not stop"
        return worker

    def run_until_applied(self, total: int, timeout: float = 240):
        """A worker until it applied `total` events summed over its topics (a stage applies
        every event it is sent), then stopped: it checkpoints everything and leaves the group."""
        worker, thread = self.start()
        wait_for(
            lambda: worker.metrics.applied_events(worker.topics) >= total
            or not thread.is_alive(),
            timeout,
            f"the worker to apply {total} events",
        )
        worker.stop()
        thread.join(timeout=120)
        assert not thread.is_alive()
        return worker

    def start(self, idle_seconds: float | None = None) -> tuple[object, threading.Thread]:
        """A worker on a thread; stop it with `worker.stop()` and join the thread."""
        worker = self.worker()
        thread = threading.Thread(
            target=worker.run, kwargs={"idle_seconds": idle_seconds}, daemon=True
        )
        thread.start()
        return worker, thread

    def spawn(self, idle_seconds: float | None = None, processes: int = 1) -> subprocess.Popen:
        """`featurestore stream run` as a process of its own (for SIGKILL)."""
        command = [sys.executable, "-m", "featurestore.cli", "stream", "run"]
        if idle_seconds is not None:
            command += ["--idle-seconds", str(idle_seconds)]
        if processes != 1:
            command += ["--processes", str(processes)]
        return subprocess.Popen(
            command,
            env={**os.environ, **self.env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def resume_to_end(self, processes: int = 1) -> str:
        """`featurestore stream run` as a process until the group checkpointed every record,
        then SIGTERM: it must drain and exit cleanly. Returns its output."""
        final = self.spawn(processes=processes)
        self.wait_checkpointed(self.worker())  # a worker object of the run only names its topics
        final.send_signal(signal.SIGTERM)
        output = final.communicate(timeout=120)[0].decode()
        assert final.returncode == 0, output
        return output

    def wait_checkpointed(self, worker, timeout: float = 240, unless=lambda: False) -> None:
        """Until the group has committed every record of `worker`'s topics (or `unless()`)."""
        # The source topic first: the repartition topics' ends are final once it is committed.
        topics = [self.topic, *(t for t in worker.topics if t != self.topic)]
        wait_for(lambda: unless() or self.checkpointed(topics), timeout,
                 "the workers to checkpoint every record")

    def checkpointed(self, topics: list[str]) -> bool:
        """Whether the worker group has committed every partition of `topics` (the source topic
        first, then the repartition topics it feeds) to its end: every record is processed and
        its online rows (and their capture offers) are out. A topic's end is read only once the
        topics before it are committed, so the records they forwarded are in it (a worker flushes
        its sends before it commits)."""
        # Asks for the group's committed offsets only; it never joins the group.
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.env["FEATURESTORE_STREAM_GROUP"],
            enable_auto_commit=False,
        )
        try:
            for topic in topics:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    return False
                ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
                if any((consumer.committed(tp) or 0) < end for tp, end in ends.items()):
                    return False
            return True
        finally:
            consumer.close()

    # --- what the run left behind --------------------------------------------------------

    def online(self) -> dict[bytes, dict[bytes, bytes]]:
        """Every online hash of this project, keyed by entity (the project suffix removed)."""
        client = redis.Redis.from_url(self.redis_url)
        suffix = self.project.encode()
        hashes = {
            key[: -len(suffix)]: client.hgetall(key)
            for key in client.scan_iter(match=b"*" + suffix, count=1000)
        }
        client.close()
        return hashes

    def table(self, name: str) -> pd.DataFrame:
        with self.settings() as s:
            path = s.raw_dir / "transactions" if name == "raw" else s.offline_dir / name
        files = sorted(str(p) for p in path.glob("event_date=*/*.parquet"))
        if not files:
            return pd.DataFrame()
        return ds.dataset(files, format="parquet").to_table().to_pandas()

    def raw(self) -> pd.DataFrame:
        raw = self.table("raw")
        return raw.sort_values("transaction_id").reset_index(drop=True)

    def features(self, view: str) -> pd.DataFrame:
        """The view's offline rows as training reads them: the newest row per (entity, time)."""
        rows = self.table(view)
        key = next(c for c in rows.columns if c.endswith("_id"))
        rows = rows.sort_values([key, "event_timestamp", "created"], kind="stable")
        rows = rows.drop_duplicates([key, "event_timestamp"], keep="last")
        return rows.drop(columns=["created"]).sort_values([key, "event_timestamp"]).reset_index(
            drop=True
        )

    def dead_letters(self, expected: int, timeout: float = 30) -> list:
        consumer = KafkaConsumer(
            self.env["FEATURESTORE_DEAD_LETTER_TOPIC"],
            bootstrap_servers=self.bootstrap,
            group_id=f"dlq-reader-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        records, deadline = [], time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # Anything beyond the expected count would show up within a short extra wait.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
        consumer.close()
        return records


def uninterrupted_run(root: Path, bootstrap: str, events: list[tuple[bytes, bytes]]) -> StreamRun:
    """`events` applied by one worker without interruption: what every fault run must equal."""
    run = StreamRun.create(root, bootstrap, REDIS_URL)
    run.send(events)
    run.run_to_end()
    return run


def assert_same_results(run: StreamRun, baseline: StreamRun) -> None:
    """Online hashes, raw archive and offline feature rows equal those of `baseline`."""
    assert run.online() == baseline.online()
    pd.testing.assert_frame_equal(run.raw(), baseline.raw())
    for view in ("card_transaction_features", "merchant_transaction_features"):
        pd.testing.assert_frame_equal(run.features(view), baseline.features(view))


def assert_online_is_newest(store, view, rows: pd.DataFrame) -> None:
    """Feast's online read of every entity in `rows` gives that entity's newest row."""
    key = view.join_keys[0].name
    latest = rows.sort_values([key, "event_timestamp"]).groupby(key).tail(1).set_index(key)
    names = [a.name for a in view.aggregations]
    online = store.get_online_features(
        features=[f"{view.name}:{n}" for n in names],
        entity_rows=[{key: int(k)} for k in latest.index],
    ).to_df().set_index(key)
    pd.testing.assert_frame_equal(
        online[names].sort_index().astype(float), latest[names].sort_index().astype(float)
    )
