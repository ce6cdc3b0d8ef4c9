"""The monitors' SQL layer: every read and write of their tables (`monitors.store`) is a function
here, so the lifecycle (`monitors.alerts`), the checks (`monitors.runs`), the outbox and the API
hold no SQL. Functions take a `Connection` when the caller's transaction must hold them (a run
and its alerts commit together), an `Engine` when they are a transaction of their own.

- `runs`: runs, their per-feature rows and the read position stored with them;
- `alerts`: alerts and silences;
- `outbox`: the notification queue.
"""

from sqlalchemy.engine import CursorResult


def inserted_id(result: CursorResult) -> int:
    """The primary key of the row an INSERT of one row wrote."""
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row has one
    return int(key[0])
