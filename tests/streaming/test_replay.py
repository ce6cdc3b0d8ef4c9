"""Replaying a file into a stream topic: the messages it makes, and the rows it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
