"""Benchmark: our materializer against `feast materialize`, side by side, in one run.

Both read the same Parquet offline table and write the same feature view into the same Redis
server (ours into db 13, Feast into db 12), so the only difference is the code in between.
Each materialization runs in a child process of its own, so its peak RSS is its own.

Each size (--small-rows, --rows, --big-rows: 100k, 1M, 4M by default, the growth curve) is
materialized by ours and by the Redis ceiling: plain pipelined HSETs of the same rows, fields and
bytes (Feast's layout) with no never-older check, the most one Redis takes. `feast materialize`
runs at --rows only (it needs ~11 GiB there). Cases (written to bench/results/materialize.json):
  1. throughput at --rows, ours vs Feast, rows/s;
  2. throughput of ours vs the ceiling at each size (target >= 0.8x);
  3. throughput at --big-rows, flat vs --rows;
  4. peak RSS at --rows, ours vs Feast; at the other sizes vs --rows (flat: <= 1.2x);
  5. at --rows, `materialize --engine spark` (Spark tasks on this machine's cores, each with its
     own writer) vs ours in one process, into the same Redis (--skip-spark leaves it out);
  6. at --rows, ours into a 3-master Redis Cluster the run starts (tests/servers.py's starter)
     vs ours into one Redis (--skip-cluster leaves it out).
Each child's line also gives Redis's `INFO commandstats` time per row of each command and the
peak RSS after each stage of ours (set-up, first batch, last batch, end).

The run fails loudly unless ours, Feast, the ceiling, ours with Spark and ours on the cluster
hold byte-identical Redis hashes for a sample of entities and Feast's `get_online_features` reads back the Parquet values from what we
wrote.

The view is a plain `FeatureView`, not a `StreamFeatureView` with aggregations: Feast's local
compute engine cannot materialize time-window aggregations, so a plain view is the only kind
both sides can materialize.

    .venv/bin/python bench/materialize.py      # full run: ~6.5 min, ~11 GiB RAM for Feast
    .venv/bin/python bench/materialize.py --rows 50000 --big-rows 200000 --skip-feast \
        --redis redis://127.0.0.1:6394                                          # quick trial
    .venv/bin/python bench/materialize.py --small-rows 0 --rows 50000 --big-rows 0 \
        --skip-feast --skip-cluster                    # ours --engine spark vs local only
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from common import (
    BenchmarkError,
    own_peak_rss_mib,
    print_cases,
    redis_cluster,
    run_main,
    write_results,
)
from common import run_child as common_run_child
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "materialize.json"

REDIS_URL = "redis://127.0.0.1:6379"
# The ceiling and Spark runs write into FEAST_DB after Feast's run is checked.
OURS_DB, FEAST_DB = 13, 12
CLUSTER = "cluster"  # the target of the Redis Cluster run, instead of a db
PROJECT = "bench"
VIEW = "bench_features"
DAY = date(2025, 6, 2)
START = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
END = START + timedelta(days=1)

FLOAT_FEATURES = [f"f{i:02d}" for i in range(8)]
INT_FEATURES = [f"i{i:02d}" for i in range(4)]
FEATURES = FLOAT_FEATURES + INT_FEATURES
NULLABLE = {"f01": 0.01, "i01": 0.01}  # share of null rows
ENTITY_BASE = 4_000_000_000  # card ids above 2^31, as real card ids are
SEED = 20250602
GENERATE_CHUNK = 262_144  # rows generated and written at a time
ROW_GROUP = 131_072  # Parquet row group size (the offline tables are written in row groups)
SAMPLE = 2_000  # entities compared between the two Redis dbs and against the Parquet

THROUGHPUT_TARGET = 20.0  # ours / Feast, rows/s
FLAT_RSS_TARGET = 1.2  # peak RSS at --big-rows / peak RSS at --rows
BIG_THROUGHPUT_TARGET = 0.8  # rows/s at --big-rows / rows/s at --rows
CEILING_TARGET = 0.8  # ours / plain pipelined HSET of the same rows, rows/s

# Piped output (make, CI logs) gets a width that fits the results table.
console = Console(width=None if sys.stdout.isatty() else 150)


# ---------------------------------------------------------------------------------------------
# The Feast repo: definitions, offline data, settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """One dataset size: its offline table, Feast repo dir and one registry per Redis db."""

    root: Path
    rows: int
    redis_url: str
    cluster_url: str | None = None  # redis://h1:p1,h2:p2,... of the cluster case's masters

    def servers(self, target: int | str) -> list[str]:
        """The Redis servers a run into `target` (a db, or CLUSTER) writes to."""
        if target == CLUSTER:
            assert self.cluster_url is not None
            return [f"redis://{node}" for node in self.cluster_url.removeprefix("redis://")
                    .split(",")]  # fmt: skip
        return [self.redis_url]

    @property
    def offline_table(self) -> Path:
        return self.root / "offline" / VIEW

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    def settings(self, target: int | str):
        from featurestore.settings import Settings

        # A registry per store keeps the runs' materialization records apart.
        name = CLUSTER if target == CLUSTER else f"db{target}"
        redis = (
            {"redis_url": self.cluster_url, "redis_type": "redis_cluster"}
            if target == CLUSTER
            else {"redis_url": f"{self.redis_url}/{target}"}
        )
        return Settings(
            profile="services",
            project=PROJECT,
            data_dir=self.root / f"data-{name}",
            feature_repo=self.repo,
            registry_url=f"sqlite:///{self.root / f'registry-{name}.db'}",
            **redis,
        )


def feast_objects(offline_table: Path) -> list[Any]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
    source = FileSource(
        name=f"{VIEW}_offline",
        path=str(offline_table),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )
    view = FeatureView(
        name=VIEW,
        entities=[card],
        source=source,
        schema=[
            Field(name="card_id", dtype=Int64),
            *(Field(name=name, dtype=Float64) for name in FLOAT_FEATURES),
            *(Field(name=name, dtype=Int64) for name in INT_FEATURES),
        ],
        ttl=timedelta(days=2),
        online=True,
    )
    return [card, source, view]


def offline_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("card_id", pa.int64()),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("created", pa.timestamp("us", tz="UTC")),
            *(pa.field(name, pa.float64()) for name in FLOAT_FEATURES),
            *(pa.field(name, pa.int64()) for name in INT_FEATURES),
        ]
    )


def offline_chunk(first: int, rows: int) -> pa.Table:
    """Rows [first, first + rows) of the dataset: one row per entity, sorted by card id.

    Seeded by chunk position, so any chunk is reproducible on its own.
    """
    rng = np.random.default_rng([SEED, first])
    card_id = ENTITY_BASE + 3 * np.arange(first, first + rows, dtype=np.int64)
    day_start = int(START.timestamp()) * 1_000_000
    event = day_start + rng.integers(0, 86_400 * 1_000_000, rows)  # microsecond precision
    created = event + rng.integers(0, 600 * 1_000_000, rows)
    columns: dict[str, pa.Array] = {
        "card_id": pa.array(card_id),
        "event_timestamp": pa.array(event, pa.timestamp("us", tz="UTC")),
        "created": pa.array(created, pa.timestamp("us", tz="UTC")),
    }
    scales = [1.0, 250.0, 1e-3, 1e6, 42.0, 0.5, 1e4, 7.0]
    for name, scale in zip(FLOAT_FEATURES, scales):
        columns[name] = rng.normal(0.0, scale, rows)
    columns["i00"] = rng.integers(0, 100, rows)  # one-byte varints
    columns["i01"] = rng.integers(-1_000_000, 1_000_000, rows)  # negatives: ten-byte varints
    columns["i02"] = rng.integers(0, 1 << 40, rows)
    columns["i03"] = rng.integers(-(1 << 62), 1 << 62, rows)
    for name, share in NULLABLE.items():
        columns[name] = pa.array(columns[name], mask=rng.random(rows) < share)
    return pa.table(columns, schema=offline_schema())


def write_offline(table_dir: Path, rows: int) -> Path:
    """The offline table: one Hive partition `event_date=DAY`, written chunk by chunk."""
    partition = table_dir / f"event_date={DAY.isoformat()}"
    partition.mkdir(parents=True, exist_ok=True)
    path = partition / "part-00000.parquet"
    progress = Progress(
        TextColumn("  generating offline Parquet"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress, pq.ParquetWriter(path, offline_schema()) as writer:
        task = progress.add_task("generate", total=rows)
        for first in range(0, rows, GENERATE_CHUNK):
            chunk = offline_chunk(first, min(GENERATE_CHUNK, rows - first))
            writer.write_table(chunk, row_group_size=ROW_GROUP)
            progress.advance(task, chunk.num_rows)
    return path


def prepare(
    root: Path, rows: int, redis_url: str, targets: list[int | str], cluster_url: str | None
) -> Workspace:
    from featurestore.feast_config import feature_store

    workspace = Workspace(root, rows, redis_url, cluster_url)
    workspace.repo.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    path = write_offline(workspace.offline_table, rows)
    metadata = pq.read_metadata(path)
    console.print(
        f"  offline table: {metadata.num_rows:,} rows, {metadata.num_row_groups} row groups, "
        f"{path.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - started:.1f} s)"
    )
    for target in targets:
        feature_store(workspace.settings(target)).apply(feast_objects(workspace.offline_table))
    return workspace


# ---------------------------------------------------------------------------------------------
# Children: one materialization each, reporting time and peak RSS
# ---------------------------------------------------------------------------------------------


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class CpuMeter:
    """CPU seconds of this process and of the Redis server over a block: where the time goes."""

    def __init__(self, redis_urls: list[str]) -> None:
        self.clients = [redis.Redis.from_url(url) for url in redis_urls]

    def _redis_cpu(self) -> float:
        cpu = [client.info("cpu") for client in self.clients]
        return sum(float(c["used_cpu_user"]) + float(c["used_cpu_sys"]) for c in cpu)

    @staticmethod
    def _own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> Self:
        self._began = (time.perf_counter(), self._own_cpu(), self._redis_cpu())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, own, server = self._began
        self.seconds = time.perf_counter() - wall
        self.client_cpu = self._own_cpu() - own
        self.redis_cpu = self._redis_cpu() - server

    def figures(self) -> dict[str, float]:
        return {
            "seconds": self.seconds,
            "client_cpu_seconds": self.client_cpu,
            "redis_cpu_seconds": self.redis_cpu,
        }


def child_ours(
    workspace: Workspace, engine: str = "local", target: int | str = OURS_DB
) -> dict[str, Any]:
    """Ours into `target`; with engine "spark" the peak RSS is the driver's (this process):
    the tasks run in Spark's JVM and its Python workers (one task per row group of ROW_GROUP
    rows, at most two per core)."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize
    from featurestore.progress import row_progress

    settings = workspace.settings(target)
    store = feature_store(settings)
    [view] = select_views(store, [VIEW])
    if engine == "spark":
        from featurestore.batch.spark import spark_session

        # The JVM's start outside the timed part, as the registry read is; the executors'
        # Python workers start inside it (the first job of a session pays for them).
        spark_session(settings)
    rss_before = current_rss_mib()
    # Peak RSS after each stage: a growth shows whether it is set-up, the batches or the end.
    peaks = {"set-up": own_peak_rss_mib()}
    with (
        row_progress(f"ours ({engine}): materialize", total=workspace.rows) as advance,
        CpuMeter(workspace.servers(target)) as meter,
    ):

        def advance_and_watch(rows: int) -> None:
            advance(rows)
            peaks.setdefault("first batch", own_peak_rss_mib())
            peaks["last batch"] = own_peak_rss_mib()

        [result] = materialize(
            settings, store, [(view, START, END)], progress=advance_and_watch,
            engine=engine,  # type: ignore[arg-type]
        )
    peaks["end"] = own_peak_rss_mib()
    return {
        **meter.figures(),
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "rss_before_mib": rss_before,
        "peak_rss_by_stage_mib": peaks,
        "batch_size": settings.materialize_batch_size,
    }


