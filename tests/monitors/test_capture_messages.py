"""The capture message format without a broker: what `encode` writes, `parse` reads back."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitors.capture import messages

SUBJECT = "service:fraud_detection_v1"
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what orjson writes as a JSON integer
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),  # any code point but lone surrogates (tested apart)
)


@st.composite
def bodies(draw):
    columns = draw(st.lists(st.text(max_size=12), unique=True, max_size=6))
    rows = draw(st.lists(st.lists(scalars, min_size=len(columns), max_size=len(columns)),
                         max_size=20))
    newest = draw(st.dictionaries(st.text(max_size=12), st.integers(-(2**62), 2**62),
                                  max_size=3))
    captured = draw(st.integers(-(2**62), 2**62))
    return columns, rows, newest, captured


def _as_written(value):
    """JSON has no NaN or infinities: orjson writes them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_a_message_reads_back_as_written(body) -> None:
    columns, rows, newest, captured = body
    parsed = messages.parse(messages.encode(SUBJECT, captured, columns, rows, newest), SUBJECT)
    assert isinstance(parsed, messages.Parsed), parsed
    assert parsed.captured_ms == captured and parsed.rows == len(rows)
    assert parsed.newest == newest
    assert list(parsed.columns) == columns
    for name, at in parsed.columns.items():
        written = [_as_written(row[columns.index(name)]) for row in rows]
        assert list(parsed.values[at]) == written
    assert messages.parse(messages.encode(SUBJECT, captured, columns, rows, newest),
                          "view:other").startswith("subject ")


def test_empty_messages_read_back() -> None:
    for columns in ([], ["a", "b"]):
        parsed = messages.parse(messages.encode(SUBJECT, 0, columns, [], {}), SUBJECT)
        assert isinstance(parsed, messages.Parsed)
        assert parsed.rows == 0 and parsed.values == [() for _ in columns]
        assert messages.table([parsed]).num_rows == 0


def test_a_lone_surrogate_cannot_be_written_nor_read() -> None:
    with pytest.raises(orjson.JSONEncodeError):  # the writer drops the group as an error
        messages.encode(SUBJECT, 0, ["s"], [["\ud800"]], {})
    value = b'{"subject": "%s", "captured_at": 0, "columns": ["s"], "rows": [["\\ud800"]]}' % (
        SUBJECT.encode())
    assert messages.parse(value, SUBJECT) == "not JSON"


@pytest.mark.parametrize("value, reason", [
    (None, "not JSON"),
    (b"[1]", "not a JSON object"),
    (orjson.dumps({"subject": SUBJECT, "captured_at": 1.5, "columns": [], "rows": []}),
     "captured_at is not epoch milliseconds"),
    (orjson.dumps({"subject": SUBJECT, "captured_at": 1, "columns": ["a"], "rows": [[[1]]]}),
     "a value is not a JSON scalar"),
])
def test_malformed_messages_say_why(value, reason) -> None:
    assert messages.parse(value, SUBJECT) == reason


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=40), st.integers(120, 600))
def test_large_row_sets_are_cut_into_messages_that_fit(texts, max_bytes) -> None:
    rows = [[text] for text in texts]
    chunks, too_large = messages.encode_chunks(SUBJECT, 7, ["t"], rows, {"v": 1}, max_bytes)
    assert all(len(value) <= max_bytes for value, _ in chunks)
    kept = []
    for value, count in chunks:
        parsed = messages.parse(value, SUBJECT)
        assert isinstance(parsed, messages.Parsed) and parsed.rows == count
        assert parsed.newest == {"v": 1}
        kept += [[v] for v in parsed.values[0]] if count else []
    alone = [len(messages.encode(SUBJECT, 7, ["t"], [row], {"v": 1})) for row in rows]
    assert too_large == sum(size > max_bytes for size in alone)
    assert kept == [row for row, size in zip(rows, alone) if size <= max_bytes]


def test_a_row_larger_than_a_message_is_left_out() -> None:
    huge = "x" * (messages.MAX_MESSAGE_BYTES + 1)
    chunks, too_large = messages.encode_chunks(SUBJECT, 0, ["t"], [["a"], [huge], ["b"]], {})
    assert too_large == 1
    assert [messages.parse(v, SUBJECT).values[0] for v, _ in chunks] == [("a",), ("b",)]


def test_a_window_table_infers_each_column_and_fills_missing_ones() -> None:
    first = messages.parse(messages.encode(SUBJECT, 0, ["n", "x"], [[1, 1], [2, 2.5]], {}),
                           SUBJECT)
    second = messages.parse(messages.encode(SUBJECT, 1, ["n", "s"], [[3, "a"]], {"v": 9}),
                            SUBJECT)
    assert isinstance(first, messages.Parsed) and isinstance(second, messages.Parsed)
    table = messages.table([first, second])
    assert table.column_names == ["n", "x", "s"]
    assert table.schema.field("n").type == pa.int64()
    assert table.column("x").to_pylist() == [1.0, 2.5, None]
    assert table.column("s").to_pylist() == [None, None, "a"]
    assert messages.column_array([1, "a", None]).to_pylist() == ["1", "a", None]
    assert messages.newest_events([first, second]) == {"v": messages.at_ms(9)}
