"""The offline store on disk: date-partitioned Parquet datasets, validated before any job reads them.

Every dataset is a directory of Hive partitions `event_date=YYYY-MM-DD/`. Writers stage a run's
partitions next to the table and swap each one in with a rename, so a reader or a crash never
sees a half-written partition.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.definitions import Table
from featurestore.errors import DefinitionError, InputDataError

PARTITION = "event_date"

_DDL_TYPES = {
    "STRING": pa.string(),
    "BIGINT": pa.int64(),
    "LONG": pa.int64(),
    "INT": pa.int32(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
}


def schema_from_ddl(ddl: str) -> pa.Schema:
    """The Arrow schema of a Spark DDL string such as `id BIGINT NOT NULL, amount DOUBLE`."""
    fields = []
    for column in ddl.split(","):
        parts = column.split()
        required = [p.upper() for p in parts[2:]] == ["NOT", "NULL"]
        if len(parts) not in (2, 4) or (len(parts) == 4 and not required) or (
            parts[1].upper() not in _DDL_TYPES
        ):
            raise DefinitionError(
                f"cannot read column {column.strip()!r} of schema {ddl!r}; expected "
                f"'name TYPE [NOT NULL]' with TYPE one of {', '.join(sorted(_DDL_TYPES))}"
            )
        fields.append(pa.field(parts[0], _DDL_TYPES[parts[1].upper()], nullable=not required))
    return pa.schema(fields)


def _compatible(expected: pa.DataType, found: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found)
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    return expected == found


def partition_dir(table: Path, day: date) -> Path:
    return table / f"{PARTITION}={day.isoformat()}"


def day_after(day: date) -> date | None:
    """The next day, None after the last day datetime can hold (an open end for `data_files`)."""
    return None if day == date.max else day + timedelta(days=1)


def partition_days(table: Path, start: date = date.min, end: date | None = None) -> list[date]:
    """The days in [start, end) (end None: no end) that `table` has a partition of, in order.

    Listed from the directory, so the cost is the partitions there, not the days of the range
    (a range to year 9999 costs no more than a week)."""
    found = []
    for path in table.glob(f"{PARTITION}=*"):
        try:
            day = date.fromisoformat(path.name.partition("=")[2])
        except ValueError:
            continue
        if start <= day and (end is None or day < end):
            found.append(day)
    return sorted(found)


def data_files(
    table: Table, start: date, end: date | None, *, required: bool = True
) -> list[Path]:
    """The Parquet files of `table` in partitions [start, end) (end None: no end); errors name
    what is missing.

    With `required=False` an existing table with no files in the range gives an empty list.
    """
    if not table.path.is_dir():
        raise InputDataError(
            f"offline table {table.name!r}: {table.path} does not exist "
            "(generate or backfill it first)"
        )
    files = [
        f
        for day in partition_days(table.path, start, end)
        for f in sorted(partition_dir(table.path, day).glob("*.parquet"))
    ]
    if not files and required:
        until = f"to {end} (exclusive)" if end is not None else "on"
        raise InputDataError(
            f"offline table {table.name!r}: no Parquet files in {table.path} "
            f"for {start} {until}"
        )
    return files


def _nanosecond_columns(metadata: pq.FileMetaData, names: Iterable[str]) -> list[str]:
    """The columns of `names` stored as Parquet TIMESTAMP(NANOS), which Spark cannot read (it
    reads millis, micros and the legacy INT96)."""
    wanted = set(names)
    return [
        column.path
        for column in (metadata.schema.column(i) for i in range(len(metadata.schema)))
        if column.path in wanted
        and json.loads(column.logical_type.to_json()).get("timeUnit") == "nanoseconds"
    ]


def validate_files(
    files: Iterable[Path], table: Table, required: pa.Schema, *, for_spark: bool = False
) -> int:
    """Check each file's footer against `required`; returns the total row count.

    `for_spark`: the files are read by Spark, so their timestamps must be in a unit it reads.
    """
    rows = 0
    for path in files:
        try:
            metadata = pq.read_metadata(path)
            schema = metadata.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise InputDataError(
                f"offline table {table.name!r}: {path} is not a readable Parquet file ({exc})"
            ) from exc
        timestamps = [f.name for f in required if pa.types.is_timestamp(f.type)]
        nanos = _nanosecond_columns(metadata, timestamps) if for_spark else []
        if nanos:
            raise InputDataError(
                f"offline table {table.name!r}: column {nanos[0]!r} in {path} holds nanosecond "
                "timestamps, which Spark cannot read; write it in microseconds (pyarrow: "
                "pq.write_table(..., coerce_timestamps='us'))"
            )
        for field in required:
            index = schema.get_field_index(field.name)
            if index < 0:
                raise InputDataError(
                    f"offline table {table.name!r}: {path} has no column {field.name!r} "
                    f"(expected {field.type})"
                )
            found = schema.field(index).type
            if not _compatible(field.type, found):
                raise InputDataError(
                    f"offline table {table.name!r}: column {field.name!r} in {path} is "
                    f"{found}, expected {field.type}"
                )
        rows += metadata.num_rows
    return rows


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A file whose content replaces `path` in one rename when the block ends without error; a
    crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leading dot hides a crash's leftover from Parquet readers (Spark, pyarrow datasets).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer thread
    try:
        with open(tmp, "wb") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(table: pa.Table, path: Path, **parquet_options: object) -> None:
    """Replace `path` with `table` in one rename (see `replacing`)."""
    with replacing(path) as sink:
        pq.write_table(table, sink, compression="zstd", **parquet_options)


def write_days(table: Path, rows: pa.Table, timestamp_field: str, file_name: str) -> list[Path]:
    """Write `rows` into the UTC day partitions of their event times, one file `file_name` each."""
    if not rows.num_rows:
        return []
    times = rows.column(timestamp_field)
    # strftime writes a zoned timestamp's local date; partitions are UTC days (naive is UTC).
    day = pc.strftime(times.cast(pa.timestamp(times.type.unit, tz="UTC")), "%Y-%m-%d")
    written = []
    for value in pc.unique(day).to_pylist():
        path = table / f"{PARTITION}={value}" / file_name
        write_atomically(rows.filter(pc.equal(day, value)), path)
        written.append(path)
    return written


@contextmanager
def staged_partitions(table: Path) -> Iterator[Path]:
    """A staging directory beside `table` that is removed whatever happens."""
    table.mkdir(parents=True, exist_ok=True)
    staging = table / f"_staging-{uuid.uuid4().hex}"
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(staging: Path, table: Path, start: date, end: date) -> list[date]:
    """Replace the partitions [start, end) of `table` with those in `staging`.

    Each partition is swapped by rename, so it is either the old or the new one, never a mix.
    A day of the range with no staged partition is removed: its source data no longer exists.
    """
    written = []
    replaced = {*partition_days(table, start, end), *partition_days(staging, start, end)}
    for day in sorted(replaced):
        target = partition_dir(table, day)
        staged = partition_dir(staging, day)
        trash = table / f"_trash-{uuid.uuid4().hex}"
        if target.exists():
            os.rename(target, trash)
        if staged.exists():
            os.rename(staged, target)
            written.append(day)
        shutil.rmtree(trash, ignore_errors=True)
    return written
