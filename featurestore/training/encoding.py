"""Feature values to the float32 matrix the model reads: one code path, offline and online.

The encoding is decided once, from a training export's schema and statistics, then frozen into
the model file (`to_dict` / `from_dict`), so a transaction scored online is encoded exactly as
its row was in training:

- numbers: `(x - mean) / std` in float64, then float32; a std of 0 (or none) counts as 1.
  Missing values (null or NaN) become 0, the training mean. A feature the export saw missing
  (`null_count > 0`, e.g. a card without history) also gets a 0/1 column `<name>:missing`, so the
  model can learn what "no history" means. A feature never missing in the export gets no such
  column: its weight could not be learned, and online the mean alone is the neutral value.
- booleans: 1/0, with the same rule for missing values and their column.
- strings: one-hot over the export's `max_categories` most frequent values, plus a last slot
  `<name>=<other>` for rarer values, values never seen and missing ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.errors import InputDataError

MAX_CATEGORIES = 32
Columns: TypeAlias = "pa.Table | pa.RecordBatch | Mapping[str, Sequence[Any]]"


@dataclass(frozen=True)
class NumericFeature:
    name: str
    mean: float
    scale: float
    missing_column: bool

    arrow_type = pa.float64()

    @staticmethod
    def accepts(arrow_type: pa.DataType) -> bool:
        return (
            pa.types.is_integer(arrow_type)
            or pa.types.is_floating(arrow_type)
            or pa.types.is_boolean(arrow_type)
            or pa.types.is_null(arrow_type)
        )

    @property
    def column_names(self) -> list[str]:
        return [self.name] + ([f"{self.name}:missing"] if self.missing_column else [])

    def write(self, values: pa.ChunkedArray | pa.Array, out: np.ndarray) -> None:
        x = np.asarray(pc.fill_null(values, math.nan), dtype=np.float64)
        missing = np.isnan(x)
        standardized = (x - self.mean) / self.scale
        standardized[missing] = 0.0
        out[:, 0] = standardized
        if self.missing_column:
            out[:, 1] = missing


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    categories: tuple[str, ...]

    arrow_type = pa.string()

    @staticmethod
    def accepts(arrow_type: pa.DataType) -> bool:
        if pa.types.is_dictionary(arrow_type):
            arrow_type = arrow_type.value_type
        return (
            pa.types.is_string(arrow_type)
            or pa.types.is_large_string(arrow_type)
            or pa.types.is_null(arrow_type)
        )

    @property
    def column_names(self) -> list[str]:
        return [f"{self.name}={value}" for value in self.categories] + [f"{self.name}=<other>"]

    def write(self, values: pa.ChunkedArray | pa.Array, out: np.ndarray) -> None:
        index = pc.index_in(values, value_set=pa.array(self.categories, pa.string()))
        slots = np.asarray(pc.fill_null(index, len(self.categories)), dtype=np.int64)
        out[np.arange(len(slots)), slots] = 1.0


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class FeatureEncoding:
    features: tuple[Feature, ...]

    @classmethod
    def from_export(
        cls, schema: pa.Schema, metadata: Mapping[str, Any], *, max_categories: int = MAX_CATEGORIES
    ) -> FeatureEncoding:
        """The encoding of the export's `features`, from their Arrow types and export statistics."""
        statistics = metadata.get("statistics", {})
        features: list[Feature] = []
        for name in metadata["features"]:
            if name not in schema.names:
                raise InputDataError(
                    f"export metadata lists feature {name!r}, absent from its columns"
                )
            if name not in statistics:
                raise InputDataError(f"export statistics have no entry for feature {name!r}")
            features.append(
                _feature(name, schema.field(name).type, statistics[name], max_categories)
            )
        return cls(tuple(features))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoding:
        features: list[Feature] = []
        for entry in data["features"]:
            if entry["kind"] == "numeric":
                features.append(
                    NumericFeature(
                        entry["name"], entry["mean"], entry["scale"], entry["missing_column"]
                    )
                )
            elif entry["kind"] == "categorical":
                features.append(CategoricalFeature(entry["name"], tuple(entry["categories"])))
            else:
                raise InputDataError(f"unknown feature encoding kind {entry['kind']!r}")
        return cls(tuple(features))

    def to_dict(self) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for f in self.features:
            if isinstance(f, NumericFeature):
                entries.append(
                    {
                        "kind": "numeric",
                        "name": f.name,
                        "mean": f.mean,
                        "scale": f.scale,
                        "missing_column": f.missing_column,
                    }
                )
            else:
                entries.append(
                    {"kind": "categorical", "name": f.name, "categories": list(f.categories)}
                )
        return {"features": entries}

    @property
    def names(self) -> list[str]:
        """The input feature names, in order."""
        return [f.name for f in self.features]

    @property
    def column_names(self) -> list[str]:
        """The names of the encoded matrix's columns, in order."""
        return [column for f in self.features for column in f.column_names]

    @property
    def width(self) -> int:
        return len(self.column_names)

    def encode(self, data: Columns) -> np.ndarray:
        """A float32 matrix, one row per input row; other columns in `data` are ignored.

        `data` is a pyarrow Table or RecordBatch (offline) or a mapping of feature name to a
        sequence of values (online: `{name: [value]}` for one transaction).
        """
        columns = [_column(data, f) for f in self.features]
        rows = {len(c) for c in columns}
        if len(rows) > 1:
            lengths = {f.name: len(c) for f, c in zip(self.features, columns, strict=True)}
            raise InputDataError(f"feature columns differ in length: {lengths}")
        out = np.zeros((rows.pop() if rows else 0, self.width), dtype=np.float32)
        start = 0
        for feature, values in zip(self.features, columns, strict=True):
            width = len(feature.column_names)
            feature.write(values, out[:, start : start + width])
            start += width
        return out


