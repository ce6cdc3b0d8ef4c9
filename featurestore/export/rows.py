"""A view's offline rows an export needs: the days and columns its entity rows can match only."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from feast.types import from_feast_to_pyarrow_type

from featurestore import offline, pointintime
from featurestore.export.plan import ViewRequest

# The offline tables' event times, as every writer of them stores them.
ROW_UNIT = "us"
ROW_TIMESTAMP = pa.timestamp(ROW_UNIT, tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_MICROS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def row_schema(request: ViewRequest) -> pa.Schema:
    table = request.view.offline
    fields = [(k.name, from_feast_to_pyarrow_type(k.dtype)) for k in request.view.join_keys]
    fields.append((table.timestamp_field, ROW_TIMESTAMP))
    if table.created_timestamp_column:
        fields.append((table.created_timestamp_column, ROW_TIMESTAMP))
    fields += [(f.name, from_feast_to_pyarrow_type(f.dtype)) for f in request.features]
    return pa.schema(fields)


def offline_files(
    request: ViewRequest, lowest: int, highest: int, *, for_spark: bool = False
) -> list[Path]:
    """The view's validated offline files of the days holding event times [lowest, highest] µs."""
    table = request.view.offline
    files = offline.data_files(table, day(lowest), offline.day_after(day(highest)), required=False)
    offline.validate_files(files, table, row_schema(request), for_spark=for_spark)
    return files


def day(micros: int) -> date:
    """The UTC day of `micros`; the first day datetime holds for anything before it (a lower
    bound a ttl puts before year 1, or none: INT64_MIN)."""
    if micros < _FIRST_MICROS:
        return date.min
    return (_EPOCH + timedelta(microseconds=micros)).date()


def offline_rows(request: ViewRequest, files: list[Path], lowest: int, highest: int) -> pa.Table:
    """The view's offline rows with event time in [lowest, highest] µs, needed columns only."""
    schema = row_schema(request)
    if not files:
        return schema.empty_table()
    ts = ds.field(request.view.offline.timestamp_field)
    in_range = ts <= pa.scalar(highest, ROW_TIMESTAMP)
    if lowest != pointintime.INT64_MIN:
        in_range &= ts >= pa.scalar(lowest, ROW_TIMESTAMP)
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    return dataset.to_table(filter=in_range)