def child_feast(workspace: Workspace) -> dict[str, Any]:
    from featurestore.feast_config import feature_store

    store = feature_store(workspace.settings(FEAST_DB))
    store.get_feature_view(VIEW)  # registry read outside the timed part, as ours does
    rss_before = current_rss_mib()
    with CpuMeter(workspace.servers(FEAST_DB)) as meter:
        # What `feast materialize START END --views bench_features` runs.
        store.materialize(START, END, feature_views=[VIEW])
    return {**meter.figures(), "rss_before_mib": rss_before}


def hset_commands(layout: Any, table: pa.Table) -> bytes:
    """One `HSET key _ts:<view> ts field value ...` per row: Feast's layout, our bytes."""
    from featurestore.online import resp
    from featurestore.online.feast_layout import event_micros, timestamp_slots, value_slots

    rows = table.num_rows
    commands = resp.RespRows(rows)
    commands.raw(b"*%d\r\n" % (4 + 2 * len(layout.feature_fields)) + resp.bulk(b"HSET"))
    commands.bulk(*layout.key_slots(table))
    commands.bulk(resp.constant(layout.ts_field, rows))
    commands.bulk(*timestamp_slots(event_micros(table.column("event_timestamp"))))
    for name, field in layout.feature_fields.items():
        commands.bulk(resp.constant(field, rows))
        commands.bulk(*value_slots(table.column(name), layout.value_types[name]))
    data, _ = commands.build()
    return data.tobytes()


