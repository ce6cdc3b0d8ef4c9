"""The capture window rules without a broker: the pure state against a naive oracle, for any
capture times (out of order, late, far apart, around year boundaries), other subjects' records
in between, a resume point and the clock."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from monitors.capture import GRACE_SECONDS, Window
from monitors.capture.messages import Parsed, at_ms
from monitors.capture.windows import CountWindows, TimeWindows

GRACE_MS = round(GRACE_SECONDS * 1000)
YEAR_EDGES = [
    int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000)
    for year in (1970, 2000, 2025, 2027, 9000)
] + [int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)]  # after a leap day
WIDTHS = [1, 7, 1_000, 60_000, 300_000, 3_600_000, 86_400_000]


def _message(index: int, captured_ms: int, rows: int = 1) -> Parsed:
    """A message whose rows all hold its index, so a window's table tells its messages."""
    return Parsed({"i": 0}, [(index,) * rows], rows, captured_ms, {"v": captured_ms})


# A record of the log: a message of the subject (its capture time) or another's (None).
@st.composite
def logs(draw) -> tuple[list[int | None], int]:
    base = draw(st.sampled_from(YEAR_EDGES)) + draw(st.integers(-5_000, 5_000))
    steps = st.one_of(
        st.integers(-120_000, 120_000),  # out of order, late
        st.integers(0, 2_000),  # dense
        st.integers(-10**11, 10**11),  # huge gaps, both ways
    )
    stamps: list[int | None] = []
    at = base
    for step in draw(st.lists(st.tuples(steps, st.booleans()), max_size=40)):
        at = max(0, at + step[0])
        stamps.append(None if step[1] and draw(st.integers(0, 3)) == 0 else at)
    return stamps, draw(st.sampled_from(WIDTHS))


def _feed(state: TimeWindows | CountWindows, records: list[int | None]) -> list[Window]:
    closed = []
    for offset, stamp in enumerate(records):
        if stamp is None:
            state.skip(0, offset)
        else:
            state.add(0, offset, _message(offset, stamp))
        closed += state.take_closed()
    return closed


def _align(ms: int, width: int) -> int:
    return ms - ms % width


def _time_oracle(records: list[int | None], width: int, resume: int | None):
    """(start, end, message offsets, cursor) of each window the messages close, and the open
    one: assignment first, then one empty window in each gap."""
    spans: list[list] = []  # [start, end, offsets]
    for offset, stamp in enumerate(records):
        if stamp is None:
            continue
        if spans and stamp < spans[-1][1]:
            spans[-1][2].append(offset)  # before the end: joins, even if before the start
            continue
        floor = spans[-1][1] if spans else (None if resume is None else _align(resume, width))
        start = _align(stamp, width) if floor is None else max(_align(stamp, width), floor)
        spans.append([start, start + width, [offset]])
    windows = []
    end = None if resume is None else _align(resume, width)
    for start, stop, offsets in spans:
        if end is not None and start > end:
            windows.append((end, start, [], offsets[0]))  # the gap, reported at its end
        windows.append((start, stop, offsets, None))
        end = stop
    # A window closed by a message has the cursor of that message: the next window's first.
    result = []
    for n, (start, stop, offsets, cursor) in enumerate(windows):
        if cursor is None and n + 1 < len(windows):
            following = windows[n + 1]
            cursor = following[3] if following[3] is not None else following[2][0]
        result.append((start, stop, offsets, cursor))
    return result


def _cursor(offset: int) -> dict[int, int]:
    """The cursor before `offset`: none before anything was read."""
    return {0: offset} if offset else {}


def _seen(window: Window) -> list[int]:
    if window.rows == 0:
        return []
    return sorted(set(window.table.column("i").to_pylist()))