def _column(data: Columns, feature: Feature) -> pa.ChunkedArray | pa.Array:
    if isinstance(data, pa.Table | pa.RecordBatch):
        if feature.name not in data.schema.names:
            raise InputDataError(f"feature column {feature.name!r} is missing from the input")
        values = data.column(feature.name)
        if not feature.accepts(values.type):
            raise InputDataError(
                f"feature {feature.name!r} has type {values.type}, expected {feature.arrow_type}"
            )
        return values.cast(feature.arrow_type)
    if feature.name not in data:
        raise InputDataError(f"feature {feature.name!r} is missing from the input")
    try:
        return pa.array(data[feature.name], type=feature.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputDataError(
            f"feature {feature.name!r} must be a sequence of {feature.arrow_type} values "
            f"(one per row), got {data[feature.name]!r}: {exc}"
        ) from exc


def _feature(
    name: str, arrow_type: pa.DataType, stats: Mapping[str, Any], max_categories: int
) -> Feature:
    missing_column = bool(stats.get("null_count", 0))
    if pa.types.is_boolean(arrow_type):
        return NumericFeature(name, 0.0, 1.0, missing_column)
    if NumericFeature.accepts(arrow_type):
        if "mean" not in stats:
            raise InputDataError(
                f"export statistics of numeric feature {name!r} lack its mean: {dict(stats)}"
            )
        mean, std = stats["mean"], stats.get("std")  # mean None: the export saw no value
        spread = float(std) if std is not None and math.isfinite(std) and std > 0 else 1.0
        return NumericFeature(name, float(mean or 0.0), spread, missing_column)
    if CategoricalFeature.accepts(arrow_type):
        if "categories" not in stats:
            raise InputDataError(
                f"export statistics of string feature {name!r} lack its categories: {dict(stats)}"
            )
        ranked = sorted(stats["categories"].items(), key=lambda item: (-item[1], item[0]))
        return CategoricalFeature(name, tuple(value for value, _ in ranked[:max_categories]))
    raise InputDataError(
        f"feature {name!r} has type {arrow_type}; the model encodes numbers, booleans and strings"
    )