def child_ceiling(workspace: Workspace) -> dict[str, Any]:
    """What Redis alone can take: the rows ours writes, as plain pipelined HSETs (no check).

    Same reader, same per-batch latest row, same encoders and the same one-batch-ahead
    pipelining as ours; only the never-older script is missing.
    """
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import latest_per_entity, offline_batches, offline_files
    from featurestore.online.feast_layout import RedisLayout

    settings = workspace.settings(OURS_DB)  # its registry; the rows go to FEAST_DB
    store = feature_store(settings)
    [view] = select_views(store, [VIEW])
    layout = RedisLayout(view, store.config)
    connection = redis.Redis.from_url(f"{workspace.redis_url}/{FEAST_DB}").connection_pool
    connection = connection.get_connection()
    rss_before = current_rss_mib()
    with CpuMeter(workspace.servers(FEAST_DB)) as meter:
        files = offline_files(view, START, END)
        outstanding = 0
        for batch in offline_batches(view, files, START, END, settings.materialize_batch_size):
            rows = latest_per_entity(batch, view)
            connection.send_packed_command([hset_commands(layout, rows)], check_health=False)
            for _ in range(outstanding):
                connection.read_response()
            outstanding = rows.num_rows
        for _ in range(outstanding):
            connection.read_response()
    return {**meter.figures(), "rss_before_mib": rss_before}


