"""The window rules, pure: which window a captured message joins, when a window closes (by the
next message's capture time, by the clock, by its row count), empty windows and alignment.

Count windows close after the message that brings them to their row count; their bounds are
the earliest and the latest capture time of their messages.

Time windows are [start, end) aligned to multiples of the window length since the epoch. One
closes when a message at or after its end arrives, or by the clock once `now` is
`GRACE_SECONDS` past its end (the reader first reads every message already in the log). Once a
first time window has started, windows without rows are reported too (a traffic stop shows); a
run of them found at once is one empty window spanning the run, so a reader resuming from an
old cursor, or after a long stop, reports the gap once instead of window by window. A message
stamped before the open window's start (held back at the producer longer than the grace) joins
the open window; one stamped before the end of the last closed window joins the next.

Messages are never split, so each window's cursor (partition -> next offset to read) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

from monitors.capture import messages
from monitors.capture.messages import Parsed

# Capture time may run this far behind the log: an offer waits up to the writer's drain interval
# for the sender thread, then the producer's linger and a retry or two, and API hosts' clocks
# differ by a little. A time window with no newer message closes by the clock only this long
# after its end, so messages stamped before the end still join it.
GRACE_SECONDS = 10.0
_GRACE_MS = round(GRACE_SECONDS * 1000)


@dataclass
class Window:
    """Captured rows of one subject. Time windows: [start, end) aligned to multiples of the
    window length since the epoch (an empty window may span several lengths: a traffic stop).
    Count windows: the earliest and the latest capture time of their messages."""

    start: datetime
    end: datetime
    table: pa.Table
    newest_events: dict[str, datetime]
    cursor: dict[int, int]  # partition -> next offset after the window

    @property
    def rows(self) -> int:
        return self.table.num_rows


@dataclass
class _Batch:
    """The messages of the window being filled."""

    messages: list[Parsed] = field(default_factory=list)
    rows: int = 0

    def add(self, message: Parsed) -> None:
        self.messages.append(message)
        self.rows += message.rows


class _Windows:
    """What both kinds share: the read position and the windows closed but not yet taken."""

    def __init__(self, cursor: dict[int, int] | None) -> None:
        self.position: dict[int, int] = dict(cursor or {})
        self._closed: list[Window] = []

    def skip(self, partition: int, offset: int) -> None:
        """A record that is not a message of this subject (another's, or malformed)."""
        self.position[partition] = offset + 1

    def take_closed(self) -> list[Window]:
        """The windows closed since the last call, in order."""
        closed, self._closed = self._closed, []
        return closed

    @property
    def has_closed(self) -> bool:
        return bool(self._closed)

    def _report(self, start_ms: int, end_ms: int, batch: _Batch | None) -> None:
        if batch is None:
            table, newest = pa.table({}), {}
        else:
            table, newest = messages.table(batch.messages), messages.newest_events(batch.messages)
        self._closed.append(
            Window(messages.at_ms(start_ms), messages.at_ms(end_ms), table, newest,
                   dict(self.position))
        )


class CountWindows(_Windows):
    """Windows of at least `rows` rows, closed on whole messages."""

    def __init__(self, rows: int, cursor: dict[int, int] | None = None) -> None:
        super().__init__(cursor)
        self.rows = rows
        self._open: _Batch | None = None

    def add(self, partition: int, offset: int, message: Parsed) -> None:
        batch = self._open = self._open or _Batch()
        batch.add(message)
        self.position[partition] = offset + 1
        if batch.rows >= self.rows:
            stamps = [m.captured_ms for m in batch.messages]
            self._open = None
            self._report(min(stamps), max(stamps), batch)

    def clock_due(self, now_ms: int) -> bool:
        return False  # the clock closes no count window

    def close_by_clock(self, now_ms: int) -> None:
        return


@dataclass
class _Span:
    start_ms: int
    end_ms: int
    batch: _Batch = field(default_factory=_Batch)


class TimeWindows(_Windows):
    """Windows of `width_ms` of capture time. `resume_at_ms`: the end of the last window the
    caller recorded, so the sequence continues across a restart (without it the first window
    starts at the first message)."""

    def __init__(
        self, width_ms: int, cursor: dict[int, int] | None = None,
        resume_at_ms: int | None = None,
    ) -> None:
        super().__init__(cursor)
        self.width_ms = width_ms
        self._open: _Span | None = None
        # The end of the last window reported: the next one starts there.
        self._next_start = None if resume_at_ms is None else self.align(resume_at_ms)

    def align(self, ms: int) -> int:
        return ms - ms % self.width_ms

    def add(self, partition: int, offset: int, message: Parsed) -> None:
        if self._open is not None and message.captured_ms >= self._open.end_ms:
            self._close_open()  # its cursor stops before this message
        if self._open is None:
            start = self.align(message.captured_ms)
            if self._next_start is not None:
                if start > self._next_start:
                    self._close_empty(self._next_start, start)
                start = max(start, self._next_start)
            self._open = _Span(start, start + self.width_ms)
        self._open.batch.add(message)
        self.position[partition] = offset + 1

    def horizon(self, now_ms: int) -> int:
        """The latest window end the clock has closed at `now_ms`."""
        return self.align(now_ms - _GRACE_MS)

    def clock_due(self, now_ms: int) -> bool:
        """Whether the clock closes a window at `now_ms`, given every message already read."""
        horizon = self.horizon(now_ms)
        if self._open is not None:
            return self._open.end_ms <= horizon
        return self._next_start is not None and self._next_start < horizon

    def close_by_clock(self, now_ms: int) -> None:
        """Close what the clock closes at `now_ms`; call once every message in the log at that
        moment has been read."""
        horizon = self.horizon(now_ms)
        if self._open is not None and self._open.end_ms <= horizon:
            self._close_open()
        if self._open is None and self._next_start is not None and self._next_start < horizon:
            self._close_empty(self._next_start, horizon)

    def _close_open(self) -> None:
        if self._open is None:
            return
        span, self._open = self._open, None
        self._report(span.start_ms, span.end_ms, span.batch)
        self._next_start = span.end_ms

    def _close_empty(self, start_ms: int, end_ms: int) -> None:
        self._report(start_ms, end_ms, None)
        self._next_start = end_ms
