"""Validation of raw events against the declared schema; what fails goes to the dead-letter topic.

The schema is the stream source's declared message schema (Spark DDL, read from the registry).
Each rejection carries one reason from `REASONS`, used as the dead-letter header and as the
counter label, and a detail naming the field and the problem.

`parse` defines the rules, one message at a time. `parse_batch` gives the same answers for a
micro-batch several times faster: Arrow's JSON reader parses the batch in C++ and whole-column
checks accept the rows that plainly pass; anything the fast path cannot vouch for (a message not
written as one line from `{` to `}`, a parse error anywhere in the batch, a null, a non-finite or
out-of-range number, a timestamp not written exactly as `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`) is
decided by `parse`.

Event times must lie in a plausible range of years (`timestamp_range`, UTC, inclusive), which
is always inside years 1..9999: every accepted timestamp is a datetime in UTC, and window
arithmetic on accepted timestamps cannot overflow 64 bits.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

TOMBSTONE = "tombstone"
OVERSIZED = "oversized"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
UNEXPECTED_FIELD = "unexpected_field"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
# Decided by the partition task, not by the message alone:
KEY_MISMATCH = "key_mismatch"
FUTURE_TIMESTAMP = "future_timestamp"
LATE = "late"
INTERNAL_ERROR = "internal_error"
MALFORMED_BATCH = "malformed_batch"  # a repartition topic's message claiming a format it breaks
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REASONS = (
    TOMBSTONE,
    OVERSIZED,
    MALFORMED_JSON,
    MISSING_FIELD,
    UNEXPECTED_FIELD,
    WRONG_TYPE,
    NOT_FINITE,
    OUT_OF_RANGE,
    BAD_TIMESTAMP,
    KEY_MISMATCH,
    FUTURE_TIMESTAMP,
    LATE,
    INTERNAL_ERROR,
    MALFORMED_BATCH,
)
DEFAULT_TIMESTAMP_RANGE = (2000, 2100)


# ISO-8601 with a UTC offset, as `parse` accepts it (datetime.fromisoformat alone also takes
# oddities such as a second fraction followed by junk).
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Timestamps the fast path converts itself; every other spelling goes through `parse`.
_UTC_ISO = r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?\+00:00$"


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


@dataclass(frozen=True)
class ParsedBatch:
    """A micro-batch after validation: `events` row i is message `accepted[i]` (ascending)."""

    events: pa.Table
    accepted: np.ndarray
    rejected: list[tuple[int, Rejected]]

    def part(self, start: int, stop: int) -> ParsedBatch:
        """What parsing only messages `start:stop` gives (each message is judged alone)."""
        first, last = np.searchsorted(self.accepted, [start, stop])
        return ParsedBatch(
            self.events.slice(first, last - first),
            self.accepted[first:last] - start,
            [(i - start, rejected) for i, rejected in self.rejected if start <= i < stop],
        )


class EventValidator:
    """Turns message bytes into a typed event (timestamps as UTC epoch microseconds) or a rejection.

    `bounds` gives inclusive (low, high) limits for numeric fields, e.g. {"amount": (0, 1e6)};
    `timestamp_range` the first and last plausible year of every timestamp field (UTC).
    """

    def __init__(
        self,
        schema: pa.Schema,
        max_bytes: int,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE,
    ) -> None:
        self.schema = schema
        self.max_bytes = max_bytes
        self.bounds = dict(bounds or {})
        unknown = sorted(set(self.bounds) - set(schema.names))
        if unknown:
            raise ValueError(f"bounds name fields {unknown} that the event schema does not have")
        self.timestamp_range = timestamp_range
        self.timestamp_bounds_us = year_bounds_us(timestamp_range)

        # The schema the fast path parses with: timestamps as text, checked then converted.
        self._text_schema = pa.schema(
            [
                pa.field(f.name, pa.string() if pa.types.is_timestamp(f.type) else f.type)
                for f in schema
            ]
        )

    def parse_batch(self, messages: Sequence[bytes | None]) -> ParsedBatch:
        """`parse` of each message, as one table of accepted events and a list of rejections."""
        fast = [i for i, m in enumerate(messages) if self._one_line_object(m)]
        table, passed = self._fast(messages, fast)
        slow_index = sorted(set(range(len(messages))) - set(np.asarray(fast)[passed].tolist()))
        rows, accepted, rejected = [], [], []
        for i in slow_index:
            event = self.parse(messages[i])
            if isinstance(event, Rejected):
                rejected.append((i, event))
            else:
                rows.append(event)
                accepted.append(i)
        fast_accepted = np.asarray(fast, dtype=np.int64)[passed]
        events = pa.concat_tables(
            [table.filter(pa.array(passed)) if passed.any() else self.schema.empty_table(),
             pa.Table.from_pylist(rows, schema=self.schema)]
        )
        index = np.concatenate([fast_accepted, np.asarray(accepted, dtype=np.int64)])
        order = np.argsort(index, kind="stable")
        return ParsedBatch(events.take(pa.array(order)), index[order], rejected)

    def _one_line_object(self, message: bytes | None) -> bool:
        """Whether the fast path can take `message`: one line from `{` to `}`.

        The reader reads the joined lines as a sequence of JSON values, wherever they start and
        end: a line starting with `{` yields at least one row (or a parse error), so when the
        row count equals the line count, each line held exactly one object. An empty line
        yields none and would shift the rows of the lines after it.
        """
        return (
            message is not None
            and 2 <= len(message) <= self.max_bytes
            and message[:1] == b"{"
            and message[-1:] == b"}"
            and b"\n" not in message
            and b"\r" not in message
        )

    def _fast(
        self, messages: Sequence[bytes | None], fast: list[int]
    ) -> tuple[pa.Table, np.ndarray]:
        """The fast path over messages `fast`: the table and which of its rows passed."""
        nothing = (self.schema.empty_table(), np.zeros(len(fast), dtype=bool))
        if not fast:
            return nothing
        text = b"\n".join(messages[i] for i in fast)  # type: ignore[misc]
        try:
            table = pajson.read_json(
                io.BytesIO(text),
                read_options=pajson.ReadOptions(use_threads=False, block_size=len(text) + 1),
                parse_options=pajson.ParseOptions(
                    explicit_schema=self._text_schema, unexpected_field_behavior="error"
                ),
            )
            table.validate(full=True)  # the reader passes invalid UTF-8 through; `parse` rejects it
        except pa.ArrowException:
            return nothing
        if table.num_rows != len(fast) or table.schema.names != self.schema.names:
            return nothing
        # A null is left to `parse`, which tells a missing field from an explicit null.
        passed = np.ones(len(fast), dtype=bool)
        columns = []
        for field in self.schema:
            column = table.column(field.name)
            ok = pc.is_valid(column)
            if pa.types.is_floating(field.type):
                ok = pc.and_kleene(ok, pc.is_finite(column))
            if field.name in self.bounds:
                low, high = self.bounds[field.name]
                ok = pc.and_kleene(ok, pc.greater_equal(column, low))
                ok = pc.and_kleene(ok, pc.less_equal(column, high))
            if pa.types.is_timestamp(field.type):
                ok = pc.and_kleene(ok, pc.match_substring_regex(column, _UTC_ISO))
                plain = pc.if_else(pc.fill_null(ok, False), column, None)
                try:
                    column = pc.cast(
                        pc.utf8_slice_codeunits(plain, 0, -6), pa.timestamp("us")
                    ).cast(field.type)
                except pa.ArrowException:
                    return nothing
                low, high = self.timestamp_bounds_us
                micros = column.cast(pa.int64())
                ok = pc.and_kleene(ok, pc.greater_equal(micros, low))
                ok = pc.and_kleene(ok, pc.less_equal(micros, high))
            passed &= pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self.schema), passed

    def parse(self, message: bytes | None) -> dict[str, object] | Rejected:
        if message is None:
            return Rejected(TOMBSTONE, "the message has no value (a tombstone), not an event")
        if len(message) > self.max_bytes:
            return Rejected(OVERSIZED, f"{len(message)} bytes, the limit is {self.max_bytes}")
        try:
            # Decoded strictly: json.loads of bytes would let UTF-8-encoded surrogates through.
            event = json.loads(message.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return Rejected(MALFORMED_JSON, f"not JSON: not UTF-8 ({exc})")
        except json.JSONDecodeError as exc:
            return Rejected(MALFORMED_JSON, f"not JSON: {exc}")
        except RecursionError:
            # Brackets nested past the interpreter's recursion limit (~1,000): a few KB do it.
            return Rejected(MALFORMED_JSON, "not JSON an event can be: nested too deeply")
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
            if pa.types.is_timestamp(field.type) and value is not None:
                low, high = self.timestamp_bounds_us
                if not low <= value <= high:  # type: ignore[operator]
                    first, last = self.timestamp_range
                    return Rejected(
                        BAD_TIMESTAMP,
                        f"{field.name}={event[field.name]!r} is outside the plausible years "
                        f"{first}..{last} (UTC)",
                    )
            typed[field.name] = value
        return typed


def year_bounds_us(years: tuple[int, int]) -> tuple[int, int]:
    """The first and last microsecond (UTC, since the epoch) of the inclusive range of years."""
    first, last = years
    if not 1 <= first <= last <= 9999:
        raise ValueError(f"a timestamp range needs years 1 <= first <= last <= 9999, got {years}")
    start = datetime(first, 1, 1, tzinfo=UTC)
    end = datetime(last, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    return (start - _EPOCH) // timedelta(microseconds=1), (end - _EPOCH) // timedelta(
        microseconds=1
    )


def _typed(field: pa.Field, value: object) -> object:
    name, kind = field.name, field.type
    if value is None:
        return None if field.nullable else Rejected(WRONG_TYPE, f"{name} is null")
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            return Rejected(WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
        if _SURROGATE.search(value):
            # JSON may escape one (\ud800); it is no Unicode text, and Arrow cannot store it.
            return Rejected(MALFORMED_JSON, f"{name} holds a lone surrogate: {value!r}"[:300])
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
        if not _ISO.fullmatch(value):
            return Rejected(BAD_TIMESTAMP, f"{name}={value!r} is not ISO-8601")
        return (moment - _EPOCH) // timedelta(microseconds=1)
    return Rejected(WRONG_TYPE, f"{name} has a type the validator does not know: {kind}")
