"""Point-in-time export: an entity table with each row's feature values as of its event time.

What to export is read from the registry (`plan`): a feature service, or `view:feature`
references as Feast takes them. The entity table is checked against the plan (`entities`); each
view's offline Parquet is read for the days and columns the entity table needs only (`rows`),
joined by the rules of `featurestore.pointintime` (engine "local", `local`) or by the same rules
in Spark (engine "spark", `spark`), on-demand features are computed by Feast's own transformation
of their view (`joined`), and the result is written atomically as one Parquet file (`writer`):
the entity table's rows in its order, all its columns, then the features under Feast's names
(full_feature_names=False). The file's schema metadata holds a JSON description of the export
(`EXPORT_METADATA_KEY`), with the features' `statistics`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
from feast import FeatureStore
from feast.types import from_feast_to_pyarrow_type

from featurestore.errors import FeatureStoreError, InputDataError
from featurestore.export.entities import TIMESTAMP_FIELD, Entities, check_entities, read_entities
from featurestore.export.joined import Progress, chunk_starts
from featurestore.export.local import join_local
from featurestore.export.output import ExportOutput, write_output
from featurestore.export.plan import ExportPlan, OnDemandRequest, ViewRequest, plan_export
from featurestore.export.spark import export_spark
from featurestore.export.statistics import TOP_CATEGORIES, Statistics
from featurestore.export.writer import EXPORT_METADATA_KEY, read_export_metadata
from featurestore.settings import Settings

__all__ = [
    "CHUNK_ROWS",
    "ENGINES",
    "EXPORT_METADATA_KEY",
    "TIMESTAMP_FIELD",
    "TOP_CATEGORIES",
    "Engine",
    "Entities",
    "ExportPlan",
    "ExportResult",
    "OnDemandRequest",
    "Progress",
    "Statistics",
    "ViewRequest",
    "check_entities",
    "export",
    "plan_export",
    "read_entities",
    "read_export_metadata",
]

Engine = Literal["local", "spark"]
ENGINES: tuple[Engine, ...] = ("local", "spark")
# Entity rows per chunk: one output row group, and the unit the writer thread overlaps with.
CHUNK_ROWS = 131_072


@dataclass(frozen=True)
class ExportResult:
    export_id: str
    path: Path
    rows: int
    features: tuple[str, ...]
    engine: Engine
    seconds: float


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
    chunk_rows = CHUNK_ROWS  # read once: the joins and the slicing below must agree
    feature_schema = pa.schema(
        [(f.name, from_feast_to_pyarrow_type(f.dtype)) for _, f in plan.outputs]
    )
    output = ExportOutput(
        f"exp-{uuid.uuid4().hex[:12]}", plan, pa.schema(list(table.schema)), feature_schema,
        table.num_rows, chunk_rows,
    )  # fmt: skip
    if engine == "spark":
        export_spark(settings, output, checked, out, report)
    else:
        entity_chunks = (
            table.slice(start, chunk_rows) for start in chunk_starts(table.num_rows, chunk_rows)
        )
        write_output(
            output, out, entity_chunks, join_local(plan, checked, report, chunk_rows), report
        )
    return ExportResult(
        output.export_id, out, table.num_rows, tuple(feature_schema.names), engine,
        time.perf_counter() - began,
    )  # fmt: skip
