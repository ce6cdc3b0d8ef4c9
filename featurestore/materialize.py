"""Materialization: offline feature tables -> online store, latest row per entity.

Reads the offline Parquet of each view in record batches (memory bounded by the batch size, not
the table), keeps each batch's latest row per entity (event time, then created time), and writes
it in Feast's online layout. Offline tables are sorted by entity within each day, so an entity
meets the writer about once per day; across batches the writer's never-older rule keeps the
newest row. The interval is then recorded in the registry, as `feast materialize` does.

The Spark engine (`materialize_spark`) runs the same reader and writer in Spark tasks, a share
of the row groups each; the same never-older rule makes their order irrelevant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import redis
from feast import FeatureStore
from feast.types import from_feast_to_pyarrow_type

from featurestore import offline
from featurestore.definitions import ViewDefinition
from featurestore.errors import FeatureStoreError, RangeError
from featurestore.online.cluster_writer import ClusterFeatureWriter
from featurestore.online.feast_layout import RedisLayout
from featurestore.online.feast_writer import FeastFeatureWriter
from featurestore.online.redis_writer import RedisFeatureWriter
from featurestore.settings import Settings, redis_nodes
from featurestore.timestamps import to_utc


class FeatureWriter(Protocol):
    def write(self, table: pa.Table) -> int: ...
    def flush(self) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class MaterializeResult:
    view: str
    rows_read: int
    rows_written: int
    seconds: float


def redis_client(settings: Settings) -> redis.Redis:
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(
        settings.redis_url,
        password=password,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )


def writer_for(settings: Settings, store: FeatureStore, view: ViewDefinition) -> FeatureWriter:
    if settings.online_store_kind == "redis":
        return redis_writer(settings, RedisLayout(view, store.config))
    return FeastFeatureWriter(store, view)


def redis_writer(settings: Settings, layout: RedisLayout) -> FeatureWriter:
    """The never-older writer of `layout`'s view on the Redis (or Redis Cluster) of `settings`:
    needs no FeatureStore, so a Spark executor builds one from what its task was sent."""
    if settings.redis_type == "redis_cluster":
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        return ClusterFeatureWriter(
            redis_nodes(settings.redis_url),
            layout,
            settings.redis_key_ttl_seconds,
            password=password,
            tls=urlsplit(settings.redis_url).scheme == "rediss",
            timeout=settings.redis_timeout_seconds,
        )
    return RedisFeatureWriter(redis_client(settings), layout, settings.redis_key_ttl_seconds)


def required_schema(view: ViewDefinition) -> pa.Schema:
    fields = {view.offline.timestamp_field: pa.timestamp("us", tz="UTC")}
    for column in (*view.join_keys, *view.features):
        fields[column.name] = from_feast_to_pyarrow_type(column.dtype)
    return pa.schema(list(fields.items()))


def latest_per_entity(table: pa.Table, view: ViewDefinition) -> pa.Table:
    """Each entity's newest row in `table` (event time, then created time, decides)."""
    keys = [k.name for k in view.join_keys]
    order = [(k, "ascending") for k in keys] + [(view.offline.timestamp_field, "ascending")]
    if view.offline.created_timestamp_column:
        order.append((view.offline.created_timestamp_column, "ascending"))
    table = table.take(pc.sort_indices(table, sort_keys=order))
    last = np.zeros(table.num_rows, dtype=bool)
    last[-1:] = True
    for key in keys:
        values = table.column(key).to_numpy(zero_copy_only=False)
        last[:-1] |= values[1:] != values[:-1]
    return table.filter(pa.array(last))


def offline_files(
    view: ViewDefinition, start: datetime, end: datetime, *, required: bool = True
) -> list[Path]:
    """The view's validated offline files that may hold rows with event time in [start, end)."""
    last_day = (end - timedelta(microseconds=1)).date()
    files = offline.data_files(
        view.offline, start.date(), offline.day_after(last_day), required=required
    )
    offline.validate_files(files, view.offline, required_schema(view))
    return files


def offline_batches(
    view: ViewDefinition, files: list[Path], start: datetime, end: datetime, batch_size: int
) -> Iterator[pa.Table]:
    """Record batches of the view's offline rows with event time in [start, end)."""
    for row_group in offline_row_groups(view, files, start, end):
        yield from row_group_batches(view, row_group, start, end, batch_size)


def _in_range(view: ViewDefinition, start: datetime, end: datetime) -> ds.Expression:
    ts = ds.field(view.offline.timestamp_field)
    return (ts >= pa.scalar(start, pa.timestamp("us", tz="UTC"))) & (
        ts < pa.scalar(end, pa.timestamp("us", tz="UTC"))
    )


