"""The per-batch rules of a partition task, each against a plain oracle: which forwarded records
are copies, which events are late, which feature rows a checkpoint keeps. No broker, no Redis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.task import (
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    _newest_per_key_and_time,
    fresh_records,
    late_events,
    stream_file_name,
)
from streaming.windows import NO_WATERMARK


@dataclass(frozen=True)
class Record:
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()
    key: bytes | None = None
    value: bytes | None = None
    timestamp: int = 0


def forwarded(offset: int, source: str, source_offset: int) -> Record:
    return Record(offset, ((SOURCE_PARTITION, source.encode()),
                           (SOURCE_OFFSET, str(source_offset).encode())))


# --- forwarded copies -----------------------------------------------------------------------

def test_records_without_both_source_headers_are_always_fresh() -> None:
    plain = [Record(0), Record(1, ((SOURCE_PARTITION, b"3"),)), Record(2, ((SOURCE_OFFSET, b"9"),))]
    offsets: dict[str, int] = {}
    assert fresh_records(plain, offsets) == (plain, 0)
    assert offsets == {}


@settings(max_examples=200, deadline=None)
@given(
    sent=st.lists(st.tuples(st.sampled_from(["0", "1", "2"]), st.integers(0, 30)), max_size=40),
    applied=st.dictionaries(st.sampled_from(["0", "1"]), st.integers(-1, 20)),
)
def test_a_forwarded_record_is_fresh_when_its_source_offset_is_new(
    sent: list[tuple[str, int]], applied: dict[str, int]
) -> None:
    records = [forwarded(i, source, offset) for i, (source, offset) in enumerate(sent)]
    # Oracle: in offset order, a record is applied when its source offset is beyond the newest
    # applied from that source partition so far.
    newest = dict(applied)
    expected = []
    for record, (source, offset) in zip(records, sent):
        if offset > newest.get(source, -1):
            newest[source] = offset
            expected.append(record)
    offsets = dict(applied)
    fresh, duplicates = fresh_records(records, offsets)
    assert fresh == expected
    assert duplicates == len(records) - len(expected)
    assert offsets == newest


# --- lateness -------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(st.sampled_from(["", "0", "1"]), st.integers(0, 1_000)), max_size=40),
    watermarks=st.dictionaries(st.sampled_from(["", "0"]), st.integers(0, 1_000)),
    lateness=st.integers(0, 300),
)
def test_an_event_is_late_when_it_trails_its_inputs_newest_earlier_event(
    events: list[tuple[str, int]], watermarks: dict[str, int], lateness: int
) -> None:
    sources = np.array([s for s, _ in events], dtype=object)
    ts = np.array([t for _, t in events], dtype=np.int64)
    late, newest = late_events(ts, sources, watermarks, lateness)
    # Oracle: one event at a time, per input; late events still count as seen (the mask is
    # decided on what arrived before, as the batch's order says).
    seen = dict(watermarks)
    for i, (source, at) in enumerate(events):
        before = seen.get(source, NO_WATERMARK)
        assert newest[i] == before
        assert late[i] == (before != NO_WATERMARK and at < before - lateness)
        seen[source] = max(before, at)


def test_lateness_does_not_depend_on_how_events_are_batched() -> None:
    ts = np.array([100, 500, 150, 90, 600, 200], dtype=np.int64)
    sources = np.array(["", "", "", "", "", ""], dtype=object)
    whole, _ = late_events(ts, sources, {}, 300)
    first, _ = late_events(ts[:3], sources[:3], {}, 300)
    second, _ = late_events(ts[3:], sources[3:], {"": int(ts[:3].max())}, 300)
    assert whole.tolist() == [False, False, True, True, False, True]
    assert np.concatenate([first, second]).tolist() == whole.tolist()


# --- rows a checkpoint keeps ----------------------------------------------------------------

class _View:
    """The two names `_newest_per_key_and_time` reads of a view definition."""

    @dataclass(frozen=True)
    class _Key:
        name: str

    @dataclass(frozen=True)
    class _Offline:
        timestamp_field: str

    join_keys = (_Key("card_id"),)
    offline = _Offline("event_timestamp")


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5)), min_size=1, max_size=40))
def test_a_checkpoint_keeps_the_last_row_of_each_entity_and_event_time(
    rows: list[tuple[int, int]]
) -> None:
    table = pa.table({
        "card_id": pa.array([k for k, _ in rows], pa.int64()),
        "event_timestamp": pa.array([t for _, t in rows], pa.timestamp("us", tz="UTC")),
        "row": pa.array(range(len(rows)), pa.int64()),  # arrival order
    })
    kept = _newest_per_key_and_time(table, _View())
    last = {}
    for i, (key, at) in enumerate(rows):
        last[(key, at)] = i  # a later row corrects the ones before it
    assert sorted(kept.column("row").to_pylist()) == sorted(last.values())
    # Sorted by entity, then event time.
    pairs = list(zip(kept.column("card_id").to_pylist(),
                     kept.column("event_timestamp").cast(pa.int64()).to_pylist()))
    assert pairs == sorted(last)


def test_stream_file_names_sort_by_offset_and_carry_the_first_offset() -> None:
    names = [stream_file_name("card-events", 2, first, first + 9) for first in (0, 10, 100, 1000)]
    assert names == sorted(names)
    # The first offset is what a restart compares with the log (topic names may hold dashes).
    assert [int(n.removesuffix(".parquet").rsplit("-", 2)[1]) for n in names] == [0, 10, 100, 1000]
