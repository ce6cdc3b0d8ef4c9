"""Validation of raw events against the declared schema; what fails goes to the dead-letter topic.

The schema is the stream source's declared message schema (Spark DDL, read from the registry).
Each rejection carries one reason from `REASONS`, used as the dead-letter header and as the
counter label, and a detail naming the field and the problem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

OVERSIZED = "oversized"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
UNEXPECTED_FIELD = "unexpected_field"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
LATE = "late"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REASONS = (
    OVERSIZED,
    MALFORMED_JSON,
    MISSING_FIELD,
    UNEXPECTED_FIELD,
    WRONG_TYPE,
    NOT_FINITE,
    OUT_OF_RANGE,
    BAD_TIMESTAMP,
    LATE,
)


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


class EventValidator:
    """Turns message bytes into a typed event (timestamps as UTC epoch microseconds) or a rejection.

    `bounds` gives inclusive (low, high) limits for numeric fields, e.g. {"amount": (0, 1e6)}.
    """

    def __init__(
        self,
        schema: pa.Schema,
        max_bytes: int,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.schema = schema
        self.max_bytes = max_bytes
        self.bounds = dict(bounds or {})
        unknown = sorted(set(self.bounds) - set(schema.names))
        if unknown:
            raise ValueError(f"bounds name fields {unknown} that the event schema does not have")

    def parse(self, message: bytes) -> dict[str, object] | Rejected:
        if len(message) > self.max_bytes:
            return Rejected(OVERSIZED, f"{len(message)} bytes, the limit is {self.max_bytes}")
        try:
            event = json.loads(message)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return Rejected(MALFORMED_JSON, f"not JSON: {exc}")
        if not isinstance(event, dict):
            return Rejected(MALFORMED_JSON, f"a JSON object is required, got {type(event).__name__}")
        missing = [n for n in self.schema.names if n not in event]
        if missing:
            return Rejected(MISSING_FIELD, f"missing {missing}")
        extra = sorted(set(event) - set(self.schema.names))
        if extra:
            return Rejected(UNEXPECTED_FIELD, f"unexpected {extra}")
        typed: dict[str, object] = {}
        for field in self.schema:
            value = _typed(field, event[field.name])
            if isinstance(value, Rejected):
                return value
            if field.name in self.bounds and value is not None:
                low, high = self.bounds[field.name]
                if not low <= value <= high:  # type: ignore[operator]
                    return Rejected(OUT_OF_RANGE, f"{field.name}={value} is outside [{low}, {high}]")
            typed[field.name] = value
        return typed


def _typed(field: pa.Field, value: object) -> object:
    name, kind = field.name, field.type
    if value is None:
        return Rejected(WRONG_TYPE, f"{name} is null")
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            return Rejected(WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
        return value
    if pa.types.is_integer(kind):
        if isinstance(value, bool) or not isinstance(value, int):
            return Rejected(WRONG_TYPE, f"{name} must be an integer, got {type(value).__name__}")
        if not -(2**63) <= value < 2**63:
            return Rejected(OUT_OF_RANGE, f"{name}={value} does not fit in 64 bits")
        return value
    if pa.types.is_floating(kind):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Rejected(WRONG_TYPE, f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            return Rejected(NOT_FINITE, f"{name} is {value}")
        return float(value)
    if pa.types.is_boolean(kind):
        if not isinstance(value, bool):
            return Rejected(WRONG_TYPE, f"{name} must be true or false, got {type(value).__name__}")
        return value
    if pa.types.is_timestamp(kind):
        if not isinstance(value, str):
            return Rejected(BAD_TIMESTAMP, f"{name} must be an ISO-8601 string, got {value!r}")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return Rejected(BAD_TIMESTAMP, f"{name}={value!r} is not ISO-8601")
        if moment.tzinfo is None:
            return Rejected(BAD_TIMESTAMP, f"{name}={value!r} has no UTC offset")
        return (moment - _EPOCH) // timedelta(microseconds=1)
    return Rejected(WRONG_TYPE, f"{name} has a type the validator does not know: {kind}")
