"""The export file made from entity chunks and their joined features: the one code path both
engines write through (the local engine in this process, the Spark engine in an executor).

Each chunk gets its on-demand features (Feast's own transformation), is added to the
statistics, and becomes a row group; the description with the statistics is the file's
metadata, written last (`writer.write_export`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from featurestore.export.entities import TIMESTAMP_FIELD
from featurestore.export.joined import Joined, Progress, on_demand
from featurestore.export.plan import ExportPlan
from featurestore.export.statistics import Statistics
from featurestore.export.writer import write_export


@dataclass(frozen=True)
class ExportOutput:
    """What the export file is, decided before any row is joined; picklable, so that a Spark
    executor writes the same file as the driver would."""

    export_id: str
    plan: ExportPlan
    entity_schema: pa.Schema  # the entity table's, its metadata left behind
    feature_schema: pa.Schema
    rows: int
    chunk_rows: int

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([*self.entity_schema, *self.feature_schema])


def write_output(
    output: ExportOutput,
    path: Path,
    entity_chunks: Iterable[pa.Table],
    joins: Iterable[Joined],
    report: Progress,
) -> None:
    """Write the export of `entity_chunks` (chunk_rows rows each, in order) and their `joins`."""
    statistics = Statistics(output.feature_schema)
    schema = output.schema

    def chunks() -> Iterator[pa.Table]:
        done = 0
        for part, joined in zip(entity_chunks, joins, strict=True):
            done += part.num_rows
            report(f"joined {done:,} of {output.rows:,} rows")
            computed = _feature_table(output, part, joined)
            statistics.add(computed)
            yield pa.Table.from_arrays([*part.columns, *computed.columns], schema=schema)

    def describe() -> dict[str, Any]:
        report("finishing")
        return {
            "export_id": output.export_id,
            "feature_service": output.plan.feature_service,
            "feature_references": list(output.plan.references),
            "features": output.feature_schema.names,
            "entity_columns": output.entity_schema.names,
            "timestamp_field": TIMESTAMP_FIELD,
            "rows": output.rows,
            "created_at": datetime.now(UTC).isoformat(),
            "statistics": statistics.result(),
        }

    write_export(path, schema, chunks(), describe)


def _feature_table(output: ExportOutput, entities: pa.Table, joined: Joined) -> pa.Table:
    """The exported features of one chunk, in output order: joined, then on-demand ones."""
    values = dict(joined)
    for request in output.plan.on_demand:
        values.update(on_demand(request, entities, joined))
    return pa.Table.from_arrays(
        [values[view, f.name] for view, f in output.plan.outputs], schema=output.feature_schema
    )