def offline_row_groups(
    view: ViewDefinition, files: list[Path], start: datetime, end: datetime
) -> Iterator[ds.ParquetFileFragment]:
    """The row groups of `files` (one fragment each, in file order) whose statistics do not rule
    out event times in [start, end): only footers are read."""
    in_range = _in_range(view, start, end)
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    for fragment in dataset.get_fragments(filter=in_range):
        yield from fragment.split_by_row_group(filter=in_range)


def row_group_batches(
    view: ViewDefinition,
    row_group: ds.ParquetFileFragment,
    start: datetime,
    end: datetime,
    batch_size: int,
) -> Iterator[pa.Table]:
    """Record batches of one row group's rows with event time in [start, end)."""
    columns = [k.name for k in view.join_keys] + [view.offline.timestamp_field]
    if view.offline.created_timestamp_column:
        columns.append(view.offline.created_timestamp_column)
    columns += [f.name for f in view.features if f.name not in columns]
    # One row group at a time, no read-ahead: a whole-file scan lets Arrow buffer most of the
    # file ahead of a slower consumer, so memory would grow with the file instead of the batch.
    for batch in row_group.to_batches(
        columns=columns,
        filter=_in_range(view, start, end),
        batch_size=batch_size,
        batch_readahead=0,
        fragment_readahead=0,
        use_threads=False,
    ):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def write_latest(
    writer: FeatureWriter, view: ViewDefinition, batches: Iterable[pa.Table],
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Each batch's latest row per entity through `writer`, then flushed and closed; returns
    (rows read, rows written). Both engines write through this (Spark: in each task)."""
    rows_read = rows_written = 0
    try:
        for batch in batches:
            rows_read += batch.num_rows
            rows_written += writer.write(latest_per_entity(batch, view))
            if progress:
                progress(batch.num_rows)
        rows_written += writer.flush()
    finally:
        writer.close()
    return rows_read, rows_written


Engine = Literal["local", "spark"]
ENGINES: tuple[Engine, ...] = ("local", "spark")


def materialize_view(
    settings: Settings,
    store: FeatureStore,
    view: ViewDefinition,
    files: list[Path],
    start: datetime,
    end: datetime,
    progress: Callable[[int], None] | None = None,
    engine: Engine = "local",
) -> MaterializeResult:
    began = time.perf_counter()
    if engine == "spark":
        from featurestore.materialize_spark import write_with_spark

        layout = RedisLayout(view, store.config)
        rows_read, rows_written = write_with_spark(settings, layout, files, start, end, progress)
    else:
        batches = offline_batches(view, files, start, end, settings.materialize_batch_size)
        writer = writer_for(settings, store, view)
        rows_read, rows_written = write_latest(writer, view, batches, progress)
    store.registry.apply_materialization(view.feast_view, settings.project, start, end)
    return MaterializeResult(view.name, rows_read, rows_written, time.perf_counter() - began)


def materialize(
    settings: Settings,
    store: FeatureStore,
    ranges: list[tuple[ViewDefinition, datetime, datetime]],
    progress: Callable[[int], None] | None = None,
    *,
    incremental: bool = False,
    engine: Engine = "local",
) -> list[MaterializeResult]:
    """Materialize each (view, start, end); every input is validated before anything is written.

    `incremental` runs are scheduled, so a view with nothing new since its last run is skipped
    (result with 0 rows) instead of being an error. `engine` "spark" reads and writes in Spark
    tasks (`materialize_spark`), into Redis only.
    """
    check_engine(settings, engine)
    if incremental:
        ranges = [(v, start, end) for v, start, end in ranges if to_utc(start) < to_utc(end)]
    checked = [(view, *check_range(start, end)) for view, start, end in ranges]
    inputs = [
        (view, offline_files(view, start, end, required=not incremental), start, end)
        for view, start, end in checked
    ]
    return [
        materialize_view(settings, store, view, files, start, end, progress, engine)
        if files
        else MaterializeResult(view.name, 0, 0, 0.0)
        for view, files, start, end in inputs
    ]


def check_engine(settings: Settings, engine: str) -> None:
    if engine not in ENGINES:
        raise FeatureStoreError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    # Spark tasks write concurrently: only Redis's atomic never-older check keeps that right
    # (Feast's own stores are read, then written, by the writer: not atomic).
    if engine == "spark" and settings.online_store_kind != "redis":
        raise FeatureStoreError(
            "materialize --engine spark writes to Redis; this profile's online store is "
            f"{settings.online_store_kind!r} (use --engine local, or the services profile)"
        )


def check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The range in UTC (day partitions are UTC days), checked to be non-empty."""
    start, end = to_utc(start, "start"), to_utc(end, "end")
    if end <= start:
        raise RangeError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    return start, end


def incremental_start(view: ViewDefinition, end: datetime) -> datetime:
    """Where an incremental run of `view` starts: its last materialized end, else end - ttl."""
    last = view.feast_view.most_recent_end_time
    if last is not None:
        return to_utc(last)
    return end - (view.ttl if view.ttl > timedelta(0) else timedelta(days=1))
