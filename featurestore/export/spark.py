"""The Spark join engine: the rules of `featurestore.pointintime`, as one sort per view in Spark,
the export file written by an executor.

Per key, rows and entity rows are ordered by (time, rows before entity rows, created), so the
last row before an entity row is the latest with `ts <= t`, ties going to the greatest created
time; the ttl bound is then checked on that row. One sort per view, no range join. Rows equal in
key, time and created time are the one case the engines may settle apart: Spark takes any of
them, the local engine the later in file order.

Nothing comes back to the driver but one count: the views' matches are joined by entity row,
sorted into one partition (Spark's external sort spills, so no memory holds the result), and
the task of that partition writes the file through `output.write_output`, the local engine's
own code, with the entity table's columns read from a copy next to the output. One file,
row groups and metadata as the local engine writes them, so every reader of an export reads
either; the price is that one task encodes the whole file while the joins run in parallel.
The output's directory must therefore be visible to the executors (on a cluster: shared
storage), as the offline store is.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from feast.types import from_feast_to_pyarrow_type

from featurestore import pointintime
from featurestore.errors import FeatureStoreError
from featurestore.export.entities import Entities
from featurestore.export.joined import Joined, Progress
from featurestore.export.output import ExportOutput, write_output
from featurestore.export.plan import ViewRequest
from featurestore.export.rows import ROW_UNIT, offline_files
from featurestore.settings import Settings

if TYPE_CHECKING:  # Spark is imported only when this engine runs
    from pyspark.sql import DataFrame, SparkSession

_ROW = "__fs_row"


def export_spark(
    settings: Settings, output: ExportOutput, entities: Entities, out: Path, progress: Progress
) -> None:
    """Join every view in Spark and write `out` from the executor holding the joined rows."""
    from featurestore.batch.spark import spark_session

    spark = spark_session(settings)
    plan = output.plan
    rows = entities.table.num_rows
    row_ids = pa.array(np.arange(rows, dtype=np.int64))
    frame = spark.range(rows).withColumnRenamed("id", _ROW)
    joined_columns: dict[tuple[str, str], str] = {}  # (view, feature) -> its column in `frame`
    for request in plan.views:
        progress(f"joining {request.view.name} with Spark")
        lower, upper = pointintime.bounds(entities.times, request.view.ttl, ROW_UNIT)
        files = offline_files(request, int(lower.min()), int(upper.max()), for_spark=True)
        if not files:
            continue  # its features are all null: filled in by the writer
        names = {
            (request.view.name, f.name): f"__fs_f{len(joined_columns) + i}"
            for i, f in enumerate(request.features)
        }
        joined_columns |= names
        feature_rows = _feature_rows(spark, request, files, int(lower.min()), int(upper.max()))
        entity_rows = _entity_rows(spark, request, entities, row_ids, lower, upper, feature_rows)
        matched = _as_of(request, feature_rows, entity_rows, names)
        # A sort-merge join: Spark would broadcast a small side, and a broadcast is collected
        # on the driver first (the cluster test's maxResultSize caught it).
        frame = frame.join(matched.hint("merge"), _ROW, "left")

    # The entity columns reach the writer as a Parquet copy: types and order exactly the
    # table's, one row group per chunk.
    staged = out.with_name(f".{out.name}.{output.export_id}.entities.parquet")
    pq.write_table(entities.table, staged, row_group_size=output.chunk_rows)
    try:
        progress("writing the export from Spark")
        write = partial(_write_partition, output, str(out), str(staged), joined_columns)
        written = (
            frame.repartition(1).sortWithinPartitions(_ROW).mapInArrow(write, "rows long").collect()
        )
    finally:
        staged.unlink(missing_ok=True)
    if [r.rows for r in written] != [rows]:
        raise FeatureStoreError(f"the Spark export wrote {written} rows, expected {rows}")


def _write_partition(
    output: ExportOutput,
    out: str,
    staged: str,
    columns: dict[tuple[str, str], str],
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """In the executor: the one partition's joined rows (in entity row order) written as the
    export, chunk by chunk with the entity table's rows; yields the count."""
    entity_file = pq.ParquetFile(staged)
    entity_chunks = (entity_file.read_row_group(i) for i in range(entity_file.num_row_groups))
    joins = _joined_chunks(output, columns, batches)
    write_output(output, Path(out), entity_chunks, joins, lambda _: None)
    yield pa.record_batch({"rows": pa.array([output.rows], pa.int64())})


def _joined_chunks(
    output: ExportOutput, columns: dict[tuple[str, str], str], batches: Iterator[pa.RecordBatch]
) -> Iterator[Joined]:
    """Spark's batches regrouped into chunks of chunk_rows entity rows, each checked to be the
    next rows in order, as the writer takes them; features of views without rows all null."""
    types = {
        (request.view.name, f.name): from_feast_to_pyarrow_type(f.dtype)
        for request in output.plan.views
        for f in request.features
    }
    pending: list[pa.RecordBatch] = []
    held = start = 0

    def chunk(table: pa.Table) -> Joined:
        ids = table.column(_ROW)
        stop = start + table.num_rows
        if ids[0].as_py() != start or ids[-1].as_py() != stop - 1:
            raise FeatureStoreError(
                f"the Spark export's rows {start}..{stop - 1} came as {ids[0]}..{ids[-1]}"
            )
        return {
            name: (
                table.column(columns[name]).cast(kind).combine_chunks()
                if name in columns
                else pa.nulls(table.num_rows, kind)
            )
            for name, kind in types.items()
        }

    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= output.chunk_rows or (held and start + held == output.rows):
            table = pa.Table.from_batches(pending)
            size = min(output.chunk_rows, held)
            yield chunk(table.slice(0, size))
            pending = table.slice(size).to_batches()
            held -= size
            start += size


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
            F.lit(None).cast("long").alias(_ROW),
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
                _ROW: row_ids,
                "__fs_lower": pa.array(lower),
            }
        )
    ).select(
        *keys,
        "__fs_ts",
        F.lit(1).alias("__fs_kind"),
        F.lit(pointintime.INT64_MIN).alias("__fs_created"),
        F.lit(None).cast(rows.schema["__fs_value"].dataType).alias("__fs_value"),
        _ROW,
        "__fs_lower",
    )


def _as_of(
    request: ViewRequest, rows: DataFrame, entity_rows: DataFrame, names: dict[tuple[str, str], str]
) -> DataFrame:
    """Each entity row's features: the last row before it in its key's order, if within ttl;
    as (entity row, a column per feature named by `names`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = (
        Window.partitionBy(*request.key_names)
        .orderBy("__fs_ts", "__fs_kind", "__fs_created")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    found = F.last("__fs_value", ignorenulls=True).over(window)
    return (
        rows.unionByName(entity_rows)
        .withColumn("__fs_found", found)
        .where(F.col("__fs_kind") == 1)
        .select(
            _ROW,
            *[
                F.when(
                    F.col("__fs_found.__fs_ts") >= F.col("__fs_lower"),
                    F.col(f"__fs_found.{f.name}"),
                ).alias(names[request.view.name, f.name])
                for f in request.features
            ],
        )
    )