CHILDREN = {
    "ours": child_ours,
    "ours-spark": partial(child_ours, engine="spark", target=FEAST_DB),
    "ours-cluster": partial(child_ours, target=CLUSTER),
    "feast": child_feast,
    "ceiling": child_ceiling,
}


def redis_usec_per_row(stats: list[dict[str, dict[str, float]]], rows: int) -> dict[str, float]:
    """Microseconds the Redis servers spent per row in each command (`INFO commandstats`,
    summed over servers; commands a script calls are counted on their own too, and inside the
    script's figure)."""
    usec: dict[str, float] = {}
    for server in stats:
        for name, stat in server.items():
            command = name.removeprefix("cmdstat_")
            usec[command] = usec.get(command, 0.0) + stat["usec"]
    return {name: round(total / rows, 2) for name, total in usec.items() if total / rows >= 0.01}


def describe(who: str, rows: int, result: dict[str, Any]) -> str:
    micros = 1e6 / rows
    commands = ", ".join(f"{name} {usec:.2f}" for name, usec in result["redis_usec"].items())
    return (
        f"  {who}: {rows / result['seconds']:,.0f} rows/s ({result['seconds']:.1f} s); CPU "
        f"{result['client_cpu_seconds'] * micros:.1f} µs/row in the process, "
        f"{result['redis_cpu_seconds'] * micros:.1f} µs/row in redis-server "
        f"(commandstats µs/row: {commands}); peak RSS "
        f"{result['peak_rss_mib']:,.0f} MiB ({result['rss_before_mib']:,.0f} MiB before "
        "materializing)"
        + (f"; batch size {result['batch_size']:,}" if "batch_size" in result else "")
        + "".join(
            f"; peak after {stage} {mib:,.0f} MiB"
            for stage, mib in result.get("peak_rss_by_stage_mib", {}).items()
        )
    )


