"""Point-in-time export: an entity table with each row's feature values as of its event time.

What to export is read from the registry: a feature service, or `view:feature` references as
Feast takes them. Each view's offline Parquet is read for the days and columns the entity table
needs only, joined by the rules of `featurestore.pointintime` (engine "local") or by the same
rules in Spark (engine "spark"), on-demand features are computed by Feast's own transformation of
their view, and the result is written atomically as one Parquet file: the entity table's rows in
its order, all its columns, then the features under Feast's names (full_feature_names=False).
The file's schema metadata holds a JSON description of the export (`EXPORT_METADATA_KEY`).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from feast import FeatureStore
from feast.errors import DataSourceObjectNotFoundException, FeatureServiceNotFoundException
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.type_map import feast_value_type_to_pa
from feast.types import from_feast_to_pyarrow_type

from featurestore import offline, pointintime
from featurestore.definitions import (
    Feature,
    Table,
    ViewDefinition,
    check_plain_projection,
    load_views,
    on_demand_feature,
    parse_reference,
    service_references,
    view_feature,
)
from featurestore.errors import (
    DefinitionError,
    FeatureStoreError,
    InputDataError,
    RangeError,
    UnknownFeatureViewError,
    UnknownNameError,
)
from featurestore.settings import Settings

EXPORT_METADATA_KEY = "featurestore.export"
TIMESTAMP_FIELD = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
TOP_CATEGORIES = 50
# The offline tables' event times, as every writer of them stores them.
_ROW_UNIT = "us"
_ROW_TIMESTAMP = pa.timestamp(_ROW_UNIT, tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The raw sources the training entity table is made of (names in feature_repo/).
TRANSACTIONS_SOURCE = "transactions_raw"
LABELS_SOURCE = "transaction_labels"
LABELED_COLUMNS = ("transaction_id", "card_id", "merchant_id", "amount", TIMESTAMP_FIELD)
LABEL_COLUMN = "is_fraud"

Engine = Literal["local", "spark"]
ENGINES: tuple[Engine, ...] = ("local", "spark")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ViewRequest:
    """A feature view to join: the features the export shows or an on-demand view reads."""

    view: ViewDefinition
    features: tuple[Feature, ...]

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.view.join_keys]


@dataclass(frozen=True)
class OnDemandRequest:
    view: OnDemandFeatureView
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class ExportPlan:
    """What an export reads and writes, resolved from the registry."""

    feature_service: str | None
    references: tuple[str, ...]
    views: tuple[ViewRequest, ...]
    on_demand: tuple[OnDemandRequest, ...]
    # (view name, feature) of each output column, in output order; the column is the feature.
    outputs: tuple[tuple[str, Feature], ...]
    join_keys: tuple[Feature, ...]

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for _, feature in self.outputs]


@dataclass(frozen=True)
class ExportResult:
    export_id: str
    path: Path
    rows: int
    features: tuple[str, ...]
    engine: Engine
    seconds: float


# ---------------------------------------------------------------------------------------------
# What to export


def plan_export(
    store: FeatureStore,
    *,
    feature_service: str | None = None,
    features: Iterable[str] | None = None,
) -> ExportPlan:
    """Resolve a feature service or `view:feature` references; unknown names are errors."""
    features = list(features or [])
    if (feature_service is None) == (not features):
        raise FeatureStoreError(
            "give either a feature service or feature references (view:feature), exactly one"
        )
    if feature_service is not None:
        references = _service_references(store, feature_service)
    else:
        references = features
    views = load_views(store)
    on_demand_views = {v.name: v for v in store.list_on_demand_feature_views()}

    needed: dict[str, dict[str, Feature]] = {}
    on_demand: dict[str, dict[str, Feature]] = {}
    outputs: list[tuple[str, Feature]] = []
    for reference in references:
        view_name, feature_name = parse_reference(reference)
        if view_name in views:
            feature = view_feature(views[view_name], feature_name)
            needed.setdefault(view_name, {})[feature.name] = feature
        elif view_name in on_demand_views:
            odfv = on_demand_views[view_name]
            feature = on_demand_feature(odfv, feature_name)
            on_demand.setdefault(view_name, {})[feature.name] = feature
            for source in _on_demand_sources(odfv, views):
                for dependency in source.features:
                    needed.setdefault(source.name, {})[dependency.name] = Feature(
                        dependency.name, dependency.dtype
                    )
        else:
            known = sorted([*views, *on_demand_views])
            raise UnknownFeatureViewError(
                f"feature reference {reference!r}: unknown feature view {view_name!r}; "
                f"the registry has: {known or 'none'}"
            )
        outputs.append((view_name, feature))
    _check_collisions(outputs, references)

    view_requests = tuple(
        ViewRequest(views[name], tuple(wanted.values())) for name, wanted in needed.items()
    )
    join_keys: dict[str, Feature] = {}
    for request in view_requests:
        for key in request.view.join_keys:
            join_keys.setdefault(key.name, key)
    return ExportPlan(
        feature_service=feature_service,
        references=tuple(references),
        views=view_requests,
        on_demand=tuple(
            OnDemandRequest(on_demand_views[name], tuple(wanted.values()))
            for name, wanted in on_demand.items()
        ),
        outputs=tuple(outputs),
        join_keys=tuple(join_keys.values()),
    )


def _service_references(store: FeatureStore, name: str) -> list[str]:
    try:
        service = store.get_feature_service(name)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise UnknownNameError(
            f"unknown feature service {name!r}; the registry has: {known or 'none'}"
        ) from None
    return service_references(service)


def _on_demand_sources(view: OnDemandFeatureView, views: dict[str, ViewDefinition]) -> list[Any]:
    sources = list(view.source_feature_view_projections.values())
    for source in sources:
        check_plain_projection(source, f"on-demand feature view {view.name!r}")
        if source.name not in views:
            raise DefinitionError(
                f"on-demand feature view {view.name!r} reads {source.name!r}, which is not a "
                "feature view with an offline table"
            )
    return sources


def _check_collisions(outputs: list[tuple[str, Feature]], references: list[str]) -> None:
    seen: dict[str, list[str]] = {}
    for reference, (_, feature) in zip(references, outputs):
        seen.setdefault(feature.name, []).append(reference)
    collided = [refs for refs in seen.values() if len(refs) > 1]
    if collided:
        raise FeatureStoreError(
            f"feature references {collided[0]} give the same column name "
            f"{collided[0][0].partition(':')[2]!r}; request each feature name once"
        )


# ---------------------------------------------------------------------------------------------
# The entity table


@dataclass(frozen=True)
class Entities:
    """The entity table as given, with its join keys typed as declared."""

    table: pa.Table
    keys: dict[str, pa.Array]

    @property
    def times(self) -> pa.Array:
        return self.table.column(TIMESTAMP_FIELD).combine_chunks()


def read_entities(path: Path) -> pa.Table:
    if not Path(path).exists():
        raise InputDataError(f"entity table {path} does not exist")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"entity table {path} is not a readable Parquet file ({exc})") from exc


def check_entities(table: pa.Table, plan: ExportPlan) -> Entities:
    """The entity table's problems, all named at once, before anything is read or written."""
    problems = []
    columns = set(table.column_names)
    if TIMESTAMP_FIELD not in columns:
        problems.append(f"no column {TIMESTAMP_FIELD!r} (the time of each row)")
    else:
        times = table.column(TIMESTAMP_FIELD)
        if not pa.types.is_timestamp(times.type):
            problems.append(f"column {TIMESTAMP_FIELD!r} is {times.type}, expected a timestamp")
        elif times.null_count:
            problems.append(f"column {TIMESTAMP_FIELD!r} has {times.null_count:,} null value(s)")
    keys = {}
    for key in plan.join_keys:
        expected = from_feast_to_pyarrow_type(key.dtype)
        if key.name not in columns:
            problems.append(f"no column {key.name!r} (join key, {expected})")
            continue
        column = table.column(key.name)
        cast = _key_column(column, expected)
        if cast is None:
            problems.append(f"column {key.name!r} is {column.type}, expected {expected} (join key)")
        elif column.null_count:
            problems.append(
                f"column {key.name!r} has {column.null_count:,} null value(s) (join key)"
            )
        else:
            keys[key.name] = cast
    for request in plan.on_demand:
        for name, value_type in request.view.get_request_data_schema().items():
            of_view = f"request field of on-demand view {request.view.name!r}"
            expected = feast_value_type_to_pa(value_type)
            if name not in columns:
                problems.append(f"no column {name!r} ({of_view})")
            elif not _holds(table.column(name).type, expected):
                problems.append(
                    f"column {name!r} is {table.column(name).type}, expected {expected} ({of_view})"
                )
    clashing = sorted(columns.intersection(plan.feature_names))
    if clashing:
        problems.append(f"columns {clashing} have the names of exported features")
    if not table.num_rows:
        problems.append("it has no rows (nothing to export)")
    if problems:
        raise InputDataError("entity table: " + "; ".join(problems))
    return Entities(table, keys)


