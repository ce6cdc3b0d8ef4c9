"""Benchmark: our materializer against `feast materialize`, side by side, in one run.

Both read the same Parquet offline table and write the same feature view into the same Redis
server (ours into db 13, Feast into db 12), so the only difference is the code in between.
Each materialization runs in a child process of its own, so its peak RSS is its own.

Cases (written to bench/results/materialize.json):
  1. throughput at --rows entities (default 1M), ours vs Feast, rows/s;
  2. throughput of ours at --big-rows entities (default 4M);
  3. peak RSS at --rows, ours vs Feast;
  4. peak RSS of ours at --big-rows, which must stay flat (memory is bounded by the batch size).

The run fails loudly unless both stores hold byte-identical Redis hashes for a sample of
entities and Feast's `get_online_features` reads back the Parquet values from what we wrote.

The view is a plain `FeatureView`, not a `StreamFeatureView` with aggregations: Feast's local
compute engine cannot materialize time-window aggregations, so a plain view is the only kind
both sides can materialize.

    .venv/bin/python bench/materialize.py      # full run: ~6.5 min, ~11 GiB RAM for Feast
    .venv/bin/python bench/materialize.py --rows 50000 --big-rows 200000      # quick trial
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from common import BenchmarkError, print_cases, run_main, write_results
from common import run_child as common_run_child
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "materialize.json"

REDIS_URL = "redis://127.0.0.1:6379"
OURS_DB, FEAST_DB = 13, 12
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

    @property
    def offline_table(self) -> Path:
        return self.root / "offline" / VIEW

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    def settings(self, db: int):
        from featurestore.settings import Settings

        # A registry per store keeps the two runs' materialization records apart.
        return Settings(
            profile="services",
            project=PROJECT,
            data_dir=self.root / f"data-db{db}",
            feature_repo=self.repo,
            redis_url=f"{REDIS_URL}/{db}",
            registry_url=f"sqlite:///{self.root / f'registry-db{db}.db'}",
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


def prepare(root: Path, rows: int, dbs: list[int]) -> Workspace:
    from featurestore.feast_config import feature_store

    workspace = Workspace(root, rows)
    workspace.repo.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    path = write_offline(workspace.offline_table, rows)
    metadata = pq.read_metadata(path)
    console.print(
        f"  offline table: {metadata.num_rows:,} rows, {metadata.num_row_groups} row groups, "
        f"{path.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - started:.1f} s)"
    )
    for db in dbs:
        feature_store(workspace.settings(db)).apply(feast_objects(workspace.offline_table))
    return workspace


# ---------------------------------------------------------------------------------------------
# Children: one materialization each, reporting time and peak RSS
# ---------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux. Children (none expected) are included to be safe.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class CpuMeter:
    """CPU seconds of this process and of the Redis server over a block: where the time goes."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(REDIS_URL)

    def _redis_cpu(self) -> float:
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

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


def child_ours(workspace: Workspace) -> dict[str, Any]:
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize
    from featurestore.progress import row_progress

    settings = workspace.settings(OURS_DB)
    store = feature_store(settings)
    [view] = select_views(store, [VIEW])
    rss_before = current_rss_mib()
    with row_progress("ours: materialize", total=workspace.rows) as advance, CpuMeter() as meter:
        [result] = materialize(settings, store, [(view, START, END)], progress=advance)
    return {
        **meter.figures(),
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "rss_before_mib": rss_before,
        "batch_size": settings.materialize_batch_size,
    }


def child_feast(workspace: Workspace) -> dict[str, Any]:
    from featurestore.feast_config import feature_store

    store = feature_store(workspace.settings(FEAST_DB))
    store.get_feature_view(VIEW)  # registry read outside the timed part, as ours does
    rss_before = current_rss_mib()
    with CpuMeter() as meter:
        # What `feast materialize START END --views bench_features` runs.
        store.materialize(START, END, feature_views=[VIEW])
    return {**meter.figures(), "rss_before_mib": rss_before}


