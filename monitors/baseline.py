"""Baselines: what a monitor compares live windows with, built from a training export.

A baseline belongs to a subject, the family of captured rows it describes: `service:NAME` (the
rows the API serves for a feature service, which the model scores) or `view:NAME` (the rows the
stream worker writes for one feature view). Each build adds a version:

- a reference sample: a seeded uniform sample of the export's rows (its feature columns, under
  the export's column names, plus the model's `score` when built with the model), written as
  Parquet under `settings.baselines_dir`; the drift checks and Evidently's report read it;
- a profile per column (JSON, in SQL, in column order):
  `definition` (`view:feature`, or `score`); `kind`, "numeric" | "categorical", which every
  window's drift check and report then uses; `dtype`; `null_rate` (null or NaN) over the whole
  export, from its statistics where they have it, and `sample_null_rate`; for numbers
  `quantiles` ({"0": .., "0.01": .., ..., "1": ..}), `histogram` ({edges, counts}, equal
  width), `mean`, `std`; for categorical columns `categories` (the top 50 non-null values:
  [{value, count, share}]) and `other_share`. Distributions describe the sample.

The export is streamed row group by row group in batches: a 1M-row export is never in memory,
only the sampled rows are kept. A model's baseline is the export it was trained on
(`baseline_for_model`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from featurestore import db
from featurestore.errors import FeatureStoreError, InputDataError
from featurestore.export import read_export_metadata
from featurestore.offline import replacing
from featurestore.settings import Settings
from featurestore.timestamps import assume_utc
from monitors.columns import column_kind, missing_values
from monitors.config import SCORE_COLUMN
from monitors.store import BASELINES, RUN_FEATURES, unfit

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 20
TOP_CATEGORIES = 50
READ_BATCH_ROWS = 65_536
# Attempts at taking the next version when concurrent builders of one subject collide.
STORE_ATTEMPTS = 20


class BaselineError(FeatureStoreError):
    """A baseline cannot be built or found; the message names the export, model or version."""


@dataclass(frozen=True)
class Baseline:
    baseline_id: int
    subject: str  # service:NAME | view:NAME
    version: int
    export_id: str
    export_path: Path
    model_path: Path | None  # the model whose scores are the sample's `score` column
    rows: int  # rows of the export
    sample_rows: int
    sample_path: Path
    profile: dict[str, dict[str, Any]]  # column -> its profile, in column order
    created_at: datetime

    @property
    def references(self) -> dict[str, str]:
        """Column -> definition name (`view:feature`, or `score`)."""
        return {column: spec["definition"] for column, spec in self.profile.items()}

    def sample(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The reference sample, all its columns or `columns` in that order."""
        if columns is not None:
            unknown = [c for c in columns if c not in self.profile]
            if unknown:
                raise BaselineError(
                    f"baseline {self.subject} v{self.version} has no column {unknown}; "
                    f"its columns: {list(self.profile)}"
                )
        try:
            return pq.read_table(
                self.sample_path, columns=list(columns) if columns is not None else None
            )
        except FileNotFoundError:
            raise self._missing_sample() from None

    def require_sample(self) -> None:
        """Raise `BaselineError` when the sample file is gone: the monitor cannot run, and
        must say so before a window comes to need it."""
        if not self.sample_path.is_file():
            raise self._missing_sample()

    def _missing_sample(self) -> BaselineError:
        return BaselineError(
            f"the sample of baseline {self.subject} v{self.version} is missing: "
            f"{self.sample_path}; build a new version"
        )


# ---------------------------------------------------------------------------------------------
# What to sample


@dataclass(frozen=True)
class _Source:
    path: Path
    export_id: str
    subject: str
    references: dict[str, str]  # column -> definition name, the subject's columns in file order
    statistics: dict[str, dict[str, Any]]


def _source(export_path: Path, feature_view: str | None) -> _Source:
    if not export_path.is_file():
        raise BaselineError(f"export file {export_path} does not exist")
    metadata = read_export_metadata(export_path)
    features = list(metadata.get("features") or [])
    references = list(metadata.get("feature_references") or [])
    if not features or len(references) != len(features):
        raise BaselineError(
            f"export {export_path} does not say which definition each of its feature columns "
            "has (metadata `features` and `feature_references`); export it again with "
            "`featurestore export`"
        )
    by_column = dict(zip(features, references, strict=True))
    if feature_view is None:
        service = metadata.get("feature_service")
        if not service:
            raise BaselineError(
                f"export {export_path} was built from a list of features, not a feature "
                "service; give the feature view to take the baseline of (--feature-view)"
            )
        subject = f"service:{service}"
    else:
        by_column = {c: r for c, r in by_column.items() if r.partition(":")[0] == feature_view}
        if not by_column:
            views = sorted({r.partition(":")[0] for r in references})
            raise BaselineError(
                f"export {export_path} has no feature of feature view {feature_view!r}; "
                f"its views: {views}"
            )
        subject = f"view:{feature_view}"
    return _Source(
        export_path, metadata["export_id"], subject, by_column, metadata.get("statistics") or {}
    )