@settings(max_examples=300, deadline=None)
@given(logs(), st.one_of(st.none(), st.integers(0, 10**13)))
@example(([5, None, 70_000, 3], 60_000), 10**12)  # messages stamped before the resume point
@example(([YEAR_EDGES[3] - 1, YEAR_EDGES[3], YEAR_EDGES[3] + 10**11], 86_400_000), None)
def test_time_windows_close_as_the_oracle_says(log, resume) -> None:
    records, width = log
    state = TimeWindows(width, None, resume)
    closed = _feed(state, records)
    expected = _time_oracle(records, width, resume)
    closed_by_messages, still_open = expected[:-1], expected[-1:]
    assert [(w.start, w.end, _seen(w), w.cursor) for w in closed] == [
        (at_ms(start), at_ms(end), offsets, _cursor(cursor))
        for start, end, offsets, cursor in closed_by_messages
    ]
    assert all(window.start < window.end for window in closed)
    # The clock closes the open window once its end is a grace past; then the quiet time since
    # is one empty window up to the horizon.
    if still_open:
        start, end, offsets, _ = still_open[0]
        assert not state.clock_due(end + GRACE_MS - 1)
        state.close_by_clock(end + GRACE_MS - 1)
        assert state.take_closed() == []
        assert state.clock_due(end + GRACE_MS)  # due exactly a grace past its end
        later = end + GRACE_MS + 5 * width
        assert state.clock_due(later)
        state.close_by_clock(later)
        last, quiet = state.take_closed()
        assert (last.start, last.end, _seen(last)) == (at_ms(start), at_ms(end), offsets)
        assert (quiet.start, quiet.end, quiet.rows) == (
            at_ms(end), at_ms(_align(later - GRACE_MS, width)), 0)
        assert last.cursor == quiet.cursor == _cursor(len(records))
        assert not state.clock_due(later)


@settings(max_examples=300, deadline=None)
@given(logs(), st.integers(1, 6), st.lists(st.integers(0, 3), min_size=40, max_size=40))
def test_count_windows_close_on_whole_messages(log, rows, sizes) -> None:
    records, _ = log
    state = CountWindows(rows)
    closed = []
    for offset, stamp in enumerate(records):
        if stamp is None:
            state.skip(0, offset)
        else:
            state.add(0, offset, _message(offset, stamp, sizes[offset]))
        assert not state.clock_due(10**15)  # the clock closes no count window
        closed += state.take_closed()
    expected, batch, held = [], [], 0
    for offset, stamp in enumerate(records):
        if stamp is None:
            continue
        batch.append((offset, stamp))
        held += sizes[offset]
        if held >= rows:
            stamps = [s for _, s in batch]
            expected.append((at_ms(min(stamps)), at_ms(max(stamps)), held, {0: offset + 1}))
            batch, held = [], 0
    assert [(w.start, w.end, w.rows, w.cursor) for w in closed] == expected


def test_a_quiet_log_reports_one_empty_window_per_poll_from_the_resume_point() -> None:
    width = 60_000
    state = TimeWindows(width, {0: 7}, resume_at_ms=10 * width + 123)
    assert not state.clock_due(10 * width + GRACE_MS)
    state.close_by_clock(13 * width + GRACE_MS)
    (quiet,) = state.take_closed()
    assert (quiet.start, quiet.end, quiet.rows, quiet.cursor) == (
        at_ms(10 * width), at_ms(13 * width), 0, {0: 7})
    state.close_by_clock(13 * width + GRACE_MS)  # nothing new
    assert state.take_closed() == []


def test_without_a_resume_point_the_clock_closes_nothing_before_a_first_message() -> None:
    state = TimeWindows(60_000)
    assert not state.clock_due(10**13)
    state.close_by_clock(10**13)
    assert state.take_closed() == []


def test_a_late_message_joins_the_open_window_and_reports_its_newest_event() -> None:
    state = TimeWindows(1_000)
    state.add(0, 0, _message(0, 5_500))
    state.add(0, 1, _message(1, 4_200))  # stamped before the open window's start
    state.add(0, 2, _message(2, 6_000))
    (window,) = state.take_closed()
    assert (window.start, window.end, _seen(window), window.cursor) == (
        at_ms(5_000), at_ms(6_000), [0, 1], {0: 2})
    assert window.newest_events == {"v": at_ms(5_500)}