def describe(who: str, rows: int, result: dict[str, Any]) -> str:
    micros = 1e6 / rows
    return (
        f"  {who}: {rows / result['seconds']:,.0f} rows/s ({result['seconds']:.1f} s); CPU "
        f"{result['client_cpu_seconds'] * micros:.1f} µs/row in the process, "
        f"{result['redis_cpu_seconds'] * micros:.1f} µs/row in redis-server; peak RSS "
        f"{result['peak_rss_mib']:,.0f} MiB ({result['rss_before_mib']:,.0f} MiB before "
        "materializing)"
        + (f"; batch size {result['batch_size']:,}" if "batch_size" in result else "")
    )


def run_child(role: str, workspace: Workspace) -> dict[str, Any]:
    started = time.perf_counter()
    result = common_run_child(
        __file__, role, workspace.root / f"result-{role}.json",
        ["--workdir", str(workspace.root), "--rows", str(workspace.rows)],
    )
    result["wall_seconds"] = time.perf_counter() - started
    return result


def child_main(args: argparse.Namespace) -> None:
    workspace = Workspace(Path(args.workdir), args.rows)
    result = (child_ours if args.child == "ours" else child_feast)(workspace)
    result["peak_rss_mib"] = peak_rss_mib()
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


def check_key_count(client: redis.Redis, rows: int, who: str) -> None:
    found = client.dbsize()
    if found != rows:
        raise BenchmarkError(f"{who}: Redis db holds {found:,} keys, expected {rows:,}")