def run_child(role: str, workspace: Workspace, target: int | str = OURS_DB) -> dict[str, Any]:
    stats = [redis.Redis.from_url(url) for url in workspace.servers(target)]
    for server in stats:
        server.config_resetstat()
    started = time.perf_counter()
    cluster = ["--cluster-url", workspace.cluster_url] if workspace.cluster_url else []
    result = common_run_child(
        __file__, role, workspace.root / f"result-{role}.json",
        [
            "--workdir", str(workspace.root), "--rows", str(workspace.rows),
            "--redis", workspace.redis_url, *cluster,
        ],
    )  # fmt: skip
    result["wall_seconds"] = time.perf_counter() - started
    result["redis_usec"] = redis_usec_per_row(
        [server.info("commandstats") for server in stats], workspace.rows
    )
    console.print(describe(f"{role:<7}", workspace.rows, result))
    return result


def child_main(args: argparse.Namespace) -> None:
    workspace = Workspace(Path(args.workdir), args.rows, args.redis, args.cluster_url)
    result = CHILDREN[args.child](workspace)
    result["peak_rss_mib"] = own_peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Correctness: the two dbs hold the same bytes, and Feast reads back the Parquet values
# ---------------------------------------------------------------------------------------------


def sample_ids(rows: int) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    positions = rng.choice(rows, size=min(SAMPLE, rows), replace=False)
    return ENTITY_BASE + 3 * np.sort(positions).astype(np.int64)


def redis_key(card_id: int) -> bytes:
    # Feast's own key function, not ours: the check must not trust the code it checks.
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=["card_id"], entity_values=[Value(int64_val=card_id)])
    return _redis_key(PROJECT, key, entity_key_serialization_version=3)


def check_key_count(clients: list[redis.Redis], rows: int, who: str) -> None:
    found = sum(client.dbsize() for client in clients)
    if found != rows:
        raise BenchmarkError(f"{who}: Redis db holds {found:,} keys, expected {rows:,}")


def hashes(client: redis.Redis, keys: list[bytes]) -> list[dict]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return pipe.execute()


def cluster_hashes(cluster_url: str, keys: list[bytes]) -> list[dict]:
    """Each key's hash from the master its slot is on (redis-py's cluster client routes)."""
    from redis.cluster import ClusterNode, RedisCluster

    host, port = cluster_url.removeprefix("redis://").split(",")[0].split(":")
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))])
    try:
        return [client.hgetall(key) for key in keys]
    finally:
        client.close()


def check_same_hashes(
    ours: redis.Redis, read: Callable[[list[bytes]], list[dict]], ids: np.ndarray, who: str,
    where: str = f"db {FEAST_DB}",
) -> None:
    """Our hashes in db OURS_DB against what `read` finds in `where` (`who` wrote them)."""
    keys = [redis_key(int(i)) for i in ids]
    mismatches = []
    for card_id, ours_hash, feast_hash in zip(ids, hashes(ours, keys), read(keys)):
        if not ours_hash or ours_hash != feast_hash:
            mismatches.append((int(card_id), ours_hash, feast_hash))
    if mismatches:
        card_id, ours_hash, feast_hash = mismatches[0]
        raise BenchmarkError(
            f"{len(mismatches)} of {len(ids)} sampled entities differ between ours (db "
            f"{OURS_DB}) and {who} ({where}); first: card_id={card_id}\n"
            f"  ours:  {ours_hash!r}\n  {who}: {feast_hash!r}"
        )
    console.print(
        f"  [green]ok[/] HGETALL byte-identical in db {OURS_DB} (ours) and {where} ({who}) "
        f"for {len(ids):,} sampled entities"
    )


