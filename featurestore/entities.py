"""The training entity table of any repo: one row per event of a declared data source.

An entity table is what a point-in-time export joins features onto: the entities' join keys and
an `event_timestamp` per row, plus any columns the model needs beside the features (its label,
the request fields of on-demand views). `entity_table` reads them from the offline data of one
FileSource of the user's repo over UTC days [start, end); nothing here knows any one repo.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from feast import FeatureStore, FileSource
from feast.errors import DataSourceObjectNotFoundException
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL

from featurestore import offline
from featurestore.definitions import Table, file_table
from featurestore.errors import InputDataError, RangeError, UnknownNameError

# The column the export reads each row's point in time from (Feast's name for it).
TIMESTAMP_FIELD = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def source_table(store: FeatureStore, name: str) -> Table:
    """The Parquet dataset of the repo's data source `name`; errors list the sources there are."""
    try:
        source = store.get_data_source(name)
    except DataSourceObjectNotFoundException:
        known = sorted(s.name for s in store.list_data_sources() if isinstance(s, FileSource))
        raise UnknownNameError(
            f"project {store.project!r} has no file data source {name!r} "
            f"(it has: {', '.join(known) or 'none'})"
        ) from None
    if not isinstance(source, FileSource):
        raise UnknownNameError(
            f"data source {name!r} is a {type(source).__name__}; an entity table is read from "
            "a FileSource (Parquet), e.g. a stream's raw archive"
        )
    return file_table(source)


def entity_keys(store: FeatureStore) -> list[str]:
    """The join keys of every entity the repo declares, in name order."""
    return sorted({entity.join_key for entity in store.list_entities()})


def entity_table(
    store: FeatureStore,
    source: str,
    start: date,
    end: date,
    *,
    keys: Sequence[str] = (),
    columns: Sequence[str] = (),
) -> pa.Table:
    """Rows of data source `source` in days [start, end): `keys`, `event_timestamp`, `columns`.

    `keys` default to the repo's entity join keys that the source has (at least one must be
    there). The source's timestamp becomes `event_timestamp` (microseconds, UTC); rows are in
    event-time order, ties in file order. A row without a timestamp is an error: it has no point
    in time to join at.
    """
    if end <= start:
        raise RangeError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    table = source_table(store, source)
    files = offline.data_files(table, start, end, required=True)
    dataset = _dataset(table, files)
    available = dataset.schema.names
    if not keys:
        keys = [key for key in entity_keys(store) if key in available]
        if not keys:
            raise InputDataError(
                f"data source {source!r} has none of the entity join keys "
                f"{entity_keys(store)}; its columns: {', '.join(available)}"
            )
    wanted = list(dict.fromkeys([*keys, table.timestamp_field, *columns]))
    missing = [name for name in wanted if name not in available]
    if missing:
        raise InputDataError(
            f"data source {source!r} ({table.path}) has no column(s) {', '.join(missing)}; "
            f"its columns: {', '.join(available)}"
        )
    if TIMESTAMP_FIELD in columns or TIMESTAMP_FIELD in keys:
        raise InputDataError(f"{TIMESTAMP_FIELD!r} is the entity table's time; do not name it")
    rows = dataset.to_table(columns=wanted)
    moments = rows.column(table.timestamp_field)
    if not pa.types.is_timestamp(moments.type):
        raise InputDataError(
            f"data source {source!r}: timestamp field {table.timestamp_field!r} is "
            f"{moments.type}, not a timestamp"
        )
    if moments.null_count:
        raise InputDataError(
            f"data source {source!r}: {moments.null_count:,} row(s) in days {start} .. {end} "
            f"have no {table.timestamp_field!r}"
        )
    moments = _as_utc_micros(moments, source, table.timestamp_field)
    result = pa.table(
        {
            **{key: rows.column(key) for key in keys},
            TIMESTAMP_FIELD: moments,
            **{name: rows.column(name) for name in columns if name not in keys},
        }
    )
    order = pc.sort_indices(result, sort_keys=[(TIMESTAMP_FIELD, "ascending")])
    return result.take(order).combine_chunks()


def _dataset(table: Table, files: list[Path]) -> ds.Dataset:
    try:
        return ds.dataset([str(f) for f in files], format="parquet")
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"data source {table.name!r} in {table.path}: {exc}") from None


def _as_utc_micros(moments: pa.ChunkedArray, source: str, name: str) -> pa.ChunkedArray:
    # A zone-less timestamp is read as UTC, as every engine of the store reads event times.
    utc = moments if moments.type.tz else pc.assume_timezone(moments, "UTC")
    try:
        return utc.cast(_TIMESTAMP)
    except pa.ArrowInvalid as exc:  # nanoseconds that microseconds cannot hold exactly
        raise InputDataError(
            f"data source {source!r}: {name!r}: {exc}; the store keeps microseconds"
        ) from None
