"""The partition log on a temporary directory: append, read back, the high-water offset, pruning,
and what a write cut short leaves behind. No broker, no Redis."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.log import OFFSET, PartitionLog

TS = "event_timestamp"


def events(offsets: list[int], micros: list[int]) -> pa.Table:
    return pa.table({
        TS: pa.array(micros, pa.timestamp("us", tz="UTC")),
        "card_id": pa.array([o % 7 for o in offsets], pa.int64()),
        OFFSET: pa.array(offsets, pa.int64()),
    })


def test_an_empty_log_has_no_high_water_metadata_events_or_seed(tmp_path) -> None:
    log = PartitionLog(tmp_path, "transactions", 0)
    assert log.high_water() is None
    assert log.metadata() == {}
    assert list(log.events()) == []
    assert log.seed() is None
    assert log.prune(10**18) == 0


def test_a_checkpoint_is_read_back_with_its_offsets_and_metadata(tmp_path) -> None:
    log = PartitionLog(tmp_path, "transactions", 3)
    log.append(0, 2, events([0, 2], [5, 9]), TS, {"watermarks": {"": 9}})
    log.append(3, 4, events([3, 4], [7, 11]), TS, {"watermarks": {"": 11}, "topic_id": "t1"})
    assert log.high_water() == 4
    assert log.metadata() == {"watermarks": {"": 11}, "topic_id": "t1"}  # the newest only
    read = [t.column(OFFSET).to_pylist() for t in log.events()]
    assert read == [[0, 2], [3, 4]]
    assert (tmp_path / "transactions" / "3").is_dir()
    # Another partition of the topic is a log of its own.
    assert PartitionLog(tmp_path, "transactions", 0).high_water() is None


def test_a_checkpoint_of_no_events_still_moves_the_high_water(tmp_path) -> None:
    log = PartitionLog(tmp_path, "t", 0)
    log.append(0, 9, events([], []), TS, {})
    assert log.high_water() == 9
    assert [t.num_rows for t in log.events()] == [0]


@pytest.mark.parametrize("first", [0, 5, 6])
def test_a_checkpoint_overlapping_the_log_is_refused(tmp_path, first: int) -> None:
    log = PartitionLog(tmp_path, "t", 0)
    log.append(0, 6, events([6], [1]), TS, {})
    with pytest.raises(ValueError, match="overlaps the log, which is applied up to 6"):
        log.append(first, 9, events([9], [2]), TS, {})
    assert log.high_water() == 6


def test_a_write_cut_short_leaves_the_log_as_it_was(tmp_path) -> None:
    log = PartitionLog(tmp_path, "t", 0)
    log.append(0, 1, events([0, 1], [1, 2]), TS, {"n": 1})
    # What a crash during the next checkpoint's write leaves: a hidden temporary file, torn.
    torn = log.directory / f".{2:020d}-{3:020d}-{4:020d}.parquet.dead.tmp"
    torn.write_bytes(b"PAR1\x00\x01")
    assert log.high_water() == 1
    assert log.metadata() == {"n": 1}
    assert [t.num_rows for t in log.events()] == [2]
    log.append(2, 3, events([2, 3], [3, 4]), TS, {"n": 2})
    assert log.high_water() == 3


def test_a_seed_is_kept_apart_from_the_checkpoints(tmp_path) -> None:
    log = PartitionLog(tmp_path, "t", 0)
    seed = pa.table({TS: pa.array([100, 250], pa.timestamp("us", tz="UTC")), "card_id": [1, 2]})
    log.write_seed(seed, TS)
    assert log.seed().equals(seed)
    assert log.high_water() is None  # a seed is no checkpoint
    assert log.prune(249) == 0
    assert log.prune(250) == 1
    assert log.seed() is None


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    newest=st.lists(st.integers(0, 1_000), min_size=12, max_size=12),
    keep_after=st.integers(-1, 1_100),
)
def test_pruning_removes_the_oldest_checkpoints_all_at_or_before_the_cut(
    tmp_path_factory, sizes: list[int], newest: list[int], keep_after: int
) -> None:
    log = PartitionLog(tmp_path_factory.mktemp("log"), "t", 0)
    checkpoints, first = [], 0
    for size, micros in zip(sizes, newest):
        last = first + size - 1
        log.append(first, last, events([last], [micros]), TS, {"last": last})
        checkpoints.append((first, last, micros))
        first = last + 1

    # Oracle: the oldest checkpoints go while their newest event is at or before the cut; the
    # first one to keep stops it, and the newest checkpoint always stays.
    kept = list(checkpoints)
    while len(kept) > 1 and kept[0][2] <= keep_after:
        kept.pop(0)
    assert log.prune(keep_after) == len(checkpoints) - len(kept)
    assert [t.column(OFFSET).to_pylist() for t in log.events()] == [[c[1]] for c in kept]
    # Offsets past any number of digits still sort in order: the high water is the last one.
    assert log.high_water() == checkpoints[-1][1]
    assert log.metadata() == {"last": checkpoints[-1][1]}
