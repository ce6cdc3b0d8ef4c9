"""The entity table of an export: read, and checked against the plan before anything is joined.

Every problem is named at once (a missing or mistyped column, nulls, a name clash, no rows), so a
caller fixes the table in one go; the join keys come out typed as the views declare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
from feast.type_map import feast_value_type_to_pa
from feast.types import from_feast_to_pyarrow_type

from featurestore.errors import InputDataError
from featurestore.export.plan import ExportPlan

TIMESTAMP_FIELD = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL


@dataclass(frozen=True)
class Entities:
    """The entity table as given, with its join keys typed as declared."""

    table: pa.Table
    keys: dict[str, pa.Array]

    @property
    def times(self) -> pa.Array:
        return self.table.column(TIMESTAMP_FIELD).combine_chunks()


def read_entities(path: Path | str) -> pa.Table:
    if not Path(path).exists():
        raise InputDataError(f"entity table {path} does not exist")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"entity table {path} is not a readable Parquet file ({exc})") from exc


def check_entities(table: pa.Table, plan: ExportPlan) -> Entities:
    """The entity table's problems, all named at once, before anything is read or written."""
    problems = _time_problems(table)
    keys, key_problems = _typed_keys(table, plan)
    problems += key_problems
    problems += _request_field_problems(table, plan)
    clashing = sorted(set(table.column_names).intersection(plan.feature_names))
    if clashing:
        problems.append(f"columns {clashing} have the names of exported features")
    if not table.num_rows:
        problems.append("it has no rows (nothing to export)")
    if problems:
        raise InputDataError("entity table: " + "; ".join(problems))
    return Entities(table, keys)


def _time_problems(table: pa.Table) -> list[str]:
    if TIMESTAMP_FIELD not in table.column_names:
        return [f"no column {TIMESTAMP_FIELD!r} (the time of each row)"]
    times = table.column(TIMESTAMP_FIELD)
    if not pa.types.is_timestamp(times.type):
        return [f"column {TIMESTAMP_FIELD!r} is {times.type}, expected a timestamp"]
    if times.null_count:
        return [f"column {TIMESTAMP_FIELD!r} has {times.null_count:,} null value(s)"]
    return []


def _typed_keys(table: pa.Table, plan: ExportPlan) -> tuple[dict[str, pa.Array], list[str]]:
    """The join key columns as the views declare them, and the problems of those that are not."""
    keys, problems = {}, []
    for key in plan.join_keys:
        expected = from_feast_to_pyarrow_type(key.dtype)
        if key.name not in table.column_names:
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
    return keys, problems


def _request_field_problems(table: pa.Table, plan: ExportPlan) -> list[str]:
    problems = []
    for request in plan.on_demand:
        for name, value_type in request.view.get_request_data_schema().items():
            of_view = f"request field of on-demand view {request.view.name!r}"
            expected = feast_value_type_to_pa(value_type)
            if name not in table.column_names:
                problems.append(f"no column {name!r} ({of_view})")
            elif not _holds(table.column(name).type, expected):
                problems.append(
                    f"column {name!r} is {table.column(name).type}, expected {expected} ({of_view})"
                )
    return problems


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
