"""Replaying a file into a stream topic: the messages it makes, and the rows it refuses."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.definitions import Table
from featurestore.errors import InputDataError, UnknownNameError
from featurestore.offline import schema_from_ddl
from streaming.replay import choose_topology, replay
from streaming.topology import Stage, Topology
from streaming.validation import EventValidator

SCHEMA = schema_from_ddl(
    "trip_id STRING NOT NULL, rider_id STRING NOT NULL, driver_id BIGINT NOT NULL, "
    "fare DOUBLE NOT NULL, event_timestamp TIMESTAMP NOT NULL"
)
MOMENT = datetime(2026, 11, 5, 8, 30, 1, 250_000, tzinfo=UTC)


def _topology(topic: str = "trips") -> Topology:
    return Topology(
        source_topic=topic,
        schema=SCHEMA,
        raw=Table("trips_raw", Path("/nowhere"), "event_timestamp", None),
        timestamp_field="event_timestamp",
        lateness=timedelta(minutes=5),
        ranges={"fare": (0.0, 1_000.0)},
        stages={topic: Stage(topic, "rider_id", (), is_source=True)},
    )


def _trips(fares: list[float]) -> pa.Table:
    return pa.table({
        "event_timestamp": pa.array([MOMENT] * len(fares), pa.timestamp("us", tz="UTC")),
        "trip_id": [f"t{i}" for i in range(len(fares))],
        "rider_id": [f"r-{i % 2}" for i in range(len(fares))],
        # int32 and column order other than declared: cast and reordered to the schema.
        "driver_id": pa.array([7] * len(fares), pa.int32()),
        "fare": fares,
    })


def test_parquet_rows_become_the_messages_the_worker_accepts(tmp_path: Path) -> None:
    path = tmp_path / "trips.parquet"
    pq.write_table(_trips([12.5, 30.0, 7.25]), path)
    replayed = replay(path, _topology(), "rider_id", 4_096)
    assert replayed.topic == "trips"
    assert [key for key, _ in replayed.messages] == [b"r-0", b"r-1", b"r-0"]
    validator = EventValidator(SCHEMA, 4_096)
    events = [validator.parse(value) for _, value in replayed.messages]
    assert [e["fare"] for e in events] == [12.5, 30.0, 7.25]  # type: ignore[index]
    assert json.loads(replayed.messages[0][1])["event_timestamp"] == (
        "2026-11-05T08:30:01.250000+00:00"
    )


def test_json_lines_are_sent_as_written_keyed_by_their_field(tmp_path: Path) -> None:
    path = tmp_path / "trips.jsonl"
    lines = [
        {"trip_id": "a", "rider_id": "r-9", "driver_id": 3, "fare": 10,
         "event_timestamp": "2026-11-05T08:30:00+00:00"},
        {"trip_id": "b", "rider_id": "r-8", "driver_id": 4, "fare": 11.5,
         "event_timestamp": "2026-11-05T08:31:00Z"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    replayed = replay(path, _topology(), "rider_id", 4_096)
    assert replayed.messages == [
        (str(line["rider_id"]).encode(), json.dumps(line).encode()) for line in lines
    ]


def test_a_row_outside_the_schema_is_named_and_nothing_is_made(tmp_path: Path) -> None:
    path = tmp_path / "trips.parquet"
    pq.write_table(_trips([12.5, 30.0, 5_000.0]), path)
    with pytest.raises(InputDataError, match=r"row 3: fare=5000.0 is outside .*nothing was sent"):
        replay(path, _topology(), "rider_id", 4_096)

    lines = tmp_path / "trips.jsonl"
    lines.write_text('{"trip_id": "a", "rider_id": "r", "driver_id": "x", "fare": 1, '
                     '"event_timestamp": "2026-11-05T08:30:00+00:00"}\n')
    with pytest.raises(InputDataError, match="line 1: driver_id must be an integer"):
        replay(lines, _topology(), "rider_id", 4_096)


def test_missing_extra_or_mistyped_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "trips.parquet"
    pq.write_table(_trips([1.0]).drop_columns(["fare"]).append_column("tip", pa.array([0.5])), path)
    with pytest.raises(InputDataError, match="lacks column.s. fare; has column.s. tip"):
        replay(path, _topology(), "rider_id", 4_096)
    pq.write_table(_trips([1.0]).set_column(4, "fare", pa.array(["cheap"])), path)
    with pytest.raises(InputDataError, match="column 'fare' is string .* double"):
        replay(path, _topology(), "rider_id", 4_096)


def test_the_topic_is_chosen_by_name_or_is_the_only_one() -> None:
    trips, orders = _topology("trips"), _topology("orders")
    assert choose_topology([trips], None) is trips
    assert choose_topology([trips, orders], "orders") is orders
    with pytest.raises(UnknownNameError, match="2 stream source topics .*--topic"):
        choose_topology([trips, orders], None)
    with pytest.raises(UnknownNameError, match="no stream source reads topic 'rides'"):
        choose_topology([trips, orders], "rides")


# -- replay against a naive oracle ---------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)  # Parquet holds UTF-8 only
_NOT_NULL = {"trip_id": _TEXT, "rider_id": _TEXT}
_GOOD_FARE = st.sampled_from([0.0, -0.0, 1_000.0]) | st.floats(0.0, 1_000.0)  # the bounds count
_BAD_FARE = st.sampled_from([math.nan, math.inf, -math.inf, -1e-300, -1.0, 1_000.0000001, 1e308])
# The topology's plausible years are 2000..2100; years 1 and 9999 are outside them.
_GOOD_TIME = st.datetimes(datetime(2000, 1, 1), datetime(2100, 12, 31, 23, 59, 59, 999_999),
                          timezones=st.just(UTC))
_BAD_TIME = st.one_of(
    st.datetimes(datetime(1, 1, 1), datetime(1999, 12, 31, 23, 59, 59, 999_999),
                 timezones=st.just(UTC)),
    st.datetimes(datetime(2101, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999_999),
                 timezones=st.just(UTC)),
)


@st.composite
def _rows(draw: st.DrawFn, driver_bits: int) -> list[dict]:
    """Rows of the trips schema, some spoilt: a null anywhere, a non-finite or out-of-range fare,
    an implausible year."""
    ints = st.integers(-(2 ** (driver_bits - 1)), 2 ** (driver_bits - 1) - 1)
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        spoilt = draw(st.booleans()) and draw(st.booleans())
        row = {
            "trip_id": draw(_TEXT), "rider_id": draw(_TEXT), "driver_id": draw(ints),
            "fare": draw(_GOOD_FARE), "event_timestamp": draw(_GOOD_TIME),
        }
        if spoilt:
            field = draw(st.sampled_from(sorted(row)))
            bad = {"fare": st.none() | _BAD_FARE, "event_timestamp": st.none() | _BAD_TIME}
            row[field] = draw(bad.get(field, st.none()))
        rows.append(row)
    return rows


def _oracle_fits(row: dict) -> bool:
    """A row the worker accepts, read off the declared schema by hand."""
    fare, moment = row["fare"], row["event_timestamp"]
    return (
        all(value is not None for value in row.values())
        and math.isfinite(fare) and 0.0 <= fare <= 1_000.0
        and 2000 <= moment.year <= 2100
    )


def _check_replay(path: Path, where: str, rows: list[dict]) -> list[tuple[bytes, bytes]] | None:
    """Replays `path`; the first row the oracle refuses is named and no message is made."""
    bad = [i for i, row in enumerate(rows, start=1) if not _oracle_fits(row)]
    if bad:
        with pytest.raises(InputDataError) as refused:
            replay(path, _topology(), "rider_id", 1 << 20)
        assert f"{path} {where} {bad[0]}: " in str(refused.value)
        assert "nothing was sent" in str(refused.value)
        return None
    replayed = replay(path, _topology(), "rider_id", 1 << 20)
    assert replayed.topic == "trips"
    assert [key for key, _ in replayed.messages] == [row["rider_id"].encode() for row in rows]
    return replayed.messages


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(driver_bits=st.sampled_from([32, 64]), data=st.data())
def test_parquet_replay_equals_the_rows_cast_to_the_schema(
    tmp_path: Path, driver_bits: int, data: st.DataObject
) -> None:
    rows = data.draw(_rows(driver_bits))
    types = {"trip_id": pa.string(), "rider_id": pa.string(), "driver_id": pa.int64(),
             "fare": pa.float64(), "event_timestamp": pa.timestamp("us", tz="UTC")}
    if driver_bits == 32:
        types["driver_id"] = pa.int32()  # cast to the declared BIGINT
    order = data.draw(st.permutations(SCHEMA.names))  # columns reordered to the declared order
    path = tmp_path / "trips.parquet"
    pq.write_table(pa.table({
        name: pa.array([row[name] for row in rows], types[name]) for name in order
    }), path)
    messages = _check_replay(path, "row", rows)
    if messages is None:
        return
    for row, (_, value) in zip(rows, messages, strict=True):
        event = json.loads(value)
        assert list(event) == SCHEMA.names
        moment = datetime.fromisoformat(event.pop("event_timestamp"))
        assert moment == row["event_timestamp"] and moment.utcoffset() == timedelta(0)
        assert event == {name: row[name] for name in SCHEMA.names if name != "event_timestamp"}


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows(64))
def test_json_lines_replay_sends_each_valid_line_as_written(
    tmp_path: Path, rows: list[dict]
) -> None:
    lines = [
        json.dumps({**row, "event_timestamp": row["event_timestamp"]
                    and row["event_timestamp"].isoformat()}).encode()
        for row in rows
    ]
    path = tmp_path / "trips.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    messages = _check_replay(path, "line", rows)
    if messages is not None:
        assert [value for _, value in messages] == lines
