"""Evidently's own drift report of a window, as HTML for people and JSON for the record.

`write_report` runs Evidently's `Report([DataDriftPreset()])` on seeded samples of at most
`max_rows` rows per side: the verdicts of record come from the fast check (`monitors.drift`),
so the report only has to show them, and a sample keeps a 1M-row window rendering in seconds.
Each column's kind is declared to Evidently (numeric or categorical, as `monitors.columns`
infers it or as the monitor's baseline fixed it), so the report does not infer kinds of its
own from a sample. Per-column methods are our `monitors.stattests.METHODS` names, mapped to
Evidently's stattest names; thresholds and the drift share pass through.

Evidently is imported on first use (it takes seconds): the API and the worker import this module
whether or not a monitor writes reports.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa

from featurestore.errors import FeatureStoreError
from monitors.columns import column_kind, sample_rows
from monitors.stattests import ColumnKind, get_method

# Our method names -> Evidently's StatTest names (evidently/legacy/calculations/stattests).
EVIDENTLY_METHODS = {
    "ks": "ks",
    "wasserstein": "wasserstein",
    "psi": "psi",
    "jensenshannon": "jensenshannon",
    "chisquare": "chisquare",
    "z": "z",
}


class ReportError(FeatureStoreError):
    """The report cannot be drawn as asked; the message names the column or option."""


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    json: Path
    reference_rows: int  # rows of each side the report was drawn on
    current_rows: int


def _kinds(current: pa.Table, given: Mapping[str, str]) -> dict[str, ColumnKind]:
    kinds: dict[str, ColumnKind] = {}
    for name in current.column_names:
        kind = given.get(name) or column_kind(current.column(name))
        if kind not in ("numeric", "categorical"):
            raise ReportError(
                f"column {name!r}: Evidently would check it as {kind}, which the drift checks "
                "do not; leave it out of the report"
            )
        kinds[name] = cast(ColumnKind, kind)  # one of ColumnKind's two values, checked above
    return kinds


def _evidently_methods(
    methods: Mapping[str, str], kinds: Mapping[str, ColumnKind]
) -> dict[str, str]:
    mapped = {}
    for name, method in methods.items():
        if name not in kinds:
            raise ReportError(f"methods: {name!r} is not a column of the report")
        try:
            get_method(method, kinds[name])
        except ValueError as exc:
            raise ReportError(f"column {name!r}: {exc}") from None
        mapped[name] = EVIDENTLY_METHODS[method]
    return mapped


def _replace(path: Path, write) -> None:
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(staged)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def write_report(
    reference: pa.Table,
    current: pa.Table,
    *,
    methods: Mapping[str, str],
    thresholds: Mapping[str, float],
    drift_share: float,
    max_rows: int,
    out: Path,
    seed: int = 0,
    kinds: Mapping[str, str] | None = None,
) -> ReportFiles:
    """Evidently's data drift report of every column of `current` against `reference`, written
    to `out` with suffixes .html and .json (each replaced in one rename).

    methods / thresholds: column -> our method name / threshold, instead of Evidently's default.
    kinds: column -> "numeric" | "categorical", instead of inferring it from `current`.
    The JSON is Evidently's snapshot (`metrics`, `tests`: a FAIL "Value Drift" test per drifted
    column) plus `sample` (rows drawn per side) and `data_definition` (the declared kinds).
    """
    if max_rows < 1:
        raise ReportError(f"max_rows must be at least 1, got {max_rows}")
    missing = [name for name in current.column_names if name not in reference.column_names]
    if missing:
        raise ReportError(f"columns {missing} are not in the reference data")
    for side, table in (("reference", reference), ("current", current)):
        if table.num_rows == 0:
            raise ReportError(f"the {side} data has no rows")
    declared = _kinds(current, kinds or {})
    per_column_method = _evidently_methods(methods, declared)
    unknown = sorted(set(thresholds) - set(declared))
    if unknown:
        raise ReportError(f"thresholds name columns that are not in the report: {unknown}")

    rng = np.random.default_rng(seed)
    reference = sample_rows(reference.select(current.column_names), max_rows, rng)
    current = sample_rows(current, max_rows, rng)

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c for c, k in declared.items() if k == "numeric"],
        categorical_columns=[c for c, k in declared.items() if k == "categorical"],
    )
    preset = DataDriftPreset(
        columns=list(declared),
        drift_share=drift_share,
        per_column_method=per_column_method or None,
        per_column_threshold={c: float(t) for c, t in thresholds.items()} or None,
    )
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(current.to_pandas(), data_definition=definition),
        Dataset.from_pandas(reference.to_pandas(), data_definition=definition),
    )
    document = json.loads(snapshot.json())
    document["sample"] = {
        "reference_rows": reference.num_rows,
        "current_rows": current.num_rows,
        "max_rows": max_rows,
        "seed": seed,
    }
    document["data_definition"] = {
        "numerical_columns": definition.numerical_columns,
        "categorical_columns": definition.categorical_columns,
    }

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html, json_path = out.with_suffix(".html"), out.with_suffix(".json")
    _replace(html, lambda path: snapshot.save_html(str(path)))
    _replace(json_path, lambda path: path.write_text(json.dumps(document)))
    return ReportFiles(html, json_path, reference.num_rows, current.num_rows)
