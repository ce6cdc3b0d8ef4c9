"""The Spark join engine: the rules of `featurestore.pointintime`, as one sort per view in Spark.

Per key, rows and entity rows are ordered by (time, rows before entity rows, created), so the
last row before an entity row is the latest with `ts <= t`, ties going to the greatest created
time; the ttl bound is then checked on that row. One sort per view, no range join. Rows equal in
key, time and created time are the one case the engines may settle apart: Spark takes any of
them, the local engine the later in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.types import from_feast_to_pyarrow_type

from featurestore import pointintime
from featurestore.export.entities import Entities
from featurestore.export.joined import Joined, Progress, chunk_starts
from featurestore.export.plan import ExportPlan, ViewRequest
from featurestore.export.rows import ROW_UNIT, offline_files
from featurestore.settings import Settings

if TYPE_CHECKING:  # Spark is imported only when this engine runs
    from pyspark.sql import DataFrame, SparkSession


def join_spark(
    settings: Settings, plan: ExportPlan, entities: Entities, progress: Progress, chunk_rows: int
) -> Iterator[Joined]:
    """Every view joined in Spark first (the session started only if a view has rows), then the
    columns handed out chunk by chunk, as the local engine does."""
    from featurestore.batch.spark import spark_session

    joined: Joined = {}
    spark = None
    row_ids = pa.array(np.arange(entities.table.num_rows, dtype=np.int64))
    for request in plan.views:
        progress(f"joining {request.view.name} with Spark")
        lower, upper = pointintime.bounds(entities.times, request.view.ttl, ROW_UNIT)
        files = offline_files(request, int(lower.min()), int(upper.max()), for_spark=True)
        if not files:
            for feature in request.features:
                joined[request.view.name, feature.name] = pa.nulls(
                    entities.table.num_rows, from_feast_to_pyarrow_type(feature.dtype)
                )
            continue
        spark = spark or spark_session(settings)
        rows = _feature_rows(spark, request, files, int(lower.min()), int(upper.max()))
        entity_rows = _entity_rows(spark, request, entities, row_ids, lower, upper, rows)
        joined.update(_as_of(request, rows, entity_rows))
    for start in chunk_starts(entities.table.num_rows, chunk_rows):
        yield {name: column.slice(start, chunk_rows) for name, column in joined.items()}


def _feature_rows(
    spark: SparkSession, request: ViewRequest, files: list[Path], lowest: int, highest: int
) -> DataFrame:
    """The view's rows in [lowest, highest] µs as (keys, time, kind 0, created, value struct)."""
    from pyspark.sql import functions as F

    ts_column = request.view.offline.timestamp_field
    created_column = request.view.offline.created_timestamp_column
    event_micros = F.unix_micros(F.col(ts_column))
    in_range = event_micros <= F.lit(highest)
    if lowest != pointintime.INT64_MIN:
        in_range &= event_micros >= F.lit(lowest)
    created = (
        F.coalesce(F.unix_micros(F.col(created_column)), F.lit(pointintime.INT64_MIN))
        if created_column
        else F.lit(pointintime.INT64_MIN)
    )
    return (
        spark.read.parquet(*[str(f) for f in files])
        .where(in_range)
        .select(
            *request.key_names,
            event_micros.alias("__fs_ts"),
            F.lit(0).alias("__fs_kind"),
            created.alias("__fs_created"),
            F.struct(
                event_micros.alias("__fs_ts"),
                *[F.col(f.name) for f in request.features],
            ).alias("__fs_value"),
            F.lit(None).cast("long").alias("__fs_row"),
            F.lit(None).cast("long").alias("__fs_lower"),
        )
    )


def _entity_rows(
    spark: SparkSession,
    request: ViewRequest,
    entities: Entities,
    row_ids: pa.Array,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: DataFrame,
) -> DataFrame:
    """The entity rows in the shape of `rows`: at their upper bound, kind 1, no value."""
    from pyspark.sql import functions as F

    keys = request.key_names
    return spark.createDataFrame(
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


def _as_of(request: ViewRequest, rows: DataFrame, entity_rows: DataFrame) -> Joined:
    """Each entity row's features: the last row before it in its key's order, if within ttl."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = (
        Window.partitionBy(*request.key_names)
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
    return {
        (request.view.name, feature.name): matched.column(feature.name)
        .cast(from_feast_to_pyarrow_type(feature.dtype))
        .combine_chunks()
        for feature in request.features
    }
