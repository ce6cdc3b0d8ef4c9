"""The capture message format: encoding and parsing, pure.

One message (key = subject, value = orjson):
    {"subject": "service:NAME" | "view:NAME", "captured_at": epoch ms,
     "columns": [...], "rows": [[...], ...], "newest_events": {view: epoch ms}}
Values are JSON scalars; NaN and infinities are written as null (orjson's rule), a value orjson
cannot write natively is written as its `str`, and a string with a lone surrogate cannot be
written at all (`encode` raises). Parsing refuses anything else with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.timestamps import assume_utc

MAX_MESSAGE_BYTES = 512 * 1024  # below Kafka's default 1 MB message limit
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_SCALARS = frozenset({type(None), bool, int, float, str})


def epoch_ms(value: Any) -> int:
    """Epoch milliseconds of an int (already ms), a datetime (naive = UTC) or an ISO string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return (assume_utc(value) - _EPOCH) // _MS
    return int(value)


def at_ms(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds."""
    return _EPOCH + ms * _MS


def newest_ms(times: Sequence | pa.Array | pa.ChunkedArray) -> int | None:
    """The newest of event times (ISO strings, datetimes, epoch ms or an Arrow column; None:
    none), in epoch ms; None when there is none."""
    if isinstance(times, pa.Array | pa.ChunkedArray):
        newest = pc.max(times).as_py()
    else:
        # ISO strings of one lookup share their format, so the greatest string is the newest.
        present = [t for t in times if t is not None]
        newest = max(present) if present else None
    return None if newest is None else epoch_ms(newest)


def encode(
    subject: str, captured_ms: int, columns: Sequence[str], rows: Sequence[Sequence],
    newest: Mapping[str, int],
) -> bytes:
    """One message's value. Raises orjson.JSONEncodeError for what JSON cannot hold (a lone
    surrogate, an integer beyond 64 bits)."""
    return orjson.dumps(
        {"subject": subject, "captured_at": captured_ms, "columns": list(columns),
         "rows": rows, "newest_events": dict(newest)},
        default=str,  # NaN and infinities become null by orjson's own rule
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_chunks(
    subject: str, captured_ms: int, columns: Sequence[str], rows: Sequence[Sequence],
    newest: Mapping[str, int], max_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[list[tuple[bytes, int]], int]:
    """`rows` as messages of at most `max_bytes` each (halving the rows until they fit), each
    with its row count; and how many rows did not fit even alone (left out)."""
    value = encode(subject, captured_ms, columns, rows, newest)
    if len(value) <= max_bytes:
        return [(value, len(rows))], 0
    if len(rows) == 1:
        return [], 1
    half = len(rows) // 2
    first, too_large = encode_chunks(subject, captured_ms, columns, rows[:half], newest, max_bytes)
    second, more = encode_chunks(subject, captured_ms, columns, rows[half:], newest, max_bytes)
    return first + second, too_large + more


@dataclass
class Parsed:
    """A well-formed message of the subject read."""

    columns: dict[str, int]  # name -> position in `values`
    values: list[tuple]  # per column
    rows: int
    captured_ms: int
    newest: dict[str, int]  # view -> epoch ms


def parse(value: bytes | None, subject: str) -> Parsed | str:
    """The message, or why it is malformed."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(body, dict):
        return "not a JSON object"
    invalid = _invalid_fields(body, subject)
    if invalid is not None:
        return invalid
    columns, rows = body["columns"], body["rows"]
    captured, newest = body["captured_at"], body.get("newest_events", {})
    values: list[tuple] = list(zip(*rows)) if rows else [() for _ in columns]
    if any(not set(map(type, column)) <= _SCALARS for column in values):
        return "a value is not a JSON scalar"
    return Parsed(
        {name: i for i, name in enumerate(columns)}, values, len(rows), captured,
        {view: ms for view, ms in newest.items() if ms is not None},
    )


def _invalid_fields(body: dict, subject: str) -> str | None:
    """Why the fields of a message's JSON object are not a capture message; None if they are."""
    columns, rows = body.get("columns"), body.get("rows")
    newest = body.get("newest_events", {})
    if body.get("subject") != subject:
        return f"subject {body.get('subject')!r} under the key {subject!r}"
    if type(body.get("captured_at")) is not int:
        return "captured_at is not epoch milliseconds"
    if not isinstance(columns, list) or not all(type(c) is str for c in columns) or len(
        set(columns)
    ) != len(columns):
        return "columns is not a list of distinct names"
    if not isinstance(rows, list) or not all(
        type(r) is list and len(r) == len(columns) for r in rows
    ):
        return "rows is not a list of rows as long as columns"
    if not isinstance(newest, dict) or not all(
        type(v) is int or v is None for v in newest.values()
    ):
        return "newest_events is not a map of view to epoch milliseconds"
    return None


def column_array(values: list) -> pa.Array:
    """Arrow's own inference (ints -> int64, numbers -> float64, strings -> string); a column
    mixing kinds becomes float64 if all numbers, else string."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if all(v is None or type(v) in (int, float) for v in values):
            return pa.array([None if v is None else float(v) for v in values], pa.float64())
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def table(messages: Sequence[Parsed]) -> pa.Table:
    """The rows of `messages` in order; a column a message lacks is null in its rows."""
    names = dict.fromkeys(name for m in messages for name in m.columns)
    arrays = {}
    for name in names:
        values: list = []
        for m in messages:
            at = m.columns.get(name)
            values.extend(m.values[at] if at is not None else repeat(None, m.rows))
        arrays[name] = column_array(values)
    return pa.table(arrays)


def newest_events(messages: Sequence[Parsed]) -> dict[str, datetime]:
    """Per view, the newest event time any of `messages` reports."""
    newest: dict[str, int] = {}
    for m in messages:
        for view, ms in m.newest.items():
            newest[view] = max(newest.get(view, ms), ms)
    return {view: at_ms(ms) for view, ms in newest.items()}