def check_online_values(workspace: Workspace, db: int, ids: np.ndarray) -> None:
    """Feast's get_online_features on what was written equals the Parquet rows."""
    from featurestore.feast_config import feature_store

    table = pq.read_table(
        workspace.offline_table,
        filters=[("card_id", "in", ids.tolist())],
        columns=["card_id", *FEATURES],
    )
    table = table.take(pc.sort_indices(table, [("card_id", "ascending")]))
    if table.num_rows != len(ids):
        raise BenchmarkError(f"sample: found {table.num_rows} of {len(ids)} ids in the Parquet")
    expected = table.to_pydict()
    store = feature_store(workspace.settings(db))
    online = store.get_online_features(
        features=[f"{VIEW}:{name}" for name in FEATURES],
        entity_rows=[{"card_id": int(i)} for i in ids],
    ).to_dict()
    if online["card_id"] != expected["card_id"]:
        raise BenchmarkError("get_online_features returned entities in another order")
    bad = [
        (name, expected["card_id"][i], expected[name][i], online[name][i])
        for name in FEATURES
        for i in range(len(ids))
        if online[name][i] != expected[name][i]
    ]
    if bad:
        name, card_id, want, got = bad[0]
        raise BenchmarkError(
            f"db {db}: {len(bad)} online values differ from the Parquet; first: "
            f"card_id={card_id} {name}: Parquet {want!r}, online {got!r}"
        )
    nulls = sum(v is None for name in NULLABLE for v in online[name])
    console.print(
        f"  [green]ok[/] get_online_features (db {db}) = Parquet for {len(ids):,} entities x "
        f"{len(FEATURES)} features ({nulls} nulls among them)"
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 2)


def rows_label(rows: int) -> str:
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return f"{rows:,}"


FEAST_ANCHOR = "feast materialize (Feast 0.67, local compute engine, Redis online store)"
CEILING_ANCHOR = "Redis ceiling: pipelined HSET of the same fields and bytes, no never-older check"
SHAPE = f"x {len(FEATURES)} features"


def case(
    rows: int,
    metric: str,
    unit: str,
    ours: float,
    anchor: float | None,
    anchor_name: str | None,
    ratio_: float | None,
    target: str,
) -> dict:
    return {
        "case": f"materialize {rows_label(rows)} entities {SHAPE}",
        "metric": metric,
        "unit": unit,
        "ours": ours,
        "anchor": anchor,
        "anchor_name": anchor_name,
        "ratio": ratio_,
        "target": target,
    }  # fmt: skip


