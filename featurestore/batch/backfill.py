"""Spark backfill: raw events -> one feature row per event for every declared windowed aggregation.

The job is generated from the registry definitions (`featurestore.definitions`) and the shared
window semantics (`featurestore.aggregations`); it names no feature and no window itself.
It reads the raw partitions of [start - longest window, end) so every window is complete,
emits rows for events in [start, end), and swaps the output partitions in atomically, so a
rerun over the same range replaces exactly those days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from featurestore import offline
from featurestore.aggregations import SUM_SCALE, WindowedAggregation
from featurestore.definitions import ViewDefinition
from featurestore.errors import DefinitionError, InputDataError, RangeError

_TS_US = "__event_time_us"


@dataclass(frozen=True)
class BackfillResult:
    view: str
    rows: int
    partitions: list[date]


def _units(column: str) -> Column:
    return F.floor(F.col(column) * float(SUM_SCALE) + 0.5)


def _aggregate(agg: WindowedAggregation, keys: list[str]) -> Column:
    window = Window.partitionBy(*keys).orderBy(_TS_US).rangeBetween(agg.lower_offset_us, 0)
    value = F.col(agg.column)
    if agg.function == "count":
        return F.count(value).over(window)
    if agg.function == "count_distinct":
        return F.size(F.collect_set(value).over(window)).cast("long")
    if agg.function in ("max", "min"):
        fn = F.max if agg.function == "max" else F.min
        return fn(value).over(window).cast("double")
    total = F.sum(_units(agg.column)).over(window).cast("double") / float(SUM_SCALE)
    if agg.function == "sum":
        return total
    count = F.count(value).over(window)
    return F.when(count > 0, total / count.cast("double"))


def required_raw_schema(view: ViewDefinition) -> pa.Schema:
    """The raw columns `view` reads, typed as its stream source declares them."""
    assert view.raw_schema is not None
    declared = offline.schema_from_ddl(view.raw_schema)
    names = [k.name for k in view.join_keys] + [view.raw_events.timestamp_field]
    names += [a.column for a in view.aggregations if a.column not in names]
    missing = [n for n in names if declared.get_field_index(n) < 0]
    if missing:
        raise DefinitionError(
            f"feature view {view.name!r} reads columns {missing} that its source schema "
            f"{view.raw_schema!r} does not declare"
        )
    return pa.schema([declared.field(n) for n in names])


def feature_frame(raw: DataFrame, view: ViewDefinition, start: datetime, end: datetime) -> DataFrame:
    """Feature rows for the events of `raw` in [start, end) (raw must cover the lookback)."""
    keys = [k.name for k in view.join_keys]
    ts = view.raw_events.timestamp_field
    events = raw.withColumn(_TS_US, F.unix_micros(F.col(ts)))
    features = [_aggregate(a, keys).alias(a.name) for a in view.aggregations]
    rows = events.select(*keys, F.col(ts), F.col(_TS_US), *features)
    rows = rows.where((F.col(ts) >= F.lit(start)) & (F.col(ts) < F.lit(end)))
    return rows.select(
        *keys,
        F.col(ts).alias(view.offline.timestamp_field),
        *[F.col(a.name) for a in view.aggregations],
    )


def raw_inputs(view: ViewDefinition, start: date, end: date) -> list[str]:
    """The validated raw files a backfill of `view` over [start, end) reads, lookback included."""
    if not view.is_aggregated or view.raw is None:
        raise DefinitionError(f"feature view {view.name!r} has no aggregations to backfill")
    lookback = (_midnight(start) - view.max_window).date()
    files = offline.data_files(view.raw, lookback, end)
    if not any(f.parent.name >= f"{offline.PARTITION}={start}" for f in files):
        raise InputDataError(
            f"raw source {view.raw.name!r}: no events between {start} and {end} in {view.raw.path}"
        )
    if offline.validate_files(files, view.raw, required_raw_schema(view), for_spark=True) == 0:
        raise InputDataError(f"raw source {view.raw.name!r}: the files for {start} to {end} are empty")
    return [str(f) for f in files]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def backfill_view(
    spark: SparkSession,
    view: ViewDefinition,
    files: list[str],
    start: date,
    end: date,
    created: datetime,
) -> BackfillResult:
    start_ts, end_ts = _midnight(start), _midnight(end)
    raw = spark.read.parquet(*files).where(
        F.col(view.raw_events.timestamp_field) >= F.lit(start_ts - view.max_window)
    )
    rows = feature_frame(raw, view, start_ts, end_ts)
    created_column = view.offline.created_timestamp_column
    if created_column:
        rows = rows.withColumn(created_column, F.lit(created))
    keys = [k.name for k in view.join_keys]
    ts = view.offline.timestamp_field
    rows = rows.withColumn(offline.PARTITION, F.date_format(F.col(ts), "yyyy-MM-dd"))
    # One file per day, sorted by entity then time: materialization then meets each entity in
    # one contiguous run, and readers can prune by row group.
    rows = rows.repartition(offline.PARTITION).sortWithinPartitions(*keys, ts)

    with offline.staged_partitions(view.offline.path) as staging:
        rows.write.partitionBy(offline.PARTITION).parquet(str(staging))
        written_rows = offline.validate_files(
            staging.glob(f"{offline.PARTITION}=*/*.parquet"), view.offline, pa.schema([])
        )
        partitions = offline.swap_in(staging, view.offline.path, start, end)
    return BackfillResult(view.name, written_rows, partitions)


def backfill(
    spark: Callable[[], SparkSession], views: list[ViewDefinition], start: date, end: date
) -> list[BackfillResult]:
    """Backfill every view for the days [start, end).

    All inputs are validated before Spark starts (`spark` is called only then) and before any
    write, so bad input fails fast and leaves the offline store as it was.
    """
    if end <= start:
        raise RangeError(f"end {end} must be after start {start} (the range is [start, end))")
    inputs = {view.name: raw_inputs(view, start, end) for view in views}
    created = datetime.now(UTC)
    session = spark()
    return [backfill_view(session, v, inputs[v.name], start, end, created) for v in views]