def _holds(found: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a request field of type `found` holds values of `expected` as they are: integers
    for a float field, any integer width, large strings; never booleans for numbers."""
    if found == expected:
        return True
    if pa.types.is_floating(expected):
        return pa.types.is_floating(found) or pa.types.is_integer(found)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found)
    if pa.types.is_string(expected):
        return pa.types.is_large_string(found)
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found)
    return False


def _key_column(column: pa.ChunkedArray, expected: pa.DataType) -> pa.Array | None:
    """The key column as `expected`, if its type holds the same values (int32 for int64, ...)."""
    found = column.type
    if found == expected:
        return column.combine_chunks()
    if pa.types.is_integer(expected) and pa.types.is_integer(found):
        try:
            return pc.cast(column, expected).combine_chunks()
        except pa.ArrowInvalid:
            return None
    if pa.types.is_string(expected) and pa.types.is_large_string(found):
        return pc.cast(column, expected).combine_chunks()
    return None


# ---------------------------------------------------------------------------------------------
# Offline rows


def _row_schema(request: ViewRequest) -> pa.Schema:
    table = request.view.offline
    fields = [(k.name, from_feast_to_pyarrow_type(k.dtype)) for k in request.view.join_keys]
    fields.append((table.timestamp_field, _ROW_TIMESTAMP))
    if table.created_timestamp_column:
        fields.append((table.created_timestamp_column, _ROW_TIMESTAMP))
    fields += [(f.name, from_feast_to_pyarrow_type(f.dtype)) for f in request.features]
    return pa.schema(fields)


def _offline_files(
    request: ViewRequest, lowest: int, highest: int, *, for_spark: bool = False
) -> list[Path]:
    """The view's validated offline files of the days holding event times [lowest, highest] µs."""
    table = request.view.offline
    files = offline.data_files(
        table, _day(lowest), offline.day_after(_day(highest)), required=False
    )
    offline.validate_files(files, table, _row_schema(request), for_spark=for_spark)
    return files


_FIRST_MICROS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def _day(micros: int) -> date:
    """The UTC day of `micros`; the first day datetime holds for anything before it (a lower
    bound a ttl puts before year 1, or none: INT64_MIN)."""
    if micros < _FIRST_MICROS:
        return date.min
    return (_EPOCH + timedelta(microseconds=micros)).date()


def _offline_rows(request: ViewRequest, files: list[Path], lowest: int, highest: int) -> pa.Table:
    """The view's offline rows with event time in [lowest, highest] µs, needed columns only."""
    schema = _row_schema(request)
    if not files:
        return schema.empty_table()
    ts = ds.field(request.view.offline.timestamp_field)
    in_range = ts <= pa.scalar(highest, _ROW_TIMESTAMP)
    if lowest != pointintime.INT64_MIN:
        in_range &= ts >= pa.scalar(lowest, _ROW_TIMESTAMP)
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    return dataset.to_table(filter=in_range)


# ---------------------------------------------------------------------------------------------
# Joins: each yields, per chunk of entity rows, the views' features aligned with those rows

Joined = dict[tuple[str, str], pa.Array]
# Entity rows per chunk: one output row group, and the unit the writer thread overlaps with.
CHUNK_ROWS = 131_072


def _chunk_starts(rows: int) -> range:
    return range(0, rows, CHUNK_ROWS)


def _join_local(plan: ExportPlan, entities: Entities, progress: Progress) -> Iterator[Joined]:
    """Each view's rows read and sorted once (two views at a time); then each chunk looked up."""
    with ThreadPoolExecutor(2) as pool:
        prepared = list(pool.map(lambda r: _prepare_view(r, entities, progress), plan.views))
    for start in _chunk_starts(entities.table.num_rows):
        stop = start + CHUNK_ROWS
        joined: Joined = {}
        for request, rows, index, lower, upper in prepared:
            keys = [entities.keys[k].slice(start, CHUNK_ROWS) for k in request.key_names]
            found = index.lookup(keys, lower[start:stop], upper[start:stop])
            picked = pa.array(found, mask=found == pointintime.NO_MATCH)
            for feature in request.features:
                joined[request.view.name, feature.name] = rows.column(feature.name).take(picked)
        yield joined


def _prepare_view(
    request: ViewRequest, entities: Entities, progress: Progress
) -> tuple[ViewRequest, pa.Table, pointintime.AsOfIndex, np.ndarray, np.ndarray]:
    """The view's rows the entity table needs, their point-in-time index, the rows' bounds."""
    view = request.view
    progress(f"reading {view.name}")
    lower, upper = pointintime.bounds(entities.times, view.ttl, _ROW_UNIT)
    files = _offline_files(request, int(lower.min()), int(upper.max()))
    rows = _offline_rows(request, files, int(lower.min()), int(upper.max()))
    ts, valid = pointintime.timestamp_ints(rows.column(view.offline.timestamp_field))
    created = None
    if view.offline.created_timestamp_column:
        column = rows.column(view.offline.created_timestamp_column)
        created_ts, created_valid = pointintime.timestamp_ints(column)
        created = np.where(created_valid, created_ts, pointintime.INT64_MIN)
    index = pointintime.AsOfIndex([rows.column(k) for k in request.key_names], ts, created, valid)
    # One chunk per column: taking from many chunks is several times slower.
    features = rows.select([f.name for f in request.features]).combine_chunks()
    return request, features, index, lower, upper


def _join_spark(
    settings: Settings, plan: ExportPlan, entities: Entities, progress: Progress
) -> Iterator[Joined]:
    """The same join in Spark: entity rows sorted among the view's rows by key and time.

    Per key, rows and entity rows are ordered by (time, rows before entity rows, created), so the
    last row before an entity row is the latest with `ts <= t`, ties going to the greatest
    created time; the ttl bound is then checked on that row. One sort per view, no range join.
    Rows equal in key, time and created time are the one case the engines may settle apart:
    Spark takes any of them, the local engine the later in file order.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from featurestore.batch.spark import spark_session

    joined: Joined = {}
    spark = None
    row_ids = pa.array(np.arange(entities.table.num_rows, dtype=np.int64))
    for request in plan.views:
        view = request.view
        progress(f"joining {view.name} with Spark")
        lower, upper = pointintime.bounds(entities.times, view.ttl, _ROW_UNIT)
        files = _offline_files(request, int(lower.min()), int(upper.max()), for_spark=True)
        if not files:
            for feature in request.features:
                joined[view.name, feature.name] = pa.nulls(
                    entities.table.num_rows, from_feast_to_pyarrow_type(feature.dtype)
                )
            continue
        spark = spark or spark_session(settings)
        keys = request.key_names
        ts_column, created_column = (
            view.offline.timestamp_field,
            view.offline.created_timestamp_column,
        )
        event_micros = F.unix_micros(F.col(ts_column))
        in_range = event_micros <= F.lit(int(upper.max()))
        if int(lower.min()) != pointintime.INT64_MIN:
            in_range &= event_micros >= F.lit(int(lower.min()))
        rows = (
            spark.read.parquet(*[str(f) for f in files])
            .where(in_range)
            .select(
                *keys,
                event_micros.alias("__fs_ts"),
                F.lit(0).alias("__fs_kind"),
                (
                    F.coalesce(F.unix_micros(F.col(created_column)), F.lit(pointintime.INT64_MIN))
                    if created_column
                    else F.lit(pointintime.INT64_MIN)
                ).alias("__fs_created"),
                F.struct(
                    event_micros.alias("__fs_ts"),
                    *[F.col(f.name) for f in request.features],
                ).alias("__fs_value"),
                F.lit(None).cast("long").alias("__fs_row"),
                F.lit(None).cast("long").alias("__fs_lower"),
            )
        )
        entity_rows = spark.createDataFrame(
            pa.table(
                {
                    **{k: entities.keys[k] for k in keys},
                    "__fs_ts": pa.array(upper),
                    "__fs_row": row_ids,
                    "__fs_lower": pa.array(lower),
                }
            )
        ).select(
            *keys,
            "__fs_ts",
            F.lit(1).alias("__fs_kind"),
            F.lit(pointintime.INT64_MIN).alias("__fs_created"),
            F.lit(None).cast(rows.schema["__fs_value"].dataType).alias("__fs_value"),
            "__fs_row",
            "__fs_lower",
        )
        window = (
            Window.partitionBy(*keys)
            .orderBy("__fs_ts", "__fs_kind", "__fs_created")
            .rowsBetween(Window.unboundedPreceding, Window.currentRow)
        )
        found = F.last("__fs_value", ignorenulls=True).over(window)
        matched = (
            rows.unionByName(entity_rows)
            .withColumn("__fs_found", found)
            .where(F.col("__fs_kind") == 1)
            .select(
                "__fs_row",
                *[
                    F.when(
                        F.col("__fs_found.__fs_ts") >= F.col("__fs_lower"),
                        F.col(f"__fs_found.{f.name}"),
                    ).alias(f.name)
                    for f in request.features
                ],
            )
            .toArrow()
        )
        matched = matched.take(pc.sort_indices(matched.column("__fs_row")))
        for feature in request.features:
            column = matched.column(feature.name).cast(from_feast_to_pyarrow_type(feature.dtype))
            joined[view.name, feature.name] = column.combine_chunks()
    for start in _chunk_starts(entities.table.num_rows):
        yield {name: column.slice(start, CHUNK_ROWS) for name, column in joined.items()}


# ---------------------------------------------------------------------------------------------
# On-demand features, statistics, the file


def _on_demand(request: OnDemandRequest, entities: pa.Table, joined: Joined) -> Joined:
    """The on-demand features of `entities`, computed by Feast's transformation of the view."""
    inputs: dict[str, pa.Array] = {}
    for source in request.view.source_feature_view_projections.values():
        for feature in source.features:
            inputs[feature.name] = joined[source.name, feature.name]
    for name in request.view.get_request_data_schema():
        inputs[name] = entities.column(name)
    transformed = request.view.transform_arrow(pa.table(inputs), full_feature_names=False)
    outputs: Joined = {}
    for feature in request.features:
        if feature.name not in transformed.column_names:
            raise DefinitionError(
                f"on-demand feature view {request.view.name!r} did not compute {feature.name!r}"
            )
        column = transformed.column(feature.name)
        outputs[request.view.name, feature.name] = column.cast(
            from_feast_to_pyarrow_type(feature.dtype)
        ).combine_chunks()
    return outputs


class Statistics:
    """Per column, accumulated chunk by chunk: count (of values), null_count (nulls and NaN),
    then for numbers mean, std (sample, ddof=1), min and max, for strings the TOP_CATEGORIES
    most frequent values with their counts."""

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._counts = dict.fromkeys(schema.names, 0)
        self._nulls = dict.fromkeys(schema.names, 0)
        # Numbers: (mean, sum of squared deviations, min, max) of the values so far.
        self._moments: dict[str, tuple[float, float, Any, Any]] = {}
        self._categories: dict[str, list[pa.StructArray]] = {n: [] for n in schema.names}

    def add(self, table: pa.Table) -> None:
        for field in self._schema:
            column = table.column(field.name)
            values = pc.drop_null(column)
            if pa.types.is_floating(field.type):
                nan = pc.is_nan(values)
                if pc.any(nan).as_py():
                    values = values.filter(pc.invert(nan))
            seen = self._counts[field.name]
            self._counts[field.name] += len(values)
            self._nulls[field.name] += len(column) - len(values)
            if not len(values):
                continue
            if _is_number(field.type):
                self._merge_moments(field.name, seen, values)
            elif _is_string(field.type):
                self._categories[field.name].append(pc.value_counts(values))

    def _merge_moments(self, name: str, seen: int, values: pa.ChunkedArray) -> None:
        as_float = values.cast(pa.float64())
        count = len(values)
        mean = pc.mean(as_float).as_py()
        squares = pc.variance(as_float, ddof=0).as_py() * count
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if name in self._moments:
            # Chan et al.'s pairwise update: exact moments of the union, no second pass.
            old_mean, old_squares, old_low, old_high = self._moments[name]
            total = seen + count
            delta = mean - old_mean
            mean = old_mean + delta * count / total
            squares = old_squares + squares + delta * delta * seen * count / total
            low, high = min(low, old_low), max(high, old_high)
        self._moments[name] = (mean, squares, low, high)

    def result(self) -> dict[str, dict[str, Any]]:
        described = {}
        for field in self._schema:
            name = field.name
            count = self._counts[name]
            stats: dict[str, Any] = {"count": count, "null_count": self._nulls[name]}
            if _is_number(field.type):
                mean, squares, low, high = self._moments.get(name, (None, None, None, None))
                stats |= {
                    "mean": _finite(mean),
                    "std": _finite(math.sqrt(squares / (count - 1))) if count > 1 else None,
                    "min": _finite(low),
                    "max": _finite(high),
                }
            elif _is_string(field.type):
                stats["categories"] = self._top_categories(name)
            described[name] = stats
        return described

    def _top_categories(self, name: str) -> dict[str, int]:
        if not self._categories[name]:
            return {}
        counts = pa.Table.from_struct_array(pa.chunked_array(self._categories[name]))
        totals = counts.group_by("values").aggregate([("counts", "sum")])
        top = totals.sort_by([("counts_sum", "descending"), ("values", "ascending")])
        top = top.slice(0, TOP_CATEGORIES).to_pydict()
        return dict(zip(top["values"], top["counts_sum"]))


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _finite(value: float | None) -> float | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@contextmanager
def _parquet_replacing(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer whose file replaces `path` in one rename when the block ends cleanly.

    `offline.write_atomically` for a file written row group by row group: a crash or an error
    leaves the old file (or none), never a partial one. The Arrow schema is not stored: readers
    rebuild it from the Parquet types (a timestamp's zone other than UTC reads back as UTC) and
    take the key-value metadata added before closing as its metadata, which they would not do
    with a stored schema, written when the file is opened.
    """
    strings = [f.name for f in schema if _is_string(f.type)]
    with offline.replacing(path) as sink, pq.ParquetWriter(
        sink, schema, compression="zstd", use_dictionary=strings, store_schema=False
    ) as writer:
        yield writer


def read_export_metadata(path: Path) -> dict[str, Any]:
    """The JSON description an export keeps in its Parquet (and so Arrow schema) metadata."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"{path} is not a readable Parquet file ({exc})") from exc
    raw = metadata.get(EXPORT_METADATA_KEY.encode())
    if raw is None:
        raise InputDataError(f"{path} is not a featurestore export (no {EXPORT_METADATA_KEY!r})")
    return json.loads(raw)


def export(
    settings: Settings,
    entities: pa.Table | Path,
    out: Path,
    *,
    feature_service: str | None = None,
    features: Iterable[str] | None = None,
    engine: Engine = "local",
    progress: Progress | None = None,
    store: FeatureStore | None = None,
) -> ExportResult:
    """Write the entity table with its point-in-time features to `out` (Parquet, atomically).

    `entities` is an Arrow table or a Parquet file with the join keys of every exported view and
    `event_timestamp`; request fields of on-demand views come from its columns too. The file has
    a row group per CHUNK_ROWS entity rows, written while the next chunk is joined.
    """
    began = time.perf_counter()
    if engine not in ENGINES:
        raise FeatureStoreError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    report = progress or (lambda _: None)
    from featurestore.feast_config import feature_store

    store = store or feature_store(settings)
    plan = plan_export(store, feature_service=feature_service, features=features)
    out = Path(out)
    if out.is_dir():
        raise InputDataError(f"output {out} is a directory; give a file name")
    table = read_entities(entities) if isinstance(entities, Path | str) else entities
    checked = check_entities(table, plan)
    rows = table.num_rows
    if engine == "spark":
        chunks = _join_spark(settings, plan, checked, report)
    else:
        chunks = _join_local(plan, checked, report)

    features = pa.schema([(f.name, from_feast_to_pyarrow_type(f.dtype)) for _, f in plan.outputs])
    schema = pa.schema([*table.schema, *features])  # the entity table's metadata left behind
    statistics = Statistics(features)
    with _parquet_replacing(out, schema) as writer, ThreadPoolExecutor(1) as write:
        pending = None
        for start, joined in zip(_chunk_starts(rows), chunks):
            part = table.slice(start, CHUNK_ROWS)
            report(f"joined {start + part.num_rows:,} of {rows:,} rows")
            values = dict(joined)
            for request in plan.on_demand:
                values.update(_on_demand(request, part, joined))
            columns = [values[view, feature.name] for view, feature in plan.outputs]
            computed = pa.Table.from_arrays(columns, schema=features)
            statistics.add(computed)
            if pending is not None:
                pending.result()
            # Parquet encoding releases the GIL: the next chunk is joined meanwhile.
            pending = write.submit(
                writer.write_table,
                pa.Table.from_arrays([*part.columns, *computed.columns], schema=schema),
            )
        if pending is not None:
            pending.result()
        report("finishing")
        export_id = f"exp-{uuid.uuid4().hex[:12]}"
        description = {
            "export_id": export_id,
            "feature_service": plan.feature_service,
            "feature_references": list(plan.references),
            "features": features.names,
            "entity_columns": table.column_names,
            "timestamp_field": TIMESTAMP_FIELD,
            "rows": rows,
            "created_at": datetime.now(UTC).isoformat(),
            "statistics": statistics.result(),
        }
        writer.add_key_value_metadata({EXPORT_METADATA_KEY: json.dumps(description)})
    return ExportResult(
        export_id, out, rows, tuple(features.names), engine, time.perf_counter() - began
    )


# ---------------------------------------------------------------------------------------------
# The training entity table


def labeled_transactions(settings: Settings, start: date, end: date) -> pa.Table:
    """Raw transactions of days [start, end) with their fraud label, in event-time order.

    A transaction whose label is not known yet has a null `is_fraud`; a transaction labelled
    more than once gets its latest label.
    """
    if end <= start:
        raise RangeError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    from featurestore.feast_config import feature_store

    store = feature_store(settings)
    transactions_table = _source_table(store, TRANSACTIONS_SOURCE)
    labels_table = _source_table(store, LABELS_SOURCE)
    transactions = _read_source(
        transactions_table, start, end, required=True,
        schema=pa.schema([
            ("transaction_id", pa.string()), ("card_id", pa.int64()),
            ("merchant_id", pa.int64()), ("amount", pa.float64()),
            (TIMESTAMP_FIELD, _ROW_TIMESTAMP),
        ]),
    )  # fmt: skip
    labels = _read_source(
        labels_table, start, end, required=False,
        schema=pa.schema([
            ("transaction_id", pa.string()), (LABEL_COLUMN, pa.bool_()),
            (labels_table.timestamp_field, _ROW_TIMESTAMP),
        ]),
    )  # fmt: skip
    labels = _latest_label(labels, labels_table.timestamp_field)
    joined = transactions.join(labels, "transaction_id", join_type="left outer")
    order = pc.sort_indices(
        joined, sort_keys=[(TIMESTAMP_FIELD, "ascending"), ("transaction_id", "ascending")]
    )
    return joined.take(order).select([*LABELED_COLUMNS, LABEL_COLUMN]).combine_chunks()


def _source_table(store: FeatureStore, name: str) -> Table:
    try:
        source = store.get_data_source(name)
    except DataSourceObjectNotFoundException:
        known = sorted(s.name for s in store.list_data_sources())
        raise UnknownNameError(
            f"the training entity table is made of the fraud example's data sources "
            f"{[TRANSACTIONS_SOURCE, LABELS_SOURCE]}; project {store.project!r} has no data "
            f"source {name!r} (it has: {known or 'none'})"
        ) from None
    return Table(
        name=source.name,
        path=Path(source.path),
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or None,
    )


def _read_source(
    table: Table, start: date, end: date, *, required: bool, schema: pa.Schema
) -> pa.Table:
    files = offline.data_files(table, start, end, required=required)
    offline.validate_files(files, table, schema)
    if not files:
        return schema.empty_table()
    try:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    except pa.ArrowInvalid as exc:  # nanosecond times that microseconds cannot hold, ...
        raise InputDataError(
            f"raw source {table.name!r} in {table.path}: {exc}; the store keeps microseconds"
        ) from None


def _latest_label(labels: pa.Table, label_time: str) -> pa.Table:
    """One label per transaction: the latest known."""
    order = pc.sort_indices(
        labels, sort_keys=[("transaction_id", "ascending"), (label_time, "ascending")]
    )
    labels = labels.take(order)
    ids = labels.column("transaction_id").combine_chunks()
    last = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        last[:-1] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return labels.filter(pa.array(last)).select(["transaction_id", LABEL_COLUMN])