def build_cases(
    main_rows: int, runs: dict[int, dict[str, dict]]
) -> tuple[list[dict], list[bool | None]]:
    """`runs[rows][role]`: the children's results per size ("ours", "ceiling", "feast",
    "ours-spark", "ours-cluster")."""
    cases: list[dict] = []
    verdicts: list[bool | None] = []
    main = runs[main_rows]
    main_rate = main_rows / main["ours"]["seconds"]
    for rows, run in runs.items():
        rate = rows / run["ours"]["seconds"]
        if "feast" in run:
            feast_rate = rows / run["feast"]["seconds"]
            throughput = ratio(rate, feast_rate)
            cases.append(
                case(rows, "throughput", "rows/s", round(rate), round(feast_rate), FEAST_ANCHOR,
                     throughput, f">= {THROUGHPUT_TARGET:g}x")
            )  # fmt: skip
            verdicts.append(throughput is not None and throughput >= THROUGHPUT_TARGET)
        ceiling_rate = rows / run["ceiling"]["seconds"]
        of_ceiling = ratio(rate, ceiling_rate)
        cases.append(
            case(rows, "throughput vs Redis ceiling", "rows/s", round(rate), round(ceiling_rate),
                 CEILING_ANCHOR, of_ceiling, f">= {CEILING_TARGET:g}x")
        )  # fmt: skip
        verdicts.append(of_ceiling is not None and of_ceiling >= CEILING_TARGET)
        if rows > main_rows:
            cases.append(
                case(rows, "throughput", "rows/s", round(rate), None, None, None,
                     f"flat vs {rows_label(main_rows)} (>= {BIG_THROUGHPUT_TARGET:g}x its rows/s)")
            )  # fmt: skip
            verdicts.append(rate >= BIG_THROUGHPUT_TARGET * main_rate)

    for role, metric, anchor_name in (
        ("ours-spark", "throughput, --engine spark", "ours --engine local (one process)"),
        ("ours-cluster", "throughput into a 3-master Redis Cluster", "ours into one Redis"),
    ):
        if role in main:
            # Informative on one machine: the tasks (or masters) share its cores with Redis.
            rate = main_rows / main[role]["seconds"]
            cases.append(
                case(main_rows, metric, "rows/s", round(rate), round(main_rate), anchor_name,
                     ratio(rate, main_rate), "-")
            )  # fmt: skip
            verdicts.append(None)
    if "ours-spark" in main:
        driver_rss = main["ours-spark"]["peak_rss_mib"]
        cases.append(
            case(main_rows, "peak RSS of the driver, --engine spark", "MiB", round(driver_rss, 1),
                 round(main["ours"]["peak_rss_mib"], 1), "ours --engine local (one process)",
                 ratio(main["ours"]["peak_rss_mib"], driver_rss), "-")
        )  # fmt: skip
        verdicts.append(None)

    main_rss = main["ours"]["peak_rss_mib"]
    for rows, run in runs.items():
        rss = run["ours"]["peak_rss_mib"]
        if "feast" in run:
            feast_rss = run["feast"]["peak_rss_mib"]
            cases.append(
                case(rows, "peak RSS", "MiB", round(rss, 1), round(feast_rss, 1), FEAST_ANCHOR,
                     ratio(feast_rss, rss), "> 1x (below Feast)")
            )  # fmt: skip
            verdicts.append(feast_rss > rss)
        elif rows == main_rows:
            cases.append(case(rows, "peak RSS", "MiB", round(rss, 1), None, None, None, "-"))
            verdicts.append(None)
        if rows != main_rows:
            cases.append(
                case(rows, "peak RSS vs " + rows_label(main_rows), "MiB", round(rss, 1),
                     round(main_rss, 1), f"ours at {rows_label(main_rows)}",
                     ratio(main_rss, rss), f">= {1 / FLAT_RSS_TARGET:.2f}x (flat: peak at most "
                     f"{FLAT_RSS_TARGET:g}x the {rows_label(main_rows)} peak)")
            )  # fmt: skip
            verdicts.append(rss <= FLAT_RSS_TARGET * main_rss)
    return cases, verdicts


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def flush(redis_url: str, db: int) -> redis.Redis:
    if db == 0:
        raise BenchmarkError("refusing to touch Redis db 0")
    client = redis.Redis.from_url(f"{redis_url}/{db}")
    client.flushdb()
    return client