def _check_fits(source: _Source) -> None:
    """Refuse now what the monitors' tables cannot hold, rather than at every window."""
    limits = [("subject", source.subject, BASELINES.c.subject)] + [
        ("feature", reference, RUN_FEATURES.c.feature) for reference in source.references.values()
    ]
    for what, value, column in limits:
        problem = unfit(value, column)
        if problem is not None:
            raise BaselineError(f"export {source.path}: the {what} {problem}")


def _sampled_rows(rows: int, sample_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of a uniform sample without replacement."""
    picked = np.random.default_rng(seed).choice(rows, size=min(rows, sample_rows), replace=False)
    picked.sort()
    return picked


def _read_sample(
    parquet: pq.ParquetFile, columns: list[str], picks: np.ndarray, count_nulls: list[str]
) -> tuple[pa.Table, dict[str, int]]:
    """The picked rows of `columns`, and the missing values of `count_nulls` over all rows.

    Row groups holding no picked row are skipped unless nulls must be counted in them.
    """
    groups = parquet.metadata.num_row_groups
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(groups)]
    starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
    nulls = dict.fromkeys(count_nulls, 0)
    pieces = []
    for group in range(groups):
        first, last = np.searchsorted(picks, [starts[group], starts[group + 1]])
        wanted = columns if last > first else count_nulls
        if not wanted:
            continue
        offset = int(starts[group])
        for batch in parquet.iter_batches(
            batch_size=READ_BATCH_ROWS, row_groups=[group], columns=wanted, use_threads=False
        ):
            for name in count_nulls:
                nulls[name] += missing_values(batch.column(name))
            low, high = np.searchsorted(picks, [offset, offset + batch.num_rows])
            if high > low:
                taken = batch.select(columns).take(pa.array(picks[low:high] - offset))
                pieces.append(taken)
            offset += batch.num_rows
    schema = pa.schema([parquet.schema_arrow.field(c) for c in columns])
    return pa.Table.from_batches(pieces, schema=schema).combine_chunks(), nulls


# ---------------------------------------------------------------------------------------------
# The profile


def _json_number(value: Any) -> Any:
    """JSON scalars: numpy numbers as Python ones, NaN and infinities as null (PostgreSQL's JSON
    type refuses them)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _checked_kind(name: str, column: pa.ChunkedArray) -> Literal["numeric", "categorical"]:
    """The kind Evidently infers (`monitors.columns`), fixed for every window of the monitor.

    Where Evidently would infer neither kind from the sample (booleans with nulls, unsigned
    integers, free text, an all-null string column) the column's type decides: numbers are
    numeric, strings and booleans categorical. Other types are refused.
    """
    kind = column_kind(column)
    if kind in ("numeric", "categorical"):
        return kind
    kind_of = column.type
    if pa.types.is_integer(kind_of) or pa.types.is_floating(kind_of):
        return "numeric"
    if (
        pa.types.is_boolean(kind_of)
        or pa.types.is_string(kind_of)
        or pa.types.is_large_string(kind_of)
        or pa.types.is_dictionary(kind_of)
    ):
        return "categorical"
    raise BaselineError(
        f"column {name!r} holds {kind_of} values, which drift checks do not test; "
        "leave it out of the export's features"
    )


def _numbers(column: pa.ChunkedArray) -> dict[str, Any]:
    values = pc.cast(column, pa.float64(), safe=False).to_numpy()  # nulls -> NaN
    values = values[np.isfinite(values)]
    if not values.size:
        return {"quantiles": None, "histogram": None, "mean": None, "std": None}
    quantiles = np.quantile(values, QUANTILES)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {
        "quantiles": {f"{q:g}": _json_number(v) for q, v in zip(QUANTILES, quantiles)},
        "histogram": {
            "edges": [_json_number(e) for e in edges],
            "counts": [int(c) for c in counts],
        },
        "mean": _json_number(values.mean()),
        "std": _json_number(values.std(ddof=1)) if values.size > 1 else None,
    }


def _categories(column: pa.ChunkedArray) -> dict[str, Any]:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    counted = pc.value_counts(column.drop_null())
    values = counted.field("values").to_pylist()
    counts = counted.field("counts").to_numpy()
    total = int(counts.sum())
    if not total:
        return {"categories": [], "other_share": 0.0}
    order = sorted(range(len(values)), key=lambda i: (-counts[i], str(values[i])))
    top = order[:TOP_CATEGORIES]
    shares = [
        {"value": _json_number(values[i]), "count": int(counts[i]), "share": counts[i] / total}
        for i in top
    ]
    return {
        "categories": shares,
        "other_share": max(0.0, 1.0 - sum(s["share"] for s in shares)),
    }


def _profile(
    sample: pa.Table, references: dict[str, str], null_rates: dict[str, float]
) -> dict[str, dict[str, Any]]:
    profile = {}
    for name in sample.column_names:
        column = sample.column(name)
        kind = _checked_kind(name, column)
        spec: dict[str, Any] = {
            "definition": references[name],
            "kind": kind,
            "dtype": str(column.type),
            "null_rate": null_rates[name],
            "sample_null_rate": missing_values(column) / len(column) if len(column) else 0.0,
        }
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            spec |= _numbers(column)
        if kind == "categorical":
            spec |= _categories(column)
        profile[name] = spec
    return profile


# ---------------------------------------------------------------------------------------------
# Building, storing, finding


def _stem(subject: str) -> str:
    return subject.replace(":", "__")


def _sample_bytes(sample: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(sample, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _collided(exc: sa.exc.DBAPIError, engine: sa.Engine) -> bool:
    """Another builder took the version (unique constraint), or held SQLite's write lock."""
    if isinstance(exc, sa.exc.IntegrityError):
        return True
    return engine.dialect.name == "sqlite" and "locked" in str(exc.orig)


def _store(settings: Settings, values: dict[str, Any], content: bytes) -> Baseline:
    """Insert the next version of the subject with its sample, in one transaction.

    The version is the subject's highest plus one; a concurrent builder that takes it first makes
    the insert fail on the unique (subject, version), and the next attempt takes the one after.
    The sample file is put in place inside the transaction, after the insert holds its version:
    a committed row always has its file. A file left by a failed commit has no row, and the
    builder that commits that version later replaces it.
    """
    engine = db.engine(settings)
    directory = settings.baselines_dir
    directory.mkdir(parents=True, exist_ok=True)
    subject = values["subject"]
    for attempt in range(STORE_ATTEMPTS):
        created_at = datetime.now(UTC)
        try:
            with engine.begin() as conn:
                highest = conn.execute(
                    sa.select(sa.func.max(BASELINES.c.version)).where(
                        BASELINES.c.subject == subject
                    )
                ).scalar_one_or_none()
                version = (highest or 0) + 1
                path = directory / f"{_stem(subject)}-v{version}.parquet"
                row = values | {
                    "version": version,
                    "sample_path": str(path),
                    "created_at": created_at,
                }
                inserted = conn.execute(sa.insert(BASELINES).values(**row))
                # SQLAlchemy types the key Optional; a single-row INSERT always reports it.
                baseline_id = inserted.inserted_primary_key[0]  # type: ignore[index]
                with replacing(path) as sink:
                    sink.write(content)
            return _baseline(row | {"baseline_id": baseline_id})
        except sa.exc.DBAPIError as exc:
            if attempt + 1 == STORE_ATTEMPTS or not _collided(exc, engine):
                raise
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


def _baseline(row: Any) -> Baseline:
    row = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    created_at = assume_utc(row["created_at"])
    return Baseline(
        baseline_id=row["baseline_id"],
        subject=row["subject"],
        version=row["version"],
        export_id=row["export_id"],
        export_path=Path(row["export_path"]),
        model_path=Path(row["model_path"]) if row["model_path"] else None,
        rows=row["rows"],
        sample_rows=row["sample_rows"],
        sample_path=Path(row["sample_path"]),
        profile=row["profile"],
        created_at=created_at,
    )


def build_baseline(
    settings: Settings,
    export_path: Path,
    *,
    feature_view: str | None = None,
    model_path: Path | None = None,
    sample_rows: int = 100_000,
    seed: int = 0,
) -> Baseline:
    """A new baseline version from a training export: of its feature service, or with
    `feature_view` of that view's features only; with `model_path` (the model trained on this
    export, feature-service baselines only) the sample holds the model's `score` too."""
    if sample_rows < 1:
        raise BaselineError(f"sample_rows must be at least 1, got {sample_rows}")
    source = _source(Path(export_path), feature_view)
    _check_fits(source)
    model = None
    if model_path is not None:
        if feature_view is not None:
            raise BaselineError(
                f"a feature-view baseline ({source.subject}) has no model score: view monitors "
                "read what the stream worker writes, which nothing scores; leave out the model "
                "or the feature view"
            )
        from featurestore.training.model import load_model  # torch: only when scoring

        model = load_model(model_path)
        if model.export_id != source.export_id:
            raise BaselineError(
                f"model {model_path} was trained on export {model.export_id!r}, but "
                f"{source.path} is export {source.export_id!r}; give the export the model was "
                "trained on"
            )
    parquet = pq.ParquetFile(source.path)
    rows = parquet.metadata.num_rows
    if not rows:
        raise BaselineError(f"export {source.path} has no rows")
    columns = list(source.references)
    available = set(parquet.schema_arrow.names)
    read = columns + [f for f in (model.features if model else []) if f not in columns]
    absent = [c for c in read if c not in available]
    if absent:
        raise BaselineError(f"export {source.path} lacks the columns {absent}")
    # Null rates over the whole export: from its statistics, else counted while streaming.
    counted = [
        c for c in columns if not isinstance(source.statistics.get(c, {}).get("null_count"), int)
    ]
    sample, nulls = _read_sample(parquet, read, _sampled_rows(rows, sample_rows, seed), counted)
    null_rates = {
        c: (nulls[c] if c in nulls else source.statistics[c]["null_count"]) / rows for c in columns
    }
    references = dict(source.references)
    if model is not None:
        scores = pa.array(model.score(sample), pa.float32())
        sample = sample.select(columns).append_column(SCORE_COLUMN, scores)
        references[SCORE_COLUMN] = SCORE_COLUMN
        null_rates[SCORE_COLUMN] = missing_values(scores) / len(scores)  # scored on the sample only
    profile = _profile(sample, references, null_rates)
    return _store(
        settings,
        {
            "subject": source.subject,
            "export_id": source.export_id,
            "export_path": str(source.path.absolute()),
            "model_path": str(Path(model_path).absolute()) if model_path is not None else None,
            "rows": rows,
            "sample_rows": sample.num_rows,
            "profile": profile,
        },
        _sample_bytes(sample),
    )


def _exports(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(directory.glob("*.parquet")):
        try:
            yield path, read_export_metadata(path)
        except InputDataError:
            continue  # not an export


def baseline_for_model(settings: Settings, model_path: Path, **options: Any) -> Baseline:
    """A new baseline version from the export `model_path` was trained on, found among the
    exports under `settings.exports_dir` by its export id. With `feature_view`, the model only
    says which export: a feature-view baseline holds no score."""
    from featurestore.training.model import load_model

    model = load_model(model_path)
    seen = 0
    for path, metadata in _exports(settings.exports_dir):
        seen += 1
        if metadata.get("export_id") == model.export_id:
            with_model = None if options.get("feature_view") else model_path
            return build_baseline(settings, path, model_path=with_model, **options)
    raise BaselineError(
        f"model {model_path} was trained on export {model.export_id!r}, which is not among the "
        f"{seen} export(s) in {settings.exports_dir}/*.parquet; give its file with --export"
    )


def get_baseline(settings: Settings, subject: str, version: int | Literal["latest"]) -> Baseline:
    """A stored baseline of `subject`: version `version`, or its newest."""
    query = sa.select(BASELINES).where(BASELINES.c.subject == subject)
    if version == "latest":
        query = query.order_by(BASELINES.c.version.desc()).limit(1)
    else:
        query = query.where(BASELINES.c.version == int(version))
    with db.engine(settings).connect() as conn:
        row = conn.execute(query).first()
        if row is not None:
            return _baseline(row)
        known = (
            conn.execute(
                sa.select(BASELINES.c.version)
                .where(BASELINES.c.subject == subject)
                .order_by(BASELINES.c.version)
            )
            .scalars()
            .all()
        )
    if not known:
        raise BaselineError(
            f"no baseline of {subject} yet; build one with `featurestore monitors baseline`"
        )
    raise BaselineError(f"no baseline {subject} v{version}; its versions: {list(known)}")


def list_baselines(settings: Settings, subject: str | None = None) -> list[Baseline]:
    """Stored baselines (of `subject`), by subject then version."""
    query = sa.select(BASELINES).order_by(BASELINES.c.subject, BASELINES.c.version)
    if subject is not None:
        query = query.where(BASELINES.c.subject == subject)
    with db.engine(settings).connect() as conn:
        return [_baseline(row) for row in conn.execute(query)]
