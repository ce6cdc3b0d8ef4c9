"""The local join engine: `featurestore.pointintime` over each view's rows, in this process.

Each view's rows are read and indexed once (two views at a time, the reading releases the GIL),
then every chunk of entity rows is one vectorized lookup per view.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from featurestore import pointintime
from featurestore.export.entities import Entities
from featurestore.export.joined import Joined, Progress, chunk_starts
from featurestore.export.plan import ExportPlan, ViewRequest
from featurestore.export.rows import ROW_UNIT, offline_files, offline_rows


@dataclass(frozen=True)
class IndexedView:
    """A view's rows ready for lookups: their features, their point-in-time index, and the
    inclusive event-time bounds of the rows valid for each entity row."""

    request: ViewRequest
    features: pa.Table
    index: pointintime.AsOfIndex
    lower: np.ndarray
    upper: np.ndarray


def join_local(
    plan: ExportPlan, entities: Entities, progress: Progress, chunk_rows: int
) -> Iterator[Joined]:
    """Each view's rows read and sorted once (two views at a time); then each chunk looked up."""
    with ThreadPoolExecutor(2) as pool:
        indexed = list(pool.map(lambda r: _read_view(r, entities, progress), plan.views))
    for start in chunk_starts(entities.table.num_rows, chunk_rows):
        yield lookup_chunk(indexed, entities, start, chunk_rows)


def lookup_chunk(
    indexed: list[IndexedView], entities: Entities, start: int, chunk_rows: int
) -> Joined:
    """The features of entity rows [start, start + chunk_rows), nulls where no row is valid."""
    stop = start + chunk_rows
    joined: Joined = {}
    for view in indexed:
        keys = [entities.keys[k].slice(start, chunk_rows) for k in view.request.key_names]
        found = view.index.lookup(keys, view.lower[start:stop], view.upper[start:stop])
        picked = pa.array(found, mask=found == pointintime.NO_MATCH)
        for feature in view.request.features:
            joined[view.request.view.name, feature.name] = view.features.column(feature.name).take(
                picked
            )
    return joined


def _read_view(request: ViewRequest, entities: Entities, progress: Progress) -> IndexedView:
    progress(f"reading {request.view.name}")
    lower, upper = pointintime.bounds(entities.times, request.view.ttl, ROW_UNIT)
    files = offline_files(request, int(lower.min()), int(upper.max()))
    rows = offline_rows(request, files, int(lower.min()), int(upper.max()))
    return index_view(request, rows, lower, upper)


def index_view(
    request: ViewRequest, rows: pa.Table, lower: np.ndarray, upper: np.ndarray
) -> IndexedView:
    """The view's offline `rows` (in `row_schema`) indexed for entity rows of bounds lower..upper."""
    table = request.view.offline
    ts, valid = pointintime.timestamp_ints(rows.column(table.timestamp_field))
    created = None
    if table.created_timestamp_column:
        created_ts, created_valid = pointintime.timestamp_ints(
            rows.column(table.created_timestamp_column)
        )
        created = np.where(created_valid, created_ts, pointintime.INT64_MIN)
    index = pointintime.AsOfIndex([rows.column(k) for k in request.key_names], ts, created, valid)
    # One chunk per column: taking from many chunks is several times slower.
    features = rows.select([f.name for f in request.features]).combine_chunks()
    return IndexedView(request, features, index, lower, upper)