def run_size(
    root: Path, rows: int, args: argparse.Namespace, main: bool, cluster: Any | None
) -> dict:
    """Ours, then at --rows (`main`) ours with Spark, ours on the cluster and Feast (unless
    skipped), then the ceiling, on one freshly generated table."""
    console.rule(f"[bold]{rows_label(rows)} entities x {len(FEATURES)} features")
    ours_client = flush(args.redis, OURS_DB)
    other_client = flush(args.redis, FEAST_DB)
    with_feast, with_spark = main and not args.skip_feast, main and not args.skip_spark
    with_cluster = main and cluster is not None
    targets: list[int | str] = [OURS_DB]
    targets += [FEAST_DB] if with_feast or with_spark else []
    targets += [CLUSTER] if with_cluster else []
    workspace = prepare(root, rows, args.redis, targets, cluster.url if cluster else None)
    ids = sample_ids(rows)
    results = {"ours": run_child("ours", workspace)}
    if results["ours"]["rows_written"] != rows:
        raise BenchmarkError(f"ours wrote {results['ours']['rows_written']:,} rows of {rows:,}")
    check_key_count([ours_client], rows, "ours")
    check_online_values(workspace, OURS_DB, ids)
    same_db = partial(hashes, other_client)
    if with_spark:
        results["ours-spark"] = run_child("ours-spark", workspace, FEAST_DB)
        if results["ours-spark"]["rows_read"] != rows:
            raise BenchmarkError(f"ours with Spark read {results['ours-spark']['rows_read']:,} "
                                 f"rows of {rows:,}")  # fmt: skip
        check_key_count([other_client], rows, "ours --engine spark")
        check_same_hashes(ours_client, same_db, ids, "ours --engine spark")
        flush(args.redis, FEAST_DB)
    if with_cluster:
        cluster.flush()
        results["ours-cluster"] = run_child("ours-cluster", workspace, CLUSTER)
        nodes = [cluster.node(port) for port in cluster.ports]
        check_key_count(nodes, rows, "ours on the cluster")
        check_same_hashes(ours_client, partial(cluster_hashes, cluster.url), ids,
                          "ours on the cluster", f"the {len(nodes)}-master cluster")  # fmt: skip
        cluster.flush()
    if with_feast:
        results["feast"] = run_child("feast", workspace)
        check_key_count([other_client], rows, "feast")
        check_same_hashes(ours_client, same_db, ids, "feast")
        flush(args.redis, FEAST_DB)
    results["ceiling"] = run_child("ceiling", workspace)
    check_key_count([other_client], rows, "ceiling")
    check_same_hashes(ours_client, same_db, ids, "ceiling")
    shutil.rmtree(root, ignore_errors=True)  # the 4M table needs the disk the 1M one held
    return results


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-materialize-"))
    sizes = sorted({rows for rows in (args.small_rows, args.rows, args.big_rows) if rows})
    try:
        with ExitStack() as stack:
            cluster = (
                None if args.skip_cluster else stack.enter_context(redis_cluster(root / CLUSTER))
            )
            runs = {
                rows: run_size(root / str(rows), rows, args, rows == args.rows, cluster)
                for rows in sizes
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if not args.keep_redis:
            flush(args.redis, OURS_DB)
            flush(args.redis, FEAST_DB)

    cases, verdicts = build_cases(args.rows, runs)
    console.rule()
    print_cases(console, "materialize: ours vs feast materialize and the Redis ceiling", cases,
                verdicts)  # fmt: skip
    write_results(args.output, "materialize", cases)
    console.print(f"wrote {args.output} in {time.perf_counter() - began:.0f} s total")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="entities in the main case")
    parser.add_argument(
        "--small-rows", type=int, default=100_000, help="entities in the small case (0 skips it)"
    )
    parser.add_argument(
        "--big-rows", type=int, default=4_000_000, help="entities in the memory case (0 skips it)"
    )
    parser.add_argument("--skip-feast", action="store_true", help="leave Feast out")
    parser.add_argument(
        "--skip-spark", action="store_true", help="leave out ours with --engine spark"
    )
    parser.add_argument(
        "--skip-cluster", action="store_true", help="leave out ours into a 3-master Redis Cluster"
    )
    parser.add_argument(
        "--redis",
        default=REDIS_URL,
        help=f"Redis server (no db); dbs {OURS_DB}/{FEAST_DB} are flushed",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument(
        "--keep-redis", action="store_true", help=f"leave dbs {OURS_DB}/{FEAST_DB} filled at exit"
    )
    # Internal: one materialization in a child process.
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--cluster-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows <= 0 or args.big_rows < 0 or args.small_rows < 0:
        parser.error("--rows must be positive, --small-rows and --big-rows non-negative")
    return args


if __name__ == "__main__":
    run_main(parse_args, child_main, run, lambda: console)