def check_same_hashes(ours: redis.Redis, feast: redis.Redis, ids: np.ndarray) -> None:
    keys = [redis_key(int(i)) for i in ids]
    ours_pipe, feast_pipe = ours.pipeline(transaction=False), feast.pipeline(transaction=False)
    for key in keys:
        ours_pipe.hgetall(key)
        feast_pipe.hgetall(key)
    mismatches = []
    for card_id, ours_hash, feast_hash in zip(ids, ours_pipe.execute(), feast_pipe.execute()):
        if not ours_hash or ours_hash != feast_hash:
            mismatches.append((int(card_id), ours_hash, feast_hash))
    if mismatches:
        card_id, ours_hash, feast_hash = mismatches[0]
        raise BenchmarkError(
            f"{len(mismatches)} of {len(ids)} sampled entities differ between ours (db "
            f"{OURS_DB}) and Feast (db {FEAST_DB}); first: card_id={card_id}\n"
            f"  ours:  {ours_hash!r}\n  feast: {feast_hash!r}"
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


def build_cases(
    rows: int, big_rows: int, ours: dict, feast: dict | None, big: dict | None
) -> tuple[list[dict], list[bool | None]]:
    anchor_name = "feast materialize (Feast 0.67, local compute engine, Redis online store)"
    shape = f"x {len(FEATURES)} features"
    ours_rate = rows / ours["seconds"]
    feast_rate = rows / feast["seconds"] if feast else None
    cases: list[dict] = []
    verdicts: list[bool | None] = []

    throughput = ratio(ours_rate, feast_rate)
    cases.append(
        {
            "case": f"materialize {rows_label(rows)} entities {shape}",
            "metric": "throughput",
            "unit": "rows/s",
            "ours": round(ours_rate),
            "anchor": round(feast_rate) if feast_rate else None,
            "anchor_name": anchor_name,
            "ratio": throughput,
            "target": f">= {THROUGHPUT_TARGET:g}x",
        }
    )
    verdicts.append(None if throughput is None else throughput >= THROUGHPUT_TARGET)

    if big:
        big_rate = big_rows / big["seconds"]
        cases.append(
            {
                "case": f"materialize {rows_label(big_rows)} entities {shape}",
                "metric": "throughput",
                "unit": "rows/s",
                "ours": round(big_rate),
                "anchor": None,
                "anchor_name": None,
                "ratio": None,
                "target": f"flat vs {rows_label(rows)} (>= {BIG_THROUGHPUT_TARGET:g}x its rows/s)",
            }
        )
        verdicts.append(big_rate >= BIG_THROUGHPUT_TARGET * ours_rate)

    cases.append(
        {
            "case": f"materialize {rows_label(rows)} entities {shape}",
            "metric": "peak RSS",
            "unit": "MiB",
            "ours": round(ours["peak_rss_mib"], 1),
            "anchor": round(feast["peak_rss_mib"], 1) if feast else None,
            "anchor_name": anchor_name,
            "ratio": ratio(feast["peak_rss_mib"], ours["peak_rss_mib"]) if feast else None,
            "target": "> 1x (below Feast)",
        }
    )
    verdicts.append(None if not feast else feast["peak_rss_mib"] > ours["peak_rss_mib"])

    if big:
        cases.append(
            {
                "case": f"materialize {rows_label(big_rows)} entities {shape}",
                "metric": "peak RSS",
                "unit": "MiB",
                "ours": round(big["peak_rss_mib"], 1),
                "anchor": None,
                "anchor_name": None,
                "ratio": None,
                "target": f"flat vs {rows_label(rows)} (<= {FLAT_RSS_TARGET:g}x)",
            }
        )
        verdicts.append(big["peak_rss_mib"] <= FLAT_RSS_TARGET * ours["peak_rss_mib"])
    return cases, verdicts


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def flush(db: int) -> redis.Redis:
    if db == 0:
        raise BenchmarkError("refusing to touch Redis db 0")
    client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    client.flushdb()
    return client


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-materialize-"))
    ours_client, feast_client = flush(OURS_DB), flush(FEAST_DB)
    try:
        console.rule(f"[bold]{rows_label(args.rows)} entities x {len(FEATURES)} features")
        dbs = [OURS_DB] if args.skip_feast else [OURS_DB, FEAST_DB]
        main = prepare(root / "main", args.rows, dbs)

        flush(OURS_DB)
        ours = run_child("ours", main)
        console.print(describe("ours ", args.rows, ours))
        if ours["rows_written"] != args.rows:
            raise BenchmarkError(f"ours wrote {ours['rows_written']:,} rows of {args.rows:,}")
        check_key_count(ours_client, args.rows, "ours")

        feast = None
        if not args.skip_feast:
            flush(FEAST_DB)
            feast = run_child("feast", main)
            console.print(describe("feast", args.rows, feast))
            check_key_count(feast_client, args.rows, "feast")

        ids = sample_ids(args.rows)
        if feast is not None:
            check_same_hashes(ours_client, feast_client, ids)
            console.print(
                f"  [green]ok[/] HGETALL byte-identical in db {OURS_DB} (ours) and db "
                f"{FEAST_DB} (feast) for {len(ids):,} sampled entities; {args.rows:,} keys each"
            )
        check_online_values(main, OURS_DB, ids)
        flush(FEAST_DB)

        big = None
        if args.big_rows:
            console.rule(f"[bold]{rows_label(args.big_rows)} entities x {len(FEATURES)} features")
            bigger = prepare(root / "big", args.big_rows, [OURS_DB])
            flush(OURS_DB)
            big = run_child("ours", bigger)
            console.print(describe("ours ", args.big_rows, big))
            if big["rows_written"] != args.big_rows:
                raise BenchmarkError(
                    f"ours wrote {big['rows_written']:,} rows of {args.big_rows:,}"
                )
            check_key_count(ours_client, args.big_rows, "ours")
            check_online_values(bigger, OURS_DB, sample_ids(args.big_rows))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if not args.keep_redis:
            flush(OURS_DB)
            flush(FEAST_DB)

    cases, verdicts = build_cases(args.rows, args.big_rows, ours, feast, big)
    console.rule()
    print_cases(console, "materialize: ours vs feast materialize", cases, verdicts)
    write_results(args.output, "materialize", cases)
    console.print(f"wrote {args.output} in {time.perf_counter() - began:.0f} s total")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="entities in the main case")
    parser.add_argument(
        "--big-rows", type=int, default=4_000_000, help="entities in the memory case (0 skips it)"
    )
    parser.add_argument("--skip-feast", action="store_true", help="measure ours only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument(
        "--keep-redis", action="store_true", help=f"leave dbs {OURS_DB}/{FEAST_DB} filled at exit"
    )
    # Internal: one materialization in a child process.
    parser.add_argument("--child", choices=["ours", "feast"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows <= 0 or args.big_rows < 0:
        parser.error("--rows must be positive and --big-rows non-negative")
    return args


if __name__ == "__main__":
    run_main(parse_args, child_main, run, lambda: console)
