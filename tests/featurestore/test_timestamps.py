"""The one parser of user-given times, against integer arithmetic on arbitrary offsets and the
edges of years 1 and 9999."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from featurestore.errors import InputDataError, RangeError
from featurestore.timestamps import parse_day, parse_time, to_utc, utc_micros

# Seconds from 0001-01-01T00:00:00 to a naive datetime, and the last second datetime holds.
_ORIGIN = datetime.min
_LAST = (datetime.max - _ORIGIN) // timedelta(seconds=1)
_EPOCH_SECONDS = (datetime(1970, 1, 1) - _ORIGIN) // timedelta(seconds=1)

# Every offset Python can print, to the second; those of the IANA zones lie in -12:00..+14:00.
offsets = st.one_of(
    st.sampled_from([0, -5 * 3600, 14 * 3600, -12 * 3600, 5 * 3600 + 45 * 60]),
    st.integers(-86_399, 86_399),
).map(lambda s: timezone(timedelta(seconds=s)))
wall_times = st.one_of(
    st.datetimes(),
    st.sampled_from([datetime.min, datetime.max, datetime(9999, 12, 31), datetime(1, 1, 1, 23)]),
)


def _utc_seconds(wall: datetime, offset: timezone) -> int:
    """The instant as seconds from year 1, by integer arithmetic (no datetime overflow)."""
    return (wall - _ORIGIN) // timedelta(seconds=1) - offset.utcoffset(None) // timedelta(seconds=1)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(wall=wall_times, offset=offsets, spelled=st.sampled_from(["T", " "]))
@example(datetime(2026, 11, 15, 20), timezone(timedelta(hours=-5)), "T")  # issue 12's time
@example(datetime(9999, 12, 31, 23, 59, 59), timezone(timedelta(hours=-14)), "T")
@example(datetime(1, 1, 1), timezone(timedelta(hours=14)), "T")
def test_a_time_with_any_offset_is_that_instant_in_utc(wall, offset, spelled) -> None:
    text = wall.replace(tzinfo=offset).isoformat(sep=spelled)
    seconds = _utc_seconds(wall.replace(microsecond=0), offset)
    if not 0 <= seconds <= _LAST:
        with pytest.raises(RangeError, match=r"--start .* outside years 1 to 9999"):
            parse_time(text, "--start")
        return
    parsed = parse_time(text, "--start")
    assert parsed.tzinfo is UTC
    assert (parsed.replace(tzinfo=None) - _ORIGIN) // timedelta(seconds=1) == seconds
    assert parsed.microsecond == wall.microsecond
    micros = (seconds - _EPOCH_SECONDS) * 1_000_000 + wall.microsecond
    assert utc_micros([text], "event_timestamp") == [micros]
    assert to_utc(wall.replace(tzinfo=offset)) == parsed


@settings(max_examples=100, deadline=None, derandomize=True)
@given(wall=wall_times, zulu=st.booleans())
def test_a_time_without_an_offset_or_with_z_is_utc(wall, zulu) -> None:
    text = wall.isoformat() + ("Z" if zulu else "")
    assert parse_time(text, "--end") == wall.replace(tzinfo=UTC)
    assert parse_time(wall.date().isoformat(), "--end") == datetime.combine(
        wall.date(), datetime.min.time(), UTC
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(day=st.dates(), offset=offsets)
@example(date(9999, 12, 31), timezone(timedelta(hours=-5)))
@example(date(1, 1, 1), timezone(timedelta(hours=14)))
def test_a_day_is_a_utc_day_and_a_time_must_be_its_midnight(day, offset) -> None:
    assert parse_day(day.isoformat(), "--start") == day
    midnight = datetime.combine(day, datetime.min.time())
    shift = offset.utcoffset(None)
    # UTC midnight of `day`, written in the offset's zone (when that wall time exists).
    if 0 <= _utc_seconds(midnight, offset) + 2 * (shift // timedelta(seconds=1)) <= _LAST:
        local = (midnight + shift).replace(tzinfo=offset)
        assert parse_day(local.isoformat(), "--start") == day
    # Midnight in the offset's zone is another UTC time of day: not a UTC day.
    if shift and 0 <= _utc_seconds(midnight, offset) <= _LAST:
        with pytest.raises(InputDataError, match="--start must be a day YYYY-MM-DD .*not midnight"):
            parse_day(midnight.replace(tzinfo=offset).isoformat(), "--start")


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-01-01T25:00", "1e9"])
def test_text_that_is_not_iso_8601_is_named(text) -> None:
    with pytest.raises(InputDataError, match=f"--end must be an ISO-8601 date or time.*{text!r}"):
        parse_time(text, "--end")
    with pytest.raises(InputDataError, match="--end must be a day YYYY-MM-DD"):
        parse_day(text, "--end")


@pytest.mark.parametrize("value", [None, 1_700_000_000, True, ["2026-01-01"]])
def test_an_api_time_that_is_not_a_string_is_named_with_its_row(value) -> None:
    with pytest.raises(InputDataError, match=r"event_timestamp\[1\] must be an ISO-8601 string"):
        utc_micros(["2026-01-01T00:00:00Z", value], "event_timestamp")


def test_dataset_entity_times_are_read_by_the_same_parser() -> None:
    """The API's entity times: offsets to UTC, and the whole range of years (pandas' nanosecond
    timestamps stop in 2262)."""
    from featurestore.api.datasets import entity_table

    texts = ["2026-11-15T20:00:00-05:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00",
             "3000-01-01T00:00:00+14:00"]
    table = entity_table({"event_timestamp": texts, "card_id": [1, 2, 3, 4]}, max_rows=10)
    assert table.column("event_timestamp").to_pylist() == [parse_time(t, "t") for t in texts]
    assert table.column("event_timestamp").type == pa.timestamp("us", tz="UTC")
    with pytest.raises(RangeError, match=r"event_timestamp\[0\] .* outside years 1 to 9999"):
        entity_table({"event_timestamp": ["0001-01-01T00:00:00+14:00"]}, max_rows=10)


@pytest.mark.parametrize("zone", [None, "UTC", "America/New_York", "Pacific/Kiritimati"])
def test_rows_go_to_the_partition_of_their_utc_day(tmp_path, zone) -> None:
    import pyarrow.parquet as pq

    from featurestore.offline import write_days

    moments = [datetime(2026, 11, 16, 1, tzinfo=UTC), datetime(2026, 11, 15, 12, tzinfo=UTC)]
    micros = utc_micros([m.isoformat() for m in moments], "t")
    rows = pa.table({"t": pa.array(micros, pa.timestamp("us", tz=zone)), "id": [1, 2]})
    written = write_days(tmp_path, rows, "t", "part.parquet")
    assert sorted(p.parent.name for p in written) == ["event_date=2026-11-15", "event_date=2026-11-16"]
    assert pq.read_table(tmp_path / "event_date=2026-11-16" / "part.parquet").column("id").to_pylist() == [1]
