"""What a join yields, chunk by chunk of entity rows: each view's features aligned with those
rows, to which the on-demand features are added by Feast's own transformation of their view."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import pyarrow as pa
from feast.types import from_feast_to_pyarrow_type

from featurestore.errors import DefinitionError
from featurestore.export.plan import OnDemandRequest

# (view name, feature name) -> the feature's values, one per entity row of the chunk (the local
# engine takes them from its rows' table as one-chunk ChunkedArrays).
Joined: TypeAlias = dict[tuple[str, str], pa.Array | pa.ChunkedArray]
# Told what an export is doing ("reading card_profile", "joined 131,072 of 1,000,000 rows").
Progress: TypeAlias = Callable[[str], None]


def chunk_starts(rows: int, chunk_rows: int) -> range:
    return range(0, rows, chunk_rows)


def on_demand(request: OnDemandRequest, entities: pa.Table, joined: Joined) -> Joined:
    """The on-demand features of `entities`, computed by Feast's transformation of the view."""
    inputs: dict[str, pa.Array] = {}
    for source in request.view.source_feature_view_projections.values():
        for feature in source.features:
            inputs[feature.name] = joined[source.name, feature.name]
    for name in request.view.get_request_data_schema():
        inputs[name] = entities.column(name)
    transformed = request.view.transform_arrow(pa.table(inputs), full_feature_names=False)
    missing = [f.name for f in request.features if f.name not in transformed.column_names]
    if missing:
        raise DefinitionError(
            f"on-demand feature view {request.view.name!r} did not compute {missing[0]!r}"
        )
    return {
        (request.view.name, feature.name): transformed.column(feature.name)
        .cast(from_feast_to_pyarrow_type(feature.dtype))
        .combine_chunks()
        for feature in request.features
    }
